"""One frozen, versioned description of a conversion: what the CLI and ``convert()`` run.

Every manifest stores it whole (``"config"``), and ``edgesdk convert --config FILE`` replays
it from a TOML file or from a bundle's manifest.json. Paths are kept as they were given, so
a release job that runs from its checkout gets the same config, and manifest, every time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import InputError
from .parity import Thresholds, default_thresholds
from .spec import TEXT_INPUTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConvertConfig", "CONFIG_VERSION"]

CONFIG_VERSION = 1


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion depends on besides the files it reads.

    ``model`` / ``weights`` / ``labels`` / ``max_length`` say which classifier to load (the CLI's
    ``--model``); ``convert()`` called with a loaded classifier leaves them unset.
    """

    model: str | None = None
    weights: str | None = None
    labels: tuple[str, ...] | None = None
    max_length: int | None = None
    targets: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ("fp32",)
    verify_on: str | None = None
    verify_samples: int | None = None
    passes: tuple[str, ...] | None = None
    max_abs_diff: float | None = None
    min_agreement: float | None = None
    calibration: str | None = None
    range_method: str = "mse"
    calibration_samples: int = 300
    float_layers: tuple[str, ...] = ()
    int8_layers: tuple[str, ...] = ()
    corpus: tuple[str, ...] = ()
    corpus_engine: str = "local"
    corpus_processes: int | None = None
    spark_master: str | None = None
    heldout: str | None = None
    min_token_count: int | None = None
    max_vocab: int | None = None
    forced_tokens: str | None = None
    vocab_prior: str | None = None
    min_coverage: float | None = None
    target_agreement: float | None = None
    min_pruning_agreement: float = 0.99
    text_input: str = "ids"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):  # lists from TOML / JSON become tuples: the config is frozen
                object.__setattr__(self, f.name, tuple(str(v) if isinstance(v, Path) else v for v in value))
            elif isinstance(value, Path):
                object.__setattr__(self, f.name, str(value))
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is not None:
                raise InputError(f"option {f.name} must be {_WANT[_kind(f.type)]}, not None")
            _check_type(f.name, value, _kind(f.type))
        if self.text_input not in TEXT_INPUTS:
            raise InputError(f"option text_input must be one of {', '.join(TEXT_INPUTS)}, not {self.text_input!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, with its version."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"config_version": CONFIG_VERSION,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ConvertConfig:
        """Check and build a config; unknown keys and a newer version are refused by name."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a config is a table of options, not {type(data).__name__}")
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise InputError(f"{source}: config_version {version!r} is not {CONFIG_VERSION}, the version this "
                             "edgesdk reads: convert with the edgesdk release that wrote it")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"{source}: unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(f.name for f in fields(cls))}")
        try:
            return cls(**data)
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> ConvertConfig:
        """Read a config from a TOML file or from a bundle's manifest.json (its ``config``)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read config {path} ({e}): give a TOML file or a bundle's manifest.json") from e
        try:
            if path.suffix == ".json":
                manifest = json.loads(text)
                if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
                    raise InputError(f"{path} holds no conversion config: give an edgesdk manifest.json or TOML")
                return cls.from_dict(manifest["config"], str(path))
            return cls.from_dict(tomllib.loads(text), str(path))
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise InputError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({e})") from e

    def thresholds(self, precision: str) -> Thresholds:
        """A precision's default thresholds with this config's ``max_abs_diff`` / ``min_agreement``."""
        changes = {k: v for k, v in (("max_abs_diff", self.max_abs_diff), ("min_agreement", self.min_agreement))
                   if v is not None}
        return dataclasses.replace(default_thresholds(precision), **changes)

    def replace(self, **changes: Any) -> ConvertConfig:
        """A copy with ``changes`` applied (``None`` values leave an option as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_TEXT, _NUMBER, _COUNT, _NAMES = "text", "number", "count", "names"


def _kind(annotation: str) -> str:
    """What a field's annotation asks for, as ``_check_type`` checks it."""
    return next(kind for word, kind in (("tuple", _NAMES), ("int", _COUNT), ("float", _NUMBER), ("str", _TEXT))
                if word in annotation)


_WANT = {_TEXT: "a string", _NUMBER: "a finite number", _COUNT: "a whole number >= 0", _NAMES: "a list of strings"}


def _check_type(name: str, value: Any, kind: str) -> None:
    if value is None:
        return
    ok = {
        _TEXT: isinstance(value, str),
        _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        _COUNT: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        _NAMES: isinstance(value, tuple) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise InputError(f"option {name} must be {_WANT[kind]}, not {value!r}")
