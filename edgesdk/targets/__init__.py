"""Targets (``edgesdk.targets``): one module per runtime behind ``TARGETS``."""

from . import onnx_runtime, openvino_runtime, tensorrt_runtime, tflite_runtime  # noqa: F401  (register them)
from .base import TARGETS, Target

__all__ = ["TARGETS", "Target"]
