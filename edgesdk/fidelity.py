"""Pruning fidelity: did vocabulary pruning change the model's answers? A gate apart from runtime parity.

Runtime parity compares each bundle with the *pruned* PyTorch model (is the runtime
faithful?); this compares the pruned model with the original one on the verification data
(did pruning keep the predictions?), with counts, a confidence bound, the share of texts that
still tokenize exactly, and advice when it fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .parity import ParityAccumulator, Thresholds

__all__ = ["PruningFidelity", "DEFAULT_MIN_PRUNING_AGREEMENT"]

DEFAULT_MIN_PRUNING_AGREEMENT = 0.99


def _tokens(encoder: Any, texts: list[str]) -> list[list[str]]:
    tokenizer = encoder.tokenizer
    return [[tokenizer.id_to_token(int(i)) for i in row["input_ids"]] for row in encoder.encode(texts)]


class PruningFidelity:
    """The pruning gate on the verification texts, accumulated chunk by chunk: agreement of the
    pruned model with the original (95% lower bound), accuracy change, exact-tokenization share,
    and what to do when it fails."""

    def __init__(self, original: Any, pruned: Any, min_agreement: float = DEFAULT_MIN_PRUNING_AGREEMENT) -> None:
        self.parity = ParityAccumulator(Thresholds(max_abs_diff=None, min_agreement=min_agreement, confidence=0.95))
        self.encoders = (original.encoder(), pruned.encoder())
        self.texts = self.exact = self.agree_exact = self.agree_other = 0

    def add(self, texts: list[str], labels: np.ndarray, original_logits: np.ndarray,
            pruned_logits: np.ndarray) -> None:
        """Add one chunk of texts with both models' logits."""
        self.parity.add(original_logits, pruned_logits, labels)
        before, after = (_tokens(encoder, texts) for encoder in self.encoders)
        exact = np.array([a == b for a, b in zip(before, after)], dtype=bool)
        agree = original_logits.argmax(1) == pruned_logits.argmax(1)
        self.texts += len(texts)
        self.exact += int(exact.sum())
        self.agree_exact += int((agree & exact).sum())
        self.agree_other += int((agree & ~exact).sum())

    def result(self, pruning: dict[str, Any] | None = None) -> dict[str, Any]:
        """The gate: status, reason (with advice when it fails, from the pruning pass's record
        ``pruning``), parity figures and token figures."""
        result = self.parity.result()
        other = self.texts - self.exact
        figures = {
            "texts": self.texts, "texts_exact": self.exact, "exact_share": self.exact / self.texts,
            "agreement_exact": self.agree_exact / self.exact if self.exact else None,
            "agreement_other": self.agree_other / other if other else None,
        }
        reason = result.reason
        if result.status == "fail":
            reason += "; " + _advice(figures, pruning)
        return {"name": "pruning fidelity", "status": result.status, "reason": reason, "parity": result.to_dict(),
                **figures}


def _advice(figures: dict[str, Any], pruning: dict[str, Any] | None) -> str:
    """What to do, in numbers: pruning (not the runtime) changed these answers."""
    other = figures["texts"] - figures["texts_exact"]
    text = (f"pruning, not the runtime, changed these answers: {figures['exact_share']:.0%} of the verification texts "
            f"tokenize exactly as before")
    if figures["agreement_exact"] is not None:
        text += f" (agreement {figures['agreement_exact']:.2%} on them"
        text += f", {figures['agreement_other']:.2%} on the {other} others)" if other else ")"
    pruning = pruning or {}
    heldout, sizing = pruning.get("heldout") or {}, pruning.get("sizing")
    if heldout.get("curve"):
        half = next((share for fraction, share in heldout["curve"] if fraction >= 0.5), None)
        whole = heldout["curve"][-1][1]
        if half is not None and whole - half > 0.01:
            text += (f"; your held-out texts tokenize exactly at {whole:.0%} with the whole corpus and {half:.0%} "
                     "with half of it, so more corpus lines would help")
    wanted = (heldout.get("vocab_for_exact_share") or {}).get("0.99")
    if wanted is not None and wanted > pruning.get("vocab_after", wanted):
        text += (f"; keeping {wanted:,} pieces (you kept {pruning['vocab_after']:,}) makes 99% of your held-out texts "
                 "tokenize exactly")
    if sizing is not None and not sizing["met"]:
        text += (f"; the sizing target ({sizing['target']}) was not reached on the held-out texts even with all "
                 f"{sizing['ranked']:,} ranked pieces (reached {sizing['reached']:.2%})")
    advice = "add corpus lines like this traffic (--corpus)"
    if sizing is None:
        advice += ", size the vocabulary to a target (--target-agreement 0.99, with --heldout texts like your traffic)"
    if not pruning.get("prior"):
        advice += ", add pieces your corpus lacks (--vocab-prior tokenizer or wordfreq:LANG)"
    return (f"{text}: {advice}, keep rarer pieces (--min-token-count 1, --forced-tokens), or convert without pruning "
            "(--passes fold_batchnorm,fuse_branches)")
