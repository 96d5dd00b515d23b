"""Targets (``edgesdk.targets``): one module per runtime behind ``TARGETS``."""

from . import onnx_runtime  # noqa: F401  (registers the target)
from .base import TARGETS, Target

__all__ = ["TARGETS", "Target"]
