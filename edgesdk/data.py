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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .spec import ImagePreprocessing, ModelSpec

__all__ = ["Samples", "read_samples", "read_text_lines"]

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


def _read_text(path: Path, labels: tuple[str, ...]) -> Samples:
    texts, ys = [], []
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
        texts.append(text)
        ys.append(_label_index(label.strip(), labels, f"{path}:{number}") if tab else -1)
    if not texts:
        raise InputError(f"{path} holds no samples: give one text (and optionally a TAB and label) per line")
    return Samples(texts, np.asarray(ys, dtype=np.int64), str(path))


def _load_image(path: Path, pre: ImagePreprocessing) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(pre.mode), dtype=np.uint8).reshape(im.height, im.width, pre.channels)
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from e


def _read_images(path: Path, spec: ModelSpec) -> Samples:
    pre: ImagePreprocessing = spec.preprocessing  # read_samples routes only image specs here
    if path.is_dir():
        items, ys = [], []
        for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            folder = file.parent.name
            items.append(_load_image(file, pre))
            ys.append(_label_index(folder, spec.labels, str(file)) if file.parent != path else -1)
        if not items:
            raise InputError(f"{path} holds no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
        return Samples(items, np.asarray(ys, dtype=np.int64), str(path))
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
            raw_labels = npz["labels"] if "labels" in npz else np.full(len(images), -1)
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(
            f"{path}: expected an .npz with 'images' (N x H x W [x C] uint8) and optional 'labels' ({e})"
        ) from e
    if images.ndim == 3 and pre.channels == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != pre.channels or images.dtype != np.uint8 or not len(images):
        raise InputError(
            f"{path}: images have shape {images.shape} and dtype {images.dtype}; this model takes "
            f"N x H x W x {pre.channels} uint8"
        )
    if raw_labels.dtype.kind not in "iu" or raw_labels.ndim != 1:
        raise InputError(f"{path}: 'labels' must be integer label indices (one per image, -1 for unknown), "
                         f"got {raw_labels.dtype} of shape {raw_labels.shape}: convert them with astype(int)")
    labels = raw_labels.astype(np.int64)
    if len(labels) != len(images) or ((labels < -1) | (labels >= len(spec.labels))).any():
        raise InputError(f"{path}: 'labels' must hold one index in [0, {len(spec.labels)}) per image")
    return Samples(list(images), labels, str(path))


def read_samples(path: str | Path, spec: ModelSpec) -> Samples:
    """Read samples for ``spec``'s kind, or raise an InputError naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    if spec.kind == "text":
        if path.is_dir() or path.suffix == ".npz":
            raise InputError(f"{path} looks like image data, but this is a text model: give a .tsv of texts")
        return _read_text(path, spec.labels)
    if path.suffix in {".tsv", ".txt", ".csv", ".gz"}:
        raise InputError(f"{path} looks like text, but this is an image model: give an .npz or an image folder")
    return _read_images(path, spec)
