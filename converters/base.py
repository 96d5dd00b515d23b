"""The pass contract: a pass takes a classifier and returns a result with the new one.

Passes return a new classifier and never change their input in place. A chain re-raises
a failure as ``PassError`` naming the pass that failed and those that ran before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgesdk.errors import EdgeSDKError, PassError
from edgesdk.registry import Registry

__all__ = ["Pass", "PassResult", "PASSES", "run_passes"]


@dataclass(frozen=True)
class PassResult:
    """What a pass produced: the classifier, whether it changed, and notes for the report."""

    classifier: Any
    changed: bool
    notes: dict[str, Any] = field(default_factory=dict)


class Pass:
    """A model rewrite. ``exact`` passes preserve the computation up to float rounding."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    kinds: ClassVar[tuple[str, ...]] = ("text", "image")

    def applies_to(self, classifier: Any) -> bool:
        return classifier.spec.kind in self.kinds

    def __call__(self, classifier: Any) -> PassResult:
        raise NotImplementedError


PASSES: Registry[type[Pass]] = Registry("pass")


def run_passes(
    classifier: Any, names: list[str], measure: Callable[[Any], dict[str, Any]] | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """Run the named passes in order; returns the final classifier and one record per pass.

    ``measure(classifier)`` adds figures (e.g. logit differences) to each record that changed.
    """
    records: list[dict[str, Any]] = []
    for name in names:
        p = PASSES.get(name)()
        if not p.applies_to(classifier):
            continue
        try:
            result = p(classifier)
        except Exception as e:
            done = ", ".join(r["name"] for r in records) or "none"
            cause = str(e) if isinstance(e, EdgeSDKError) else f"{type(e).__name__}: {e}"
            raise PassError(f"pass {name!r} failed ({cause}); passes run before it: {done}") from e
        classifier = result.classifier
        figures = measure(classifier) if measure is not None and result.changed else {}
        records.append({"name": name, "exact": p.exact, "changed": result.changed, **result.notes, **figures})
    return classifier, records
