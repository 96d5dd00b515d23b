"""Read labeled verification or calibration data: text TSV files, image .npz files or folders.

Text: one sample per line, ``text`` or ``text<TAB>label`` (a label name or index); a header
line naming the columns (``text`` or ``sentence``, optional ``label`` and ``id``/``idx``, any
order) picks the columns by name; a UTF-8 byte-order mark is ignored; ``.gz`` is read
transparently.
Images: an ``.npz`` with ``images`` (N x H x W [x C], uint8) and optional ``labels``, or a
folder whose sub-folders are label names holding image files.
"""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from .errors import InputError
from .spec import ImagePreprocessing, ModelSpec

__all__ = ["Samples", "read_samples", "iter_samples", "count_samples", "read_text_lines"]

_TEXT_COLUMNS = {"text", "sentence"}
_HEADERS = _TEXT_COLUMNS | {"label", "labels", "id", "idx", "index"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Samples:
    """Raw samples (str or uint8 HWC arrays) and label indices (-1 where unknown)."""

    items: list
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.items)


def read_text_lines(path: Path):
    """Yield (line number, line) of a UTF-8 text file (plain or gzip), naming bad lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise InputError(
                        f"{path}: line {number} is not UTF-8 text ({e.reason}); re-encode the file as UTF-8"
                    ) from e
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from e


def _label_index(value: str, labels: tuple[str, ...], where: str) -> int:
    if value in labels:
        return labels.index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(labels):
        return int(value)
    raise InputError(f"{where}: label {value!r} is not one of the model's labels {list(labels)} nor an index")


def _header(line: str) -> dict[str, int] | None:
    """Column positions of a header line (``id<TAB>text<TAB>label``...), or None for a sample."""
    names = [c.strip().lower() for c in line.split("\t")]
    if len(names) < 2 or not set(names) <= _HEADERS or not set(names) & _TEXT_COLUMNS:
        return None
    return {("text" if n in _TEXT_COLUMNS else "label" if n.startswith("label") else "id"): i
            for i, n in enumerate(names)}


def _text_samples(path: Path, labels: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    """(text, label index or -1) of each sample line, in file order."""
    columns = None
    for number, line in read_text_lines(path):
        if "\x00" in line:
            raise InputError(f"{path}: line {number} holds binary data, not text")
        if number == 1 and (columns := _header(line)) is not None:
            continue
        if not line.strip():
            continue
        if columns is not None:
            cells = line.split("\t")
            if len(cells) <= max(columns.values()):
                raise InputError(f"{path}:{number}: {len(cells)} columns, the header names {len(columns)}")
            text, label = cells[columns["text"]], cells[columns["label"]] if "label" in columns else ""
            tab = "label" in columns and label.strip() != ""
        else:
            text, tab, label = line.rpartition("\t") if "\t" in line else (line, "", "")
        yield text, _label_index(label.strip(), labels, f"{path}:{number}") if tab else -1


def _text_chunks(path: Path, labels: tuple[str, ...], size: int) -> Iterator[Samples]:
    pairs = _text_samples(path, labels)
    while chunk := list(islice(pairs, size)):
        texts, ys = zip(*chunk)
        yield Samples(list(texts), np.asarray(ys, dtype=np.int64), str(path))


def _load_image(path: Path, pre: ImagePreprocessing) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(pre.mode), dtype=np.uint8).reshape(im.height, im.width, pre.channels)
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from e


def _image_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{path} holds no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return files


def _folder_chunks(path: Path, spec: ModelSpec, size: int) -> Iterator[Samples]:
    files = _image_files(path)
    for start in range(0, len(files), size):
        chunk = files[start:start + size]
        labels = [_label_index(f.parent.name, spec.labels, str(f)) if f.parent != path else -1 for f in chunk]
        yield Samples([_load_image(f, spec.preprocessing) for f in chunk], np.asarray(labels, np.int64), str(path))


class _NpyMember:
    """One array of an .npz, read row block by row block (never whole, never unpickled)."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.archive, self.name = archive, name
        with archive.open(name) as f:
            self.shape, self.dtype = self._header(f)

    def _header(self, f) -> tuple[tuple[int, ...], np.dtype]:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype.hasobject or (fortran and len(shape) > 1):
            raise ValueError(f"{self.name} holds {'objects' if dtype.hasobject else 'a Fortran-order array'}; "
                             "save plain C-order arrays (np.savez(path, images=np.ascontiguousarray(images)))")
        return shape, dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with self.archive.open(self.name) as f:
            self._header(f)
            for start in range(0, self.shape[0], rows):
                n = min(rows, self.shape[0] - start)
                data = f.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise ValueError(f"{self.name} ends after {start} rows of {self.shape[0]}")
                yield np.frombuffer(bytearray(data), self.dtype).reshape(n, *row_shape)


