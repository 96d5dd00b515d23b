"""Re-check a bundle from disk: run it in its runtime on data and compare with PyTorch.

PyTorch's logits come from the bundle's own reference file (the conversion's verification
data, matched sample by sample through a digest of the encoded inputs), or from the
original model when ``model`` is given. Without ``model`` nothing here imports torch. The
data is read and judged a chunk at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import iter_samples
from .errors import BundleError, InputError
from .parity import ParityAccumulator, ParityResult, Thresholds, as_proxy
from .runtime.bundle import Bundle
from .runtime.encode import row_digest
from .runtime.runners import RUNNERS

__all__ = ["verify_bundle"]


class _StoredReference:
    """PyTorch's logits stored in the bundle, found by the digest of each sample's encoded inputs."""

    def __init__(self, bundle: Bundle, data: Path) -> None:
        from safetensors.numpy import load_file

        ref = bundle.manifest.get("reference")
        if not ref:
            raise InputError(f"{bundle.path} carries no PyTorch reference: pass --model to compute one")
        try:
            stored = load_file(str(bundle.member(ref["file"])))
            digests, self.logits = stored["digests"], stored["logits"]
        except Exception as e:  # safetensors raises its own error types for a malformed file
            raise BundleError(f"{bundle.path}: {ref['file']} is not a valid reference file ({str(e)[:200]}): "
                              "rebuild the bundle") from e
        if digests.ndim != 2 or digests.shape[1] != 32 or self.logits.shape != (len(digests), len(bundle.spec.labels)):
            raise BundleError(f"{bundle.path}: {ref['file']} holds arrays of the wrong shape: rebuild the bundle")
        keys = np.ascontiguousarray(digests).view("V32").ravel()
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]
        self.data = data

    def __call__(self, rows: list) -> np.ndarray:
        keys = np.frombuffer(b"".join(row_digest(r) for r in rows), dtype="V32")
        at = np.minimum(np.searchsorted(self.sorted, keys), len(self.sorted) - 1)
        missing = int((self.sorted[at] != keys).sum())
        if missing:
            raise InputError(
                f"{missing} samples in {self.data} were not in the conversion's verification data, so the "
                "bundle holds no PyTorch output for them: pass --model (and --weights) to compute the reference"
            )
        return self.logits[self.order[at]]


def verify_bundle(
    path: str | Path,
    data: str | Path,
    model: str | None = None,
    weights: str | None = None,
    thresholds: Thresholds | None = None,
) -> ParityResult:
    """Parity of the bundle at ``path`` on ``data``, streamed a chunk at a time; truthy when
    within the thresholds. ``thresholds`` defaults to those recorded in the bundle at conversion time.
    A runtime that cannot run here (TensorRT) is checked in its proxy, "skipped" with the proxy's figures.
    """
    bundle = Bundle.open(path)
    if thresholds is None:
        thresholds = Thresholds(**bundle.manifest["parity"]["thresholds"])
    if model is not None:
        from .models import load_classifier

        classifier = load_classifier(model, weights)
        encoder = classifier.encoder()  # the model's own tokenizer

        def reference(items: list, rows: list) -> np.ndarray:
            return classifier.reference_logits(encoder.encode(items), encoder)
    else:
        stored = _StoredReference(bundle, Path(data))

        def reference(items: list, rows: list) -> np.ndarray:
            return stored(rows)
    runtime = RUNNERS.get(bundle.target)
    unavailable = runtime.proxy_reason()
    parity = ParityAccumulator(thresholds)
    with bundle.runner(runtime.proxy_runtime if unavailable else None) as runner:
        for samples in iter_samples(data, bundle.spec):
            rows = bundle.encoder.encode(samples.items)
            parity.add_run(reference(samples.items, rows), bundle.run_rows(rows, runner=runner), samples.labels)
    return as_proxy(parity.result(), unavailable, runtime.proxy) if unavailable else parity.result()
