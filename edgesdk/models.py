"""Classifiers edgesdk can convert: a Hugging Face text classifier or an image ``nn.Module``.

A classifier pairs the user's network (which passes may rewrite) with its ``ModelSpec``
and builds the graph a bundle runs: token ids in, or raw uint8 pixels in, logits and
probabilities out.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ModelError
from .runtime.encode import Encoder, Row, TextEncoder, encoder_for
from .spec import ImagePreprocessing, ModelSpec, TensorSpec

__all__ = ["Classifier", "TextClassifier", "ImageClassifier", "load_classifier", "load_weights"]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A network, its spec, and (for text) the tokenizer file that ships with it."""

    model: nn.Module
    spec: ModelSpec

    def graph(self) -> nn.Module:
        """The module a bundle runs: bundle inputs in, (logits, probabilities, ...) out."""
        raise NotImplementedError

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        raise NotImplementedError

    def with_model(self, model: nn.Module) -> Classifier:
        """The same classifier around a rewritten network."""
        return dataclasses.replace(self, model=model)

    def input_paths(self) -> list[Path]:
        """Files and folders this classifier was read from (an output folder may not hold them)."""
        return []

    def encoder(self) -> Encoder:
        """The encoder this classifier's bundles use."""
        return encoder_for(self.spec, None)

    def logits(self, items: list) -> np.ndarray:
        """PyTorch logits for raw samples, encoded as this classifier's bundles encode them."""
        encoder = self.encoder()
        return self.reference_logits(encoder.encode(items), encoder)

    @torch.inference_mode()
    def reference_logits(self, rows: list[Row], encoder: Encoder, batch_size: int = 32) -> np.ndarray:
        """PyTorch logits for encoded rows, in row order."""
        graph = self.graph().eval()
        names = [t.name for t in self.spec.inputs]
        out = np.zeros((len(rows), len(self.spec.labels)), dtype=np.float32)
        for idx, feeds in encoder.batches(rows, batch_size):
            logits = graph(*(torch.from_numpy(feeds[n]) for n in names))[0]
            out[idx] = logits.float().numpy()
        return out


class _TextGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits, logits.softmax(-1)


@dataclasses.dataclass(frozen=True)
class TextClassifier(Classifier):
    """A Hugging Face sequence classifier with its fast tokenizer (tokenizer.json)."""

    tokenizer_file: Path = Path("tokenizer.json")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, labels: list[str] | None = None, max_length: int | None = None
    ) -> TextClassifier:
        """Load a sequence-classification folder (config.json, safetensors, tokenizer.json)."""
        from .hf_folder import read_hf_folder

        model, spec = read_hf_folder(Path(path), labels, max_length)
        return cls(model=model, spec=spec, tokenizer_file=Path(path) / "tokenizer.json")

    def graph(self) -> nn.Module:
        return _TextGraph(self.model)

    def input_paths(self) -> list[Path]:
        return [self.tokenizer_file.parent]

    def encoder(self) -> Encoder:
        return TextEncoder(self.tokenizer_file, self.spec.preprocessing, [t.name for t in self.spec.inputs])

    def example_inputs(self, batch: int = 2, length: int = 8) -> tuple[torch.Tensor, ...]:
        ids = torch.full((batch, length), 5, dtype=torch.long)
        ones = torch.ones((batch, length), dtype=torch.long)
        feeds = {"input_ids": ids, "attention_mask": ones, "token_type_ids": torch.zeros_like(ids)}
        return tuple(feeds[t.name] for t in self.spec.inputs)

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        batch = torch.export.Dim("batch", max=4096)
        seq = torch.export.Dim("sequence", max=self.spec.preprocessing.max_length)
        return tuple({0: batch, 1: seq} for _ in self.spec.inputs)


class _ImageGraph(nn.Module):
    def __init__(self, model: nn.Module, pre: ImagePreprocessing, num_labels: int) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(pre.size)
        self.top_k = min(pre.top_k, num_labels)
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        logits = self.model((x - self.mean) / self.std)
        probs = logits.softmax(-1)
        return logits, probs, probs.topk(self.top_k, dim=-1).indices


