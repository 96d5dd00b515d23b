"""Re-check a bundle from disk: run it in its runtime on data and compare with PyTorch.

PyTorch's logits come from the bundle's own reference file (the conversion's verification
data, matched sample by sample through a digest of the encoded inputs), or from the
original model when ``model`` is given. Without ``model`` nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import read_samples
from .errors import BundleError, InputError
from .parity import ParityResult, Thresholds, compare
from .runtime.bundle import Bundle
from .runtime.encode import row_digest

__all__ = ["verify_bundle"]


def _stored_reference(bundle: Bundle, rows: list, data: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    ref = bundle.manifest.get("reference")
    if not ref:
        raise InputError(f"{bundle.path} carries no PyTorch reference: pass --model to compute one")
    try:
        stored = load_file(str(bundle.member(ref["file"])))
        digests, logits = stored["digests"], stored["logits"]
    except Exception as e:  # safetensors raises its own error types for a malformed file
        raise BundleError(f"{bundle.path}: {ref['file']} is not a valid reference file ({str(e)[:200]}): "
                          "rebuild the bundle") from e
    if digests.ndim != 2 or digests.shape[1] != 32 or logits.shape != (len(digests), len(bundle.spec.labels)):
        raise BundleError(f"{bundle.path}: {ref['file']} holds arrays of the wrong shape: rebuild the bundle")
    index = {bytes(d): i for i, d in enumerate(digests)}
    positions = [index.get(row_digest(r)) for r in rows]
    missing = sum(p is None for p in positions)
    if missing:
        raise InputError(
            f"{missing} of {len(rows)} samples in {data} were not in the conversion's verification "
            "data, so the bundle holds no PyTorch output for them: pass --model (and --weights) to "
            "compute the reference"
        )
    return logits[np.asarray(positions, dtype=np.int64)]


def verify_bundle(
    path: str | Path,
    data: str | Path,
    model: str | None = None,
    weights: str | None = None,
    thresholds: Thresholds | None = None,
) -> ParityResult:
    """Parity of the bundle at ``path`` on ``data``; truthy when within the thresholds.

    ``thresholds`` defaults to those recorded in the bundle at conversion time.
    """
    bundle = Bundle.open(path)
    samples = read_samples(data, bundle.spec)
    rows = bundle.encoder.encode(samples.items)
    if model is not None:
        from .models import load_classifier

        reference = load_classifier(model, weights).logits(samples.items)  # encoded by the model's own tokenizer
    else:
        reference = _stored_reference(bundle, rows, Path(data))
    if thresholds is None:
        thresholds = Thresholds(**bundle.manifest["parity"]["thresholds"])
    logits = bundle.run_rows(rows)["logits"]
    return compare(reference, logits, thresholds, samples.labels)
