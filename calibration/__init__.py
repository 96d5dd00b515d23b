"""Static int8 calibration (``edgesdk.calibration``): observers, range methods, QDQ, sensitivity."""

from .calibrate import MIN_SAMPLES, Budget, Calibration, calibrate
from .ranges import RANGE_METHODS, activation_range

__all__ = ["Budget", "Calibration", "calibrate", "MIN_SAMPLES", "RANGE_METHODS", "activation_range"]
