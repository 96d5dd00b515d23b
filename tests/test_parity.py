"""Parity maths against hand-computed values."""

import numpy as np
import pytest

from edgesdk.errors import InputError
from edgesdk.parity import Thresholds, compare, default_thresholds


def test_compare_statistics_and_verdict():
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [0.0, 1.0]])
    cand = ref + np.array([[0.0, 0.5], [0.1, 0.0], [0.0, 0.0], [2.0, 0.0]])
    r = compare(ref, cand, Thresholds(max_abs_diff=1.0, min_agreement=0.5), labels=np.array([0, 1, 0, -1]))
    assert r.max_abs_diff == pytest.approx(2.0)
    assert r.mean_abs_diff == pytest.approx(2.6 / 8)
    assert r.agreement == pytest.approx(0.75)
    assert r.accuracy_reference == 1.0 and r.accuracy_bundle == 1.0
    assert r.status == "fail" and not r and "max abs logit diff" in r.reason
    ok = compare(ref, ref, default_thresholds("fp32"))
    assert ok and ok.max_abs_diff == 0 and ok.accuracy_reference is None


def test_thresholds_validate():
    with pytest.raises(InputError):
        Thresholds(min_agreement=1.5)
    with pytest.raises(InputError):
        compare(np.zeros((2, 3)), np.zeros((3, 3)), Thresholds())
