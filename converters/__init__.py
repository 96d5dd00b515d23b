"""Converter passes (``edgesdk.converters``): one module per pass behind ``PASSES``."""

from .base import PASSES, Pass, PassResult, run_passes

__all__ = ["PASSES", "Pass", "PassResult", "run_passes"]
