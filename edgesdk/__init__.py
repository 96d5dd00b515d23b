"""edgesdk: ship a trained PyTorch classifier to edge runtimes, with proven parity.

Heavy names (torch-based) load lazily, so ``import edgesdk.runtime`` stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import BundleError, EdgeSDKError, InputError, ModelError, PassError, TargetError
from .parity import ParityResult, Thresholds
from .spec import ImagePreprocessing, ModelSpec, TextPreprocessing

__version__ = "0.1.0"

_LAZY = {
    "TextClassifier": "edgesdk.models",
    "ImageClassifier": "edgesdk.models",
    "load_classifier": "edgesdk.models",
    "convert": "edgesdk.pipeline",
    "ConvertConfig": "edgesdk.config",
    "ConversionResult": "edgesdk.pipeline",
    "verify_bundle": "edgesdk.verify",
    "load_bundle": "edgesdk.runtime",
}

__all__ = [
    "BundleError",
    "EdgeSDKError",
    "ImagePreprocessing",
    "InputError",
    "ModelError",
    "ModelSpec",
    "ParityResult",
    "PassError",
    "TargetError",
    "TextPreprocessing",
    "Thresholds",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")
