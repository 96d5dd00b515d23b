"""Load a Hugging Face sequence-classification folder as a ``TextClassifier``.

Nothing is hard-coded to one architecture: the head is checked by running it, the inputs
come from the model's forward signature, the embedding from ``get_input_embeddings``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ModelError
from .spec import ModelSpec, TextPreprocessing, text_spec

__all__ = ["read_hf_folder", "quiet_transformers"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars, restoring its settings after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_folder(path: Path) -> dict:
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face model folder (save it with save_pretrained)")
    config = read_json(path / "config.json", "config.json")
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"{path} holds {archs or 'an unknown architecture'}, not a sequence classifier: "
            "fine-tune it with AutoModelForSequenceClassification and save_pretrained"
        )
    if not any((path / w).is_file() for w in _WEIGHTS):
        pickles = [p for p in _PICKLES if (path / p).is_file()]
        if pickles:
            raise ModelError(
                f"{path} holds only pickle weights ({', '.join(pickles)}), which edgesdk never "
                "unpickles: re-save with model.save_pretrained(dir, safe_serialization=True)"
            )
        raise ModelError(f"{path} has no model.safetensors: save the model with save_pretrained")
    if not (path / "tokenizer.json").is_file():
        raise ModelError(
            f"{path} has no tokenizer.json: save the fast tokenizer beside the model "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(dir))"
        )
    return config


def _max_length(path: Path, config: dict, tokenizer: dict, max_length: int | None) -> int:
    limit = int(config.get("max_position_embeddings", 512))
    if max_length is not None:
        if not 2 <= max_length <= limit:
            raise ModelError(f"max_length {max_length} must lie in [2, {limit}] for this model")
        return max_length
    truncation = tokenizer.get("truncation") or {}
    if truncation.get("max_length"):
        return min(int(truncation["max_length"]), limit)
    tok_config = path / "tokenizer_config.json"
    if tok_config.is_file():
        value = read_json(tok_config, "tokenizer_config.json").get("model_max_length")
        if isinstance(value, int) and 2 <= value <= limit:
            return value
    return min(limit, 512)


def read_hf_folder(path: Path, labels: list[str] | None, max_length: int | None) -> tuple[torch.nn.Module, ModelSpec]:
    """Load, check and describe a sequence classifier folder: its network in eval mode and its
    spec (``TextClassifier.from_pretrained`` wraps them with the folder's tokenizer.json)."""
    config = _check_folder(path)
    model = _load_model(path)
    tokenizer_json = read_json(path / "tokenizer.json", "tokenizer.json")
    _check_tokenizer(path, model)
    padding = tokenizer_json.get("padding") or {}
    pad_id = padding.get("pad_id", config.get("pad_token_id") or 0)
    pre = TextPreprocessing(max_length=_max_length(path, config, tokenizer_json, max_length), pad_id=int(pad_id))
    spec = text_spec(path.name, _labels(path, model, config, labels), _input_names(model, config), pre,
                     {"type": "huggingface", "folder": path.name, "weights_sha256": _weights_sha256(path)})
    return model, spec


def _weights_sha256(path: Path) -> str:
    """The hash of the folder's safetensors weights (or of their shard index)."""
    from .runtime.bundle import file_sha256

    return file_sha256(next(path / w for w in _WEIGHTS if (path / w).is_file()))


def _load_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=True, use_safetensors=True, output_loading_info=True,
                dtype=torch.float32,
            )
    except Exception as e:  # transformers raises many kinds; name the folder and the cause
        hint = ""
        if "mismatch" in str(e):
            hint = ": the weights don't fit config.json (do its labels, id2label, match the trained head?)"
        raise ModelError(f"{path}: could not load the classifier ({type(e).__name__}: {e}){hint}") from e
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ModelError(
            f"{path}: weights missing for {sorted(info.get('missing_keys') or [])[:5]} "
            f"{sorted(info.get('mismatched_keys') or [])[:5]}: not a trained classifier, or labels "
            "in config.json that don't match the head"
        )
    return model.eval()


def _check_tokenizer(path: Path, model: torch.nn.Module) -> None:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:
        raise ModelError(f"{path / 'tokenizer.json'} is not a valid tokenizer ({e})") from e
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer.get_vocab_size(with_added_tokens=True) > rows:
        raise ModelError(
            f"{path}: tokenizer.json has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens but "
            f"the embedding has {rows} rows: the tokenizer belongs to another model"
        )


def _input_names(model: torch.nn.Module, config: dict) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters and int(config.get("type_vocab_size", 0)) > 1:
        names.append("token_type_ids")
    return names


def _labels(path: Path, model: torch.nn.Module, config: dict, labels: list[str] | None) -> list[str]:
    id2label = config.get("id2label") or {}
    label_list = labels or [id2label[k] for k in sorted(id2label, key=int)]
    with torch.inference_mode():
        n_logits = model(input_ids=torch.ones((1, 4), dtype=torch.long)).logits.shape[-1]
    if not label_list or len(label_list) != n_logits:
        raise ModelError(
            f"{path}: the head outputs {n_logits} logits but {len(label_list or [])} labels are "
            "known: set id2label in config.json or pass labels=[...] with one label per class"
        )
    return list(label_list)


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object or raise a ModelError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(value, dict):
        raise ModelError(f"{path}: {what} must be a JSON object")
    return value
