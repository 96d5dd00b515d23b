"""The target contract: build a bundle's model file for one runtime.

A target only builds; its bundles run through the runner registered under the same name in
``edgesdk.runtime.runners`` (the torch-free loader's), so build-time parity and an app's
run use the same code.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from edgesdk.registry import Registry
from edgesdk.runtime.runner import Runner
from edgesdk.runtime.runners import RUNNERS
from edgesdk.spec import ModelSpec

__all__ = ["Target", "TARGETS", "RANGES_FILE", "RANGES_PURPOSE"]

RANGES_FILE = "ranges.json"
RANGES_PURPOSE = ("edgesdk's int8 calibration: each activation's range, scale and zero point, the method and the "
                  "int8 layers; what the int8 model was built from (no runtime reads it)")


class Target:
    """One runtime: which precisions it builds, its model file, and how to build it."""

    name: ClassVar[str]
    runtime: ClassVar[str]
    extra: ClassVar[str]
    distribution: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    model_file: ClassVar[str]
    # what each file this target writes is for, in the manifest
    purposes: ClassVar[dict[str, str]] = {}

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        """Write the model file into ``folder``; returns notes for the manifest."""
        raise NotImplementedError

    @staticmethod
    def write_ranges(calibration: Any, folder: Path, weights: dict[str, str] | None = None) -> dict[str, Any]:
        """Put the calibration's portable ranges in an int8 bundle; returns manifest notes
        (``weights``: how the bundle's model stores its float layers' weights, as ``summary`` takes it;
        None: with the calibration's int8 weight blocks)."""
        text = json.dumps(calibration.ranges, indent=2, sort_keys=True) + "\n"
        (folder / RANGES_FILE).write_text(text, encoding="utf-8")
        return {"ranges_file": RANGES_FILE, "calibration": calibration.summary(weights)}

    def bundle_spec(self, spec: ModelSpec, text_input: str) -> ModelSpec:
        """The spec this target's bundle has: the model's (a target whose model takes strings when
        ``text_input`` is "string" says so here)."""
        return spec

    def parity_skip_reason(self) -> str | None:
        """Why parity cannot run on this machine, or None when it can."""
        return RUNNERS.get(self.name).unavailable_reason()

    @classmethod
    def runner(cls, model_path: Path, spec: ModelSpec) -> Runner:
        """The runtime's runner for a model file this target built."""
        return RUNNERS.get(cls.name)(model_path, spec)

    @classmethod
    def runtime_version(cls) -> str | None:
        try:
            return metadata.version(cls.distribution)
        except metadata.PackageNotFoundError:
            return None


TARGETS: Registry[type[Target]] = Registry("target")
