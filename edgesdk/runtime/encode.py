"""Turn raw samples (text lines, uint8 images) into graph feeds, exactly as the bundle expects.

The converter uses these same encoders for the PyTorch reference, so both sides see the
same ids and pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..spec import ImagePreprocessing, ModelSpec, TextPreprocessing

__all__ = ["Row", "Encoder", "TextEncoder", "StringEncoder", "ImageEncoder", "encoder_for", "row_digest",
           "in_row_order"]

Row = dict[str, np.ndarray]
MAX_TOKENIZER_BYTES = 256 << 20


def row_digest(row: Row) -> bytes:
    """A stable 32-byte digest of one encoded sample (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name in sorted(row):
        a = np.ascontiguousarray(row[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.digest()


def in_row_order(batches: Iterable[tuple[Sequence[int], np.ndarray]]) -> np.ndarray:
    """Per-batch results ``(row indices, values)`` stacked back into row order (``Encoder.batches``
    may reorder rows, e.g. by length)."""
    order: list[int] = []
    values = []
    for idx, value in batches:
        order.extend(idx)
        values.append(value)
    return np.concatenate(values)[np.argsort(np.asarray(order), kind="stable")]


def _check_texts(samples: Sequence) -> None:
    for i, s in enumerate(samples):
        if not isinstance(s, str):
            raise InputError(f"sample {i} is {type(s).__name__}, expected text (str)")


class Encoder:
    """Encodes samples into rows and stacks rows into batches of feeds."""

    def encode(self, samples: Sequence) -> list[Row]:
        raise NotImplementedError

    def batches(self, rows: Sequence[Row], batch_size: int) -> Iterator[tuple[list[int], Row]]:
        """Yield (row indices, feeds) batches; rows of one batch must stack."""
        raise NotImplementedError


class TextEncoder(Encoder):
    """Tokenizes with the bundle's tokenizer.json; pads each batch to its longest row."""

    def __init__(self, tokenizer_file: Path, pre: TextPreprocessing, input_names: Sequence[str]):
        from tokenizers import Tokenizer

        try:
            if Path(tokenizer_file).stat().st_size > MAX_TOKENIZER_BYTES:
                raise InputError(f"{tokenizer_file} is larger than {MAX_TOKENIZER_BYTES} bytes: refused")
            self.tokenizer = Tokenizer.from_str(Path(tokenizer_file).read_text(encoding="utf-8"))
        except InputError:
            raise
        except Exception as e:  # OSError, UnicodeDecodeError, and tokenizers' plain Exception subclasses
            raise InputError(f"{tokenizer_file}: not a readable tokenizer.json ({str(e)[:200]})") from e
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(pre.max_length)
        self.pre = pre
        self.input_names = tuple(input_names)

    def encode(self, samples: Sequence[str]) -> list[Row]:
        _check_texts(samples)
        rows = []
        for enc in self.tokenizer.encode_batch(list(samples)):
            fields = {
                "input_ids": enc.ids,
                "attention_mask": enc.attention_mask,
                "token_type_ids": enc.type_ids,
            }
            rows.append({n: np.asarray(fields[n], dtype=np.int64) for n in self.input_names})
        return rows

    def batches(self, rows: Sequence[Row], batch_size: int) -> Iterator[tuple[list[int], Row]]:
        """Rows of similar length batched together (shortest first), so little is padding."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        for start in range(0, len(rows), batch_size):
            idx = order[start:start + batch_size]
            length = max(len(rows[i]["input_ids"]) for i in idx)
            feeds = {}
            for name in self.input_names:
                pad = self.pre.pad_id if name == "input_ids" else 0
                out = np.full((len(idx), length), pad, dtype=np.int64)
                for j, i in enumerate(idx):
                    out[j, : len(rows[i][name])] = rows[i][name]
                feeds[name] = out
            yield idx, feeds


class StringEncoder(Encoder):
    """Checks texts for a model that tokenizes inside its graph: each row is the text itself."""

    def __init__(self, pre: TextPreprocessing, input_name: str):
        self.pre = pre
        self.input_name = input_name

    def encode(self, samples: Sequence[str]) -> list[Row]:
        _check_texts(samples)
        return [{self.input_name: np.array(s, dtype=str)} for s in samples]

    def batches(self, rows: Sequence[Row], batch_size: int) -> Iterator[tuple[list[int], Row]]:
        for start in range(0, len(rows), batch_size):
            idx = list(range(start, min(start + batch_size, len(rows))))
            yield idx, {self.input_name: np.array([rows[i][self.input_name].item() for i in idx], dtype=object)}


class ImageEncoder(Encoder):
    """Checks uint8 HWC images; batches consecutive images of the same size."""

    def __init__(self, pre: ImagePreprocessing, input_name: str):
        self.pre = pre
        self.input_name = input_name

    def encode(self, samples: Sequence[np.ndarray]) -> list[Row]:
        rows = []
        for i, img in enumerate(samples):
            a = np.asarray(img)
            if a.ndim == 2 and self.pre.channels == 1:
                a = a[:, :, None]
            if a.ndim != 3 or a.shape[2] != self.pre.channels:
                raise InputError(
                    f"image {i} has shape {a.shape}; this model takes height x width x "
                    f"{self.pre.channels} ({self.pre.mode}) images: convert it first"
                )
            if a.dtype != np.uint8:
                raise InputError(f"image {i} has dtype {a.dtype}; pass uint8 pixels (0-255)")
            if min(a.shape[:2]) < 1:
                raise InputError(f"image {i} is empty (shape {a.shape})")
            rows.append({self.input_name: np.ascontiguousarray(a)})
        return rows

    def batches(self, rows: Sequence[Row], batch_size: int) -> Iterator[tuple[list[int], Row]]:
        idx: list[int] = []
        for i, row in enumerate(rows):
            if idx and (
                len(idx) == batch_size
                or rows[idx[0]][self.input_name].shape != row[self.input_name].shape
            ):
                yield idx, {self.input_name: np.stack([rows[j][self.input_name] for j in idx])}
                idx = []
            idx.append(i)
        if idx:
            yield idx, {self.input_name: np.stack([rows[j][self.input_name] for j in idx])}


def encoder_for(spec: ModelSpec, tokenizer_file: Path | None) -> Encoder:
    """The encoder for a spec; text needs the path of its (already checked) tokenizer.json."""
    pre = spec.preprocessing
    if isinstance(pre, TextPreprocessing) and pre.text_input == "string":
        return StringEncoder(pre, spec.inputs[0].name)
    if isinstance(pre, TextPreprocessing):
        if tokenizer_file is None:
            raise InputError("a text model needs its tokenizer.json")
        return TextEncoder(tokenizer_file, pre, [t.name for t in spec.inputs])
    return ImageEncoder(pre, spec.inputs[0].name)
