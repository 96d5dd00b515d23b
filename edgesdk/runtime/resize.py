"""Bilinear image resize in numpy, matching ``torch.nn.functional.interpolate``.

``mode="bilinear", align_corners=False`` (half-pixel centers, edge clamping, no
antialiasing): what the bundles' image graphs do in PyTorch, so a runtime that needs fixed
input shapes gets the same pixels from the torch-free loader.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bilinear_resize"]


def _axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
    low = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)


def bilinear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an H x W x C image to ``size`` (height, width) as float32."""
    x = np.asarray(image, dtype=np.float32)
    (y0, y1, wy), (x0, x1, wx) = _axis(x.shape[0], size[0]), _axis(x.shape[1], size[1])
    rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
