"""The verification set, streamed: samples read a chunk at a time, per-sample figures in files.

Memory stays flat whatever the number of samples: the samples are read again for each use,
and PyTorch's logits, the labels and the digests of the encoded inputs are appended to files
in the work folder and read back a chunk at a time. Only the first ``HEAD`` samples (the
robustness perturbations, the golden samples, latency) are kept in memory.

``--verify-samples N`` verifies N of a file's M samples, evenly spaced: the samples at
positions ⌊i·M/N⌋ for i = 0 … N−1, in file order, the same on every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Samples, count_samples, iter_samples
from .errors import InputError
from .runtime.encode import row_digest
from .spec import ModelSpec

__all__ = ["ArrayFile", "Selection", "VerificationData", "Verification", "CHUNK", "HEAD", "logits_to_file",
           "model_logits", "rate", "input_digests"]

CHUNK = 1024  # samples per chunk
HEAD = 200  # samples kept in memory: perturbed for robustness, golden samples, latency


class ArrayFile:
    """Rows of one dtype and shape appended to a file, read back a slice at a time."""

    def __init__(self, path: Path, dtype: np.dtype | type, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self._row_items = int(np.prod(self.row_shape, dtype=np.int64))
        self._file = open(self.path, "wb")  # noqa: SIM115  (appended to until the work folder goes)

    def __len__(self) -> int:
        return self.rows

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start`` to ``stop`` (the end when None)."""
        self._file.flush()
        stop = self.rows if stop is None else min(stop, self.rows)
        count = max(stop - start, 0) * self._row_items
        data = np.fromfile(self.path, self.dtype, count=count, offset=start * self._row_items * self.dtype.itemsize)
        return data.reshape(-1, *self.row_shape)

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of every ``size`` rows."""
        for start in range(0, self.rows, size):
            yield start, self.read(start, start + size)


@dataclass(frozen=True)
class Selection:
    """``count`` of a file's ``total`` samples, evenly spaced: positions ⌊i·total/count⌋."""

    total: int
    count: int

    def mask(self, start: int, length: int) -> np.ndarray:
        """Which of the file's samples ``start`` … ``start + length − 1`` are selected."""
        j = np.arange(start, start + length, dtype=np.int64)
        i = -(-j * self.count // self.total)  # the only i whose position could be j
        return (i < self.count) & (i * self.total // self.count == j)


class VerificationData:
    """The verification file, read again chunk by chunk for each use (capped by ``limit``)."""

    def __init__(self, path: str | Path, spec: ModelSpec, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise InputError(f"verify_samples must be at least 1, not {limit}")
        self.path, self.spec, self.source = Path(path), spec, str(path)
        total = count_samples(self.path, spec)
        self.selection = Selection(total, limit) if limit is not None and limit < total else None
        self.total = total
        self.count = self.selection.count if self.selection else total

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, Samples]]:
        """(index of the first sample, samples) of every chunk, in file order."""
        start = position = 0
        for chunk in iter_samples(self.path, self.spec, size):
            if self.selection is not None:
                keep = self.selection.mask(position, len(chunk))
                position += len(chunk)
                chunk = Samples([item for item, k in zip(chunk.items, keep) if k], chunk.labels[keep], chunk.source)
            if len(chunk):
                yield start, chunk
                start += len(chunk)

    def head(self, count: int = HEAD) -> Samples:
        """The first ``count`` verified samples."""
        items, labels = [], []
        for _, samples in self.chunks():
            take = count - len(items)
            items += samples.items[:take]
            labels.append(samples.labels[:take])
            if len(items) >= count:
                break
        return Samples(items, np.concatenate(labels), self.source)

    def rule(self) -> str:
        """How the verified samples were chosen, in words."""
        if self.selection is None:
            return f"all {self.total} samples"
        return (f"{self.count} of {self.total} samples, evenly spaced (positions floor(i*{self.total}/{self.count}), "
                "in file order)")


@dataclass
class Verification:
    """The verified samples with PyTorch's logits (``reference``, from the model the bundles are
    built from), labels and input digests (under the model's encoder) in files; the first ``HEAD``
    samples and their perturbed copies (with PyTorch's logits) in memory, each bundle encoding
    them with its own encoder."""

    data: VerificationData
    reference: ArrayFile
    labels: ArrayFile
    digests: ArrayFile
    head: Samples
    perturbed: dict[str, tuple[list, np.ndarray]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.reference)

    def accuracy_reference(self) -> float | None:
        """PyTorch's accuracy on the labeled samples (None when none is labeled)."""
        right = known = 0
        for start, labels in self.labels.chunks():
            top = self.reference.read(start, start + len(labels)).argmax(1)
            right += int((top[labels >= 0] == labels[labels >= 0]).sum())
            known += int((labels >= 0).sum())
        return right / known if known else None

    def chunks(self) -> Iterator[tuple[int, Samples, np.ndarray]]:
        """(index of the first sample, samples, PyTorch's logits for them) of every chunk."""
        for start, samples in self.data.chunks():
            yield start, samples, self.reference.read(start, start + len(samples))

    def subset(self, limit: int) -> tuple[list, np.ndarray]:
        """At most ``limit`` samples, evenly spaced: (items, labels)."""
        selection = Selection(self.count, limit) if limit < self.count else None
        items, labels = [], []
        for start, samples in self.data.chunks():
            keep = selection.mask(start, len(samples)) if selection else np.ones(len(samples), bool)
            items += [item for item, k in zip(samples.items, keep) if k]
            labels.append(samples.labels[keep])
        return items, np.concatenate(labels)


def input_digests(data: VerificationData, encoder: Any, path: Path, labels: ArrayFile | None = None) -> ArrayFile:
    """The digest of every verification sample's inputs as ``encoder`` encodes them, in a file
    (and, when given, the labels appended to ``labels`` in the same pass over the data)."""
    digests = ArrayFile(path, np.uint8, (32,))
    for _, samples in data.chunks():
        digests.append(np.frombuffer(b"".join(row_digest(r) for r in encoder.encode(samples.items)),
                                     np.uint8).reshape(-1, 32))
        if labels is not None:
            labels.append(samples.labels)
    return digests


def rate(done: int, total: int, start: float) -> str:
    """Progress in words: samples done of total, and samples per second."""
    return f"{done:,}/{total:,} samples, {done / max(time.perf_counter() - start, 1e-9):,.0f}/s"


def model_logits(classifier, data: VerificationData) -> Iterator[tuple[int, Samples, np.ndarray]]:
    """(index of the first sample, samples, PyTorch logits of ``classifier``) of every chunk."""
    encoder = classifier.encoder()
    for start, samples in data.chunks():
        yield start, samples, classifier.reference_logits(encoder.encode(samples.items), encoder)


def logits_to_file(classifier, data: VerificationData, path: Path,
                   update: Callable[[str], None] | None = None) -> ArrayFile:
    """PyTorch logits of ``classifier`` (an edgesdk Classifier) for every chunk of ``data``, in a file."""
    out = ArrayFile(path, np.float32, (len(classifier.spec.labels),))
    start_time = time.perf_counter()
    for start, samples, logits in model_logits(classifier, data):
        out.append(logits)
        if update is not None:
            update(rate(start + len(samples), data.count, start_time))
    return out