def _npz_members(archive: zipfile.ZipFile, path: Path, spec: ModelSpec) -> tuple[_NpyMember, _NpyMember | None]:
    names = set(archive.namelist())
    if "images.npy" not in names:
        raise KeyError("images")
    images = _NpyMember(archive, "images.npy")
    labels = _NpyMember(archive, "labels.npy") if "labels.npy" in names else None
    channels = spec.preprocessing.channels
    shape = images.shape + ((1,) if len(images.shape) == 3 and channels == 1 else ())
    if len(shape) != 4 or shape[-1] != channels or images.dtype != np.uint8 or not shape[0]:
        raise InputError(f"{path}: images have shape {images.shape} and dtype {images.dtype}; this model takes "
                         f"N x H x W x {channels} uint8")
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]):
        raise InputError(f"{path}: 'labels' must be integer label indices (one per image, -1 for unknown), "
                         f"got {labels.dtype} of shape {labels.shape}: convert them with astype(int)")
    return images, labels


def _npz_chunks(path: Path, spec: ModelSpec, size: int) -> Iterator[Samples]:
    try:
        with zipfile.ZipFile(path) as archive:
            images, labels = _npz_members(archive, path, spec)
            label_blocks = labels.blocks(size) if labels is not None else None
            for block in images.blocks(size):
                ys = next(label_blocks).astype(np.int64) if label_blocks else np.full(len(block), -1, np.int64)
                if ((ys < -1) | (ys >= len(spec.labels))).any():
                    raise InputError(f"{path}: 'labels' must hold one index in [0, {len(spec.labels)}) per image")
                yield Samples(list(block.reshape(len(block), *block.shape[1:3], -1)), ys, str(path))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(
            f"{path}: expected an .npz with 'images' (N x H x W [x C] uint8) and optional 'labels' ({e})"
        ) from e


def _checked(path: str | Path, spec: ModelSpec) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    if spec.kind == "text" and (path.is_dir() or path.suffix == ".npz"):
        raise InputError(f"{path} looks like image data, but this is a text model: give a .tsv of texts")
    if spec.kind != "text" and path.suffix in {".tsv", ".txt", ".csv", ".gz"}:
        raise InputError(f"{path} looks like text, but this is an image model: give an .npz or an image folder")
    return path


def iter_samples(path: str | Path, spec: ModelSpec, size: int = 1024) -> Iterator[Samples]:
    """The samples of ``path`` for ``spec``'s kind in chunks of ``size``, in file order, never
    all in memory; raises an InputError naming the file and the fix."""
    path = _checked(path, spec)
    if spec.kind == "text":
        chunks = _text_chunks(path, spec.labels, size)
    else:
        chunks = _folder_chunks(path, spec, size) if path.is_dir() else _npz_chunks(path, spec, size)
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        raise InputError(f"{path} holds no samples: give one text (and optionally a TAB and label) per line")


def count_samples(path: str | Path, spec: ModelSpec) -> int:
    """How many samples ``path`` holds, without decoding images."""
    path = _checked(path, spec)
    if spec.kind == "text":
        return sum(1 for _ in _text_samples(path, spec.labels))
    if path.is_dir():
        return len(_image_files(path))
    try:
        with zipfile.ZipFile(path) as archive:
            return _npz_members(archive, path, spec)[0].shape[0]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: expected an .npz with 'images' (N x H x W [x C] uint8) ({e})") from e


def read_samples(path: str | Path, spec: ModelSpec) -> Samples:
    """Read all samples for ``spec``'s kind, or raise an InputError naming the file and the fix."""
    chunks = list(iter_samples(path, spec))
    return Samples([item for c in chunks for item in c.items], np.concatenate([c.labels for c in chunks]),
                   chunks[0].source)
