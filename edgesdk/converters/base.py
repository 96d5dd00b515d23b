"""The pass contract: a pass takes a classifier and returns a result with the new one.

Passes return a new classifier and never change their input in place. A chain re-raises
a failure as ``PassError`` naming the pass that failed and those that ran before it; a graph
pass that was not asked for by name and cannot trace the model's own forward is recorded as
not run instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgesdk.errors import EdgeSDKError, PassError, UntraceableError
from edgesdk.registry import Registry

__all__ = ["Pass", "PassResult", "PASSES", "run_passes"]


@dataclass(frozen=True)
class PassResult:
    """What a pass produced: the classifier, whether it changed, and notes for the report."""

    classifier: Any
    changed: bool
    notes: dict[str, Any] = field(default_factory=dict)


class Pass:
    """A model rewrite. ``exact`` passes preserve the computation up to float rounding.

    ``run_passes`` gives each pass a ``workdir`` for files it writes (e.g. a new
    tokenizer.json) and a ``progress(detail)`` callback.
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    kinds: ClassVar[tuple[str, ...]] = ("text", "image")
    workdir: Path | None = None
    progress: Callable[[str], None] | None = None

    def applies_to(self, classifier: Any) -> bool:
        return classifier.spec.kind in self.kinds

    def __call__(self, classifier: Any) -> PassResult:
        raise NotImplementedError


PASSES: Registry[type[Pass]] = Registry("pass")


def run_passes(
    classifier: Any, names: list[str], measure: Callable[[Any], dict[str, Any]] | None = None,
    options: dict[str, dict[str, Any]] | None = None, workdir: Path | None = None,
    progress: Callable[[str], None] | None = None, named: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run the named passes in order; returns the final classifier and one record per pass.

    ``options[name]`` are keyword arguments of that pass (all passes are created, and so
    checked, before the first runs); ``measure(classifier)`` adds figures (e.g. logit
    differences) to each record that changed. Unless the user ``named`` the passes (they are
    the defaults), a pass that cannot trace the model (its own forward checks shapes in Python)
    does not stop the chain: its record says why it did not run.
    """
    passes = [PASSES.get(name)(**(options or {}).get(name, {})) for name in names]
    records: list[dict[str, Any]] = []
    modules_before: list[set[str]] = []
    for name, p in zip(names, passes):
        if workdir is not None:
            p.workdir = workdir / name
        p.progress = progress
        if not p.applies_to(classifier):
            continue
        modules_before.append(_module_names(classifier))
        try:
            result = p(classifier)
        except Exception as e:
            if isinstance(e, UntraceableError) and not named:
                records.append({"name": name, "exact": p.exact, "changed": False,
                                "not_run": f"{e.reason}; this pass needs a forward() that torch.fx can trace"})
                continue
            done = ", ".join(r["name"] for r in records) or "none"
            cause = str(e) if isinstance(e, EdgeSDKError) else f"{type(e).__name__}: {e}"
            raise PassError(f"pass {name!r} failed ({cause}); passes run before it: {done}") from e
        classifier = result.classifier
        figures = measure(classifier) if measure is not None and result.changed else {}
        records.append({"name": name, "exact": p.exact, "changed": result.changed, **result.notes, **figures})
    _drop_resolved_skips(records, modules_before, _module_names(classifier))
    return classifier, records


def _module_names(classifier: Any) -> set[str]:
    model = getattr(classifier, "model", None)
    return {name for name, _ in model.named_modules()} if hasattr(model, "named_modules") else set()


def _drop_resolved_skips(records: list[dict[str, Any]], modules_before: list[set[str]], final: set[str]) -> None:
    """Forget a pass's skip of a module that a later pass rewrote away (a BatchNorm that
    ``fold_batchnorm`` left because its conv has other readers, then fused as a branch)."""
    for record, before in zip(records, modules_before):
        if record.get("skipped"):
            record["skipped"] = [s for s in record["skipped"] if s.get("at") not in before - final]
