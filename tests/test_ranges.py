"""Range methods against independent computations on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from edgesdk.calibration.observers import Histogram
from edgesdk.calibration.ranges import RANGE_METHODS, activation_range, percentile
from edgesdk.errors import InputError


def _gaussian_with_outliers(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, 1_000_000), [-20.0, 18.0, 20.0]]).astype(np.float32)


def _histogram(x: np.ndarray, batches: int = 7) -> Histogram:
    h = Histogram(2048)
    for part in np.array_split(x, batches):  # streamed: the range widens batch after batch
        h.update(part)
    return h


def test_minmax_keeps_outliers_and_is_exact():
    x = _gaussian_with_outliers()
    assert RANGE_METHODS.get("minmax")(_histogram(x)) == (x.min(), x.max())


def test_percentile_matches_numpy_on_raw_values():
    x = _gaussian_with_outliers()
    h = _histogram(x)
    width = (h.hi - h.lo) / h.bins
    lo, hi = percentile(h, 99.9)
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=2 * width)
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=2 * width)


def _uint8_mse(x: np.ndarray, lo: float, hi: float) -> float:
    scale = (hi - lo) / 255
    q = np.clip(np.round((x - lo) / scale), 0, 255) * scale + lo
    return float(np.mean((x - q) ** 2))


def test_mse_clips_outliers_and_is_near_the_brute_force_optimum():
    x = _gaussian_with_outliers()
    lo, hi = RANGE_METHODS.get("mse")(_histogram(x))
    assert x.min() < lo < -2 and 2 < hi < x.max()  # the outliers are clipped
    # brute force over ranges on the raw values, independent of the histogram
    grid = np.linspace(1, 20, 39)
    brute = min(_uint8_mse(x, -a, b) for a in grid[::2] for b in grid[::2])
    assert _uint8_mse(x, lo, hi) <= brute * 1.05
    assert _uint8_mse(x, lo, hi) < _uint8_mse(x, float(x.min()), float(x.max()))


def test_entropy_clips_outliers_of_a_gaussian():
    x = _gaussian_with_outliers()
    lo, hi = RANGE_METHODS.get("entropy")(_histogram(x))
    # TensorRT's KL calibration of a unit Gaussian lands a few sigma out, far below the outliers
    assert -6 < lo < -2 and 2 < hi < 6


def test_one_sided_activations_keep_zero_and_their_side():
    x = np.abs(_gaussian_with_outliers())  # after a ReLU
    for method in RANGE_METHODS:
        lo, hi = activation_range(_histogram(x), method)
        assert lo == 0.0 and hi > 1.5, method


def test_histogram_memory_is_fixed_and_counts_are_kept():
    h = Histogram(512)
    rng = np.random.default_rng(1)
    added = 0
    for scale in (1, 10, 100, 1000):  # ever wider batches of varying length
        n = int(rng.integers(10, 5000))
        h.update(rng.normal(0, scale, n))
        added += n
    assert h.counts.shape == (512,)
    assert h.total == pytest.approx(added) and h.lo <= h.min and h.hi >= h.max
    with pytest.raises(InputError, match="NaN or infinite"):
        h.update(np.array([1.0, np.nan]))


@pytest.mark.parametrize("values", [np.linspace(-1.4e-42, 9e-43, 2048, dtype=np.float32),  # denormals (MobileViT)
                                    np.linspace(1000.0, 1000.1, 4096, dtype=np.float32)],  # narrow, far from 0
                         ids=["denormal", "narrow"])
def test_histogram_takes_activations_whose_range_float32_bins_cannot_split(values):
    h = Histogram(2048)
    for batch in np.array_split(values, 3):
        h.update(batch)
    assert h.total == len(values) and h.min == values.min() and h.max == values.max()
    for method in RANGE_METHODS:
        lo, hi = activation_range(h, method)
        assert np.isfinite([lo, hi]).all() and lo <= hi, method


def test_unknown_method_names_the_known_ones():
    with pytest.raises(InputError, match="entropy, minmax, mse, percentile"):
        RANGE_METHODS.get("kl")
