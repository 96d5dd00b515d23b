"""Converter passes (``edgesdk.converters``): one module per pass behind ``PASSES``.

Registration order is the default pass order.
"""

from . import fold_batchnorm, fuse_branches, prune_vocab  # noqa: F401  (register the passes)
from .base import PASSES, Pass, PassResult, run_passes

__all__ = ["PASSES", "Pass", "PassResult", "run_passes"]
