"""The model spec: what edgesdk knows about a classifier, and what a manifest serializes.

Torch-free, so the runtime loader can rebuild it from a bundle's manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import BundleError, ModelError

__all__ = ["TensorSpec", "TextPreprocessing", "ImagePreprocessing", "ModelSpec", "text_spec", "TEXT_INPUTS",
           "dtype_matches"]

TEXT_INPUTS = ("ids", "string")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output; a string in ``shape`` names a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def dtype_matches(array: Any, dtype: str) -> bool:
    """Whether a numpy array holds a spec dtype ("string": str or object arrays)."""
    if dtype == "string":
        return array.dtype.kind in "UO"
    return array.dtype == np.dtype(dtype)


@dataclass(frozen=True)
class TextPreprocessing:
    """Text goes through the bundle's ``tokenizer.json``: in Python before the graph, which takes
    token ids and masks (``text_input="ids"``), or inside the graph, which takes strings
    (``"string"``: onnxruntime-extensions' tokenizer operators)."""

    max_length: int = 128
    tokenizer: str = "tokenizer.json"
    pad_id: int = 0
    text_input: Literal["ids", "string"] = "ids"
    kind: Literal["text"] = "text"

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ModelError(f"max_length must be at least 2, got {self.max_length}")
        if self.text_input not in TEXT_INPUTS:
            raise ModelError(f"text_input must be one of {', '.join(TEXT_INPUTS)}, got {self.text_input!r}")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Images enter the graph as uint8 NHWC pixels of any height and width.

    The graph scales to [0, 1], resizes (bilinear) to ``size``, normalizes with ``mean``
    and ``std`` per channel, and returns logits, probabilities and the top-k indices.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    top_k: int = 5
    kind: Literal["image"] = "image"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ModelError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ModelError(
                f"mean and std need one value per channel ({self.channels}), "
                f"got mean={self.mean} std={self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"std values must be positive, got {self.std}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ModelError(f"size must be (height, width) of positive ints, got {self.size}")

    @property
    def mode(self) -> str:
        """The PIL image mode matching ``channels``."""
        return "L" if self.channels == 1 else "RGB"


Preprocessing = TextPreprocessing | ImagePreprocessing


@dataclass(frozen=True)
class ModelSpec:
    """Kind, labels, graph inputs/outputs, preprocessing and provenance of a classifier."""

    kind: Literal["text", "image"]
    name: str
    labels: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ModelError(f"a classifier needs at least 2 labels, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ModelError(f"labels must be unique, got {list(self.labels)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        try:
            pre = dict(d["preprocessing"])
            if pre.get("kind") == "text":
                preprocessing: Preprocessing = TextPreprocessing(**pre)
            elif pre.get("kind") == "image":
                pre["size"] = tuple(pre["size"])
                pre["mean"] = tuple(pre["mean"])
                pre["std"] = tuple(pre["std"])
                preprocessing = ImagePreprocessing(**pre)
            else:
                raise BundleError(f"unknown preprocessing kind {pre.get('kind')!r}")
            return cls(
                kind=d["kind"],
                name=d["name"],
                labels=tuple(d["labels"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                preprocessing=preprocessing,
                source=dict(d.get("source", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError, ModelError) as e:
            raise BundleError(f"manifest.json: malformed model spec ({e!r})") from e


def text_spec(name: str, labels: list[str], input_names: list[str], pre: TextPreprocessing,
              source: dict[str, str]) -> ModelSpec:
    """The spec of a text classifier taking int64 (batch, sequence) inputs."""
    n = len(labels)
    return ModelSpec(
        kind="text",
        name=name,
        labels=tuple(labels),
        inputs=tuple(TensorSpec(i, "int64", ("batch", "sequence")) for i in input_names),
        outputs=(
            TensorSpec("logits", "float32", ("batch", n)),
            TensorSpec("probabilities", "float32", ("batch", n)),
        ),
        preprocessing=pre,
        source=source,
    )
