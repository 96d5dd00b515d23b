"""Static int8 calibration (``edgesdk.calibration``): observers, range methods, QDQ, sensitivity."""

from .calibrate import (
    MAX_JUDGE_SAMPLES,
    MIN_SAMPLES,
    Budget,
    Calibration,
    Judge,
    LayerChoice,
    calibrate,
    held_aside,
    judgement_caveat,
)
from .ranges import RANGE_METHODS, activation_range

__all__ = ["Budget", "Calibration", "Judge", "LayerChoice", "calibrate", "held_aside", "judgement_caveat",
           "MAX_JUDGE_SAMPLES", "MIN_SAMPLES", "RANGE_METHODS", "activation_range"]
