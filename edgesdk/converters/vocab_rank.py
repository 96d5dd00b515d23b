"""Which pieces a pruned vocabulary keeps first, and how many it needs for a target.

Pieces are ranked: the corpus's own (seen ``min_count`` times) by count, then, when a prior
is given, pieces the corpus did not use by the prior's evidence that text like the corpus
will need them (``vocab_priors``). A vocabulary of size k keeps what every text needs
(``base``) and the first k ranked pieces (with their BPE parts).

A text tokenizes exactly as before once every piece it uses is kept: so the exact share of
held-out texts is a step function of k, read off each text's *need* (the rank of its
rarest piece) without building a tokenizer per k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgesdk.corpus import TokenCounts

from .vocab_tokenizer import bpe_closure

__all__ = ["Ranking", "rank_pieces"]

NEVER = np.iinfo(np.int64).max


class Ranking:
    """Ids beyond ``base`` in keep-first order; ``corpus`` of them came from the corpus."""

    def __init__(self, tj: dict[str, Any], base: set[int], order: list[int], corpus: int, vocab_size: int) -> None:
        self.base, self.order, self.corpus = base, order, corpus
        self.closure = bpe_closure(tj)
        self.rank = np.full(vocab_size, NEVER, np.int64)
        self.rank[order] = np.arange(1, len(order) + 1)
        self.rank[sorted(base)] = 0

    def __len__(self) -> int:
        return len(self.order)

    def kept(self, k: int) -> list[int]:
        """Sorted ids of the vocabulary that keeps the first ``k`` ranked pieces."""
        return sorted(self.closure(self.base | set(self.order[:k])))

    def needs(self, texts_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Per text, the smallest k at which it tokenizes exactly as before (``NEVER`` when no k does)."""
        return np.array([int(self.rank[list(ids)].max()) if len(ids) else 0 for ids in texts_ids], np.int64)

    @staticmethod
    def smallest_for_coverage(needs: np.ndarray, coverage: float) -> int | None:
        """The smallest k at which ``coverage`` of the texts tokenize exactly; None when none does."""
        want = int(np.ceil(coverage * len(needs) - 1e-9))
        if want == 0:
            return 0
        k = int(np.sort(needs)[want - 1])
        return None if k == NEVER else k

    @staticmethod
    def coverage_curve(needs: np.ndarray, sizes: Sequence[int]) -> list[list[float]]:
        """[k, exact share] at each of ``sizes``."""
        return [[int(k), float(np.mean(needs <= k))] for k in sizes]


def rank_pieces(tj: dict[str, Any], counts: TokenCounts, base: set[int], prior: list[int] | None = None) -> Ranking:
    """The corpus's pieces by count (most frequent first), then ``prior``'s pieces in its order."""
    used = np.flatnonzero(counts.counts >= counts.min_count)
    order = [int(i) for i in sorted(used.tolist(), key=lambda i: (-counts.counts[i], i)) if i not in base]
    corpus = len(order)
    if prior:
        seen = base | set(order)
        order += [i for i in prior if i not in seen and not seen.add(i)]
    return Ranking(tj, base, order, corpus, len(counts.counts))
