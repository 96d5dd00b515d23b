"""One small error hierarchy: every message names the thing that is wrong and the fix."""

from __future__ import annotations

__all__ = [
    "EdgeSDKError",
    "InputError",
    "ModelError",
    "PassError",
    "UntraceableError",
    "TargetError",
    "BundleError",
    "ParityError",
]


class EdgeSDKError(Exception):
    """Base of every error edgesdk raises on purpose."""


class InputError(EdgeSDKError):
    """A data file, option or output folder given by the user is unusable."""


class ModelError(EdgeSDKError):
    """The model (folder, factory, weights, labels) cannot be used as a classifier."""


class PassError(EdgeSDKError):
    """A converter pass failed; the message names the pass and those that ran before it."""


class UntraceableError(PassError):
    """A graph pass cannot trace the model (its forward has Python control flow on tensors);
    ``reason`` says why, without the advice."""

    def __init__(self, model: str, cause: str) -> None:
        self.reason = f"cannot trace {model} with torch.fx ({cause})"
        super().__init__(f"{self.reason}; skip reparameterization with passes=[] or make forward() traceable")


class TargetError(EdgeSDKError):
    """A target could not build or run its bundle (missing runtime, unsupported op...)."""


class BundleError(EdgeSDKError):
    """A bundle on disk is malformed, tampered with or unsafe to load."""


class ParityError(EdgeSDKError):
    """A bundle's outputs miss the parity thresholds."""