@dataclasses.dataclass(frozen=True)
class ImageClassifier(Classifier):
    """An image ``nn.Module`` taking normalized NCHW floats; the bundle takes raw uint8 NHWC."""

    @classmethod
    def create(cls, module: nn.Module, labels: list[str], preprocessing: ImagePreprocessing,
               name: str = "image-classifier", source: dict[str, str] | None = None) -> ImageClassifier:
        """Wrap ``module``; the spec is derived from the labels and preprocessing."""
        n = len(labels)
        spec = ModelSpec(
            kind="image",
            name=name,
            labels=tuple(labels),
            inputs=(TensorSpec("pixels", "uint8", ("batch", "height", "width", preprocessing.channels)),),
            outputs=(
                TensorSpec("logits", "float32", ("batch", n)),
                TensorSpec("probabilities", "float32", ("batch", n)),
                TensorSpec("top_k", "int64", ("batch", min(preprocessing.top_k, n))),
            ),
            preprocessing=preprocessing,
            source=source or {"type": "module", "class": type(module).__qualname__},
        )
        classifier = cls(model=module.eval(), spec=spec)
        classifier.check_head()
        return classifier

    def check_head(self) -> None:
        """Refuse labels that don't match the number of logits the network produces."""
        h, w = self.spec.preprocessing.size
        with torch.inference_mode():
            logits = self.graph().eval()(self.example_inputs()[0][:1, :h, :w])[0]
        if logits.shape[-1] != len(self.spec.labels):
            raise ModelError(
                f"the network outputs {logits.shape[-1]} logits but {len(self.spec.labels)} labels "
                "were given: pass one label per output class"
            )

    def graph(self) -> nn.Module:
        return _ImageGraph(self.model, self.spec.preprocessing, len(self.spec.labels))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        h, w = self.spec.preprocessing.size
        g = torch.Generator().manual_seed(0)
        shape = (2, h + 3, w + 5, self.spec.preprocessing.channels)
        return (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),)

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim], ...]:
        return ({0: torch.export.Dim("batch", max=4096), 1: torch.export.Dim("height", min=2, max=8192),
                 2: torch.export.Dim("width", min=2, max=8192)},)


def load_weights(module: nn.Module, weights: str | Path) -> None:
    """Load safetensors (or a tensors-only torch file via ``weights_only=True``) strictly."""
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix in _PICKLE_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"{path}: unknown weights format; save it with safetensors.torch.save_file")
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"{path} could not be read as tensors only ({type(e).__name__}: {e}); edgesdk never "
            "unpickles code: save the state_dict with safetensors.torch.save_file"
        ) from e
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"{path} does not fit the model: {e}") from e


def load_classifier(source: str, weights: str | None = None, **kwargs) -> Classifier:
    """A classifier from a Hugging Face folder, or ``package.module:factory`` plus weights.

    The factory is called with no arguments and returns a ``Classifier`` whose network
    ``weights`` (safetensors) are then loaded into.
    """
    if Path(source).is_dir():
        return TextClassifier.from_pretrained(source, **kwargs)
    if ":" not in source:
        raise ModelError(
            f"{source!r} is neither a model folder nor 'package.module:factory'; "
            "give a Hugging Face folder or a factory returning an edgesdk classifier"
        )
    module_name, _, attr = source.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"cannot import factory {source!r}: {e}") from e
    if not callable(factory) or inspect.isclass(factory) and not issubclass(factory, Classifier):
        raise ModelError(f"{source!r} is not a factory function returning an edgesdk classifier")
    classifier = factory()
    if not isinstance(classifier, Classifier):
        raise ModelError(
            f"{source!r} returned {type(classifier).__name__}; return an edgesdk.ImageClassifier "
            "(ImageClassifier.create(module, labels, preprocessing))"
        )
    if weights is not None:
        load_weights(classifier.model, weights)
    source_info = {"type": "factory", "factory": source}
    if weights is not None:
        from .runtime.bundle import file_sha256

        source_info["weights_sha256"] = file_sha256(Path(weights))
    return dataclasses.replace(classifier, spec=dataclasses.replace(classifier.spec, source=source_info))
