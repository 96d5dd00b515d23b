"""The runner contract every target implements: activate, infer, deactivate.

The base class checks feeds against the spec (names, dtypes, ranks, fixed dims), so each
runtime's runner only loads its model and calls its runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import BundleError, EdgeSDKError, InputError, TargetError
from ..spec import ModelSpec, dtype_matches

__all__ = ["Runner", "import_runtime"]


def import_runtime(module: str, extra: str):
    """Import an optional runtime, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TargetError(
            f"the {module} runtime is not installed: pip install 'edgesdk[{extra}]'"
        ) from e


class Runner:
    """Runs one bundle's model file; use as a context manager around ``infer``."""

    # where this runtime cannot run on this machine (``unavailable_reason`` says why): the
    # registered name of another runner that runs the same model file as a proxy, and that
    # proxy in words
    proxy_runtime: ClassVar[str | None] = None
    proxy: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this runtime cannot run its bundles on this machine, or None when it can."""
        return None

    @classmethod
    def proxy_reason(cls) -> str | None:
        """Why this runtime's bundles are checked in its ``proxy_runtime`` on this machine (it
        cannot run them), or None when they are not (it runs them, or it has no proxy)."""
        return cls.unavailable_reason() if cls.proxy_runtime else None

    def __init__(self, model_path: Path, spec: ModelSpec) -> None:
        self.model_path = Path(model_path)
        self.spec = spec
        self.active = False

    def __enter__(self) -> Runner:
        try:
            self.activate()
        except EdgeSDKError:
            raise
        except Exception as e:  # each runtime raises its own types for a bad model file
            raise BundleError(f"{type(self).__name__} cannot load {self.model_path.name} "
                              f"({type(e).__name__}: {str(e)[:300]}): the model file is damaged or not for this "
                              "runtime; rebuild the bundle") from e
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
        self.active = False

    def activate(self) -> None:
        """Load the model into the runtime."""

    def deactivate(self) -> None:
        """Release the runtime's resources."""

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output of the spec by name."""
        if not self.active:
            raise TargetError(f"{type(self).__name__}: use the runner inside a `with` block")
        self._check(feeds)
        try:
            return self._infer(feeds)
        except EdgeSDKError:
            raise
        except Exception as e:
            raise BundleError(f"{type(self).__name__} failed to run {self.model_path.name} "
                              f"({type(e).__name__}: {str(e)[:300]}) on inputs that match the manifest: run it with "
                              "the runtime version the manifest's 'versions' names, or rebuild the bundle") from e

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {t.name: t for t in self.spec.inputs}
        if set(feeds) != set(expected):
            raise InputError(f"feeds {sorted(feeds)} do not match the model inputs {sorted(expected)}")
        for name, t in expected.items():
            a = feeds[name]
            if not dtype_matches(a, t.dtype):
                raise InputError(f"input {name!r} has dtype {a.dtype}, the model takes {t.dtype}")
            if a.ndim != len(t.shape):
                raise InputError(f"input {name!r} has shape {a.shape}, the model takes {t.shape}")
            for got, want in zip(a.shape, t.shape):
                if isinstance(want, int) and got != want:
                    raise InputError(f"input {name!r} has shape {a.shape}, the model takes {t.shape}")
