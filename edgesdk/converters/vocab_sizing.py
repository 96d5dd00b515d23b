"""A pruned vocabulary sized to a target on held-out texts: the smallest that keeps
``min_coverage`` of them tokenizing exactly, or ``target_agreement`` of the model's answers.

Held-out texts are the user's (``--heldout``) or, when none are given, every tenth of the
corpus's first lines, whose tokens are then taken out of the counts so they measure what
the rest of the corpus generalizes to. Coverage is read off the ranking (``vocab_rank``);
agreement runs the original model on the texts that don't tokenize exactly at a size (the
others give the same logits; at most 5,000 held-out texts, evenly spaced), bisecting between
no extra piece and the size whose exact share alone meets the target.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesdk.corpus import CorpusSource, TokenCounts
from edgesdk.corpus.counts import encode_documents
from edgesdk.data import read_text_lines
from edgesdk.errors import InputError
from edgesdk.models import TextClassifier
from edgesdk.runtime.encode import TextEncoder

from .vocab_rank import Ranking
from .vocab_tokenizer import prune_tokenizer_json

__all__ = ["Target", "heldout_from_file", "heldout_from_corpus", "size_to_target", "agreement_by_size"]

SPLIT_LINES, SPLIT_EVERY = 20_000, 10  # the corpus split: every 10th of the first 20,000 documents
MIN_SPLIT_TEXTS = 20
MAX_AGREEMENT_TEXTS = 5_000  # agreement is judged on at most this many held-out texts, evenly spaced


@dataclass(frozen=True)
class Target:
    """What the vocabulary must keep on held-out texts: an exact-tokenization share or top-1 agreement."""

    measure: str  # "coverage" or "agreement"
    value: float

    def __str__(self) -> str:
        return f"{self.measure} >= {self.value:.2%}"


def heldout_from_file(path: Path) -> list[str]:
    """The texts of a held-out file (one per line; a tab-separated label column is dropped)."""
    texts = [line.rpartition("\t")[0] if "\t" in line else line for _, line in read_text_lines(Path(path))]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"held-out file {path} holds no text")
    return texts


def heldout_from_corpus(tokenizer: Any, sources: list[CorpusSource], counts: TokenCounts) -> list[str]:
    """Every tenth of the corpus's first documents, taken out of ``counts`` (in place)."""
    if any(s.url for s in sources):
        raise InputError("sizing the vocabulary on a corpus that only Spark reads needs held-out texts: "
                         "give --heldout FILE")
    documents = (d for s in sources for d in s.documents())
    first = list(islice(documents, SPLIT_LINES))
    texts = first[SPLIT_EVERY - 1::SPLIT_EVERY]
    if len(texts) < MIN_SPLIT_TEXTS:
        raise InputError(f"the corpus has {len(first)} documents: too few to hold {MIN_SPLIT_TEXTS} out for "
                         "sizing the vocabulary; give --heldout FILE")
    flat, _, _ = encode_documents(tokenizer, texts)
    counts.counts -= np.bincount(flat, minlength=len(counts.counts))
    return texts


def size_to_target(classifier: TextClassifier, tokenizer: Any, tj: dict[str, Any], ranking: Ranking,
                   texts: list[str], target: Target, workdir: Path) -> tuple[int, dict[str, Any]]:
    """How many ranked pieces to keep for ``target`` on ``texts``, and the figures of the choice."""
    before = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    needs = ranking.needs(before)
    figures: dict[str, Any] = {"target": str(target), "heldout_texts": len(texts), "ranked": len(ranking),
                               "ranked_from_corpus": ranking.corpus}
    if target.measure == "coverage":
        enough = Ranking.smallest_for_coverage(needs, target.value)
        k = len(ranking) if enough is None else enough
        reached = float(np.mean(needs <= k))
    else:
        judged = np.unique(np.linspace(0, len(texts) - 1, min(len(texts), MAX_AGREEMENT_TEXTS)).astype(int))
        figures["agreement_texts"] = len(judged)
        agreement_at = agreement_by_size(classifier, tj, ranking, [texts[i] for i in judged], needs[judged], workdir)
        enough = Ranking.smallest_for_coverage(needs[judged], target.value)  # exact texts all agree
        k, measured = _bisect(agreement_at, target.value, 0, len(ranking) if enough is None else enough)
        figures["agreement_measured"] = measured
        reached = dict(map(tuple, measured))[k]
    sizes = sorted({*np.linspace(0, len(ranking), 21).astype(int).tolist(), k})
    figures.update({"pieces": k, "met": reached >= target.value, "reached": reached,
                    "exact_share": float(np.mean(needs <= k)), "coverage_curve": Ranking.coverage_curve(needs, sizes)})
    return k, figures


def agreement_by_size(classifier: TextClassifier, tj: dict[str, Any], ranking: Ranking, texts: list[str],
                      needs: np.ndarray, workdir: Path) -> Callable[[int], float]:
    """k -> top-1 agreement of the model pruned to k ranked pieces with the original on ``texts``."""
    original = classifier.encoder()
    with torch.inference_mode():
        answers = classifier.reference_logits(original.encode(texts), original).argmax(1)
    file = workdir / "sizing-tokenizer.json"

    def agreement_at(k: int) -> float:
        changed = np.flatnonzero(needs > k)
        if not len(changed):
            return 1.0
        kept = np.asarray(ranking.kept(k))
        file.write_text(json.dumps(prune_tokenizer_json(tj, kept.tolist()), ensure_ascii=False), encoding="utf-8")
        pruned = TextEncoder(file, classifier.spec.preprocessing, original.input_names)
        rows = pruned.encode([texts[i] for i in changed])
        for row in rows:
            row["input_ids"] = kept[row["input_ids"]]  # back to the original ids: same rows, same logits
        with torch.inference_mode():
            agree = classifier.reference_logits(rows, original).argmax(1) == answers[changed]
        return float((len(texts) - len(changed) + agree.sum()) / len(texts))

    return agreement_at


def _bisect(value_at: Callable[[int], float], target: float, low: int, high: int,
            tolerance: float = 0.02) -> tuple[int, list[list[float]]]:
    """The smallest k in (low, high] whose value reaches ``target``, to within ``tolerance`` of k
    (the value is taken as rising with k), and every [k, value] measured. ``high`` is returned
    when even it falls short."""
    measured = {high: value_at(high)}
    while measured[high] >= target and high - low > max(1, tolerance * high):
        middle = (low + high) // 2
        measured[middle] = value_at(middle)
        if measured[middle] >= target:
            high = middle
        else:
            low = middle
    return high, [[k, measured[k]] for k in sorted(measured)]
