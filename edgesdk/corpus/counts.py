"""Count the token ids a corpus produces, streamed in batches through the fast tokenizer.

A corpus is one or more sources (``edgesdk.corpus.sources``: text files, Parquet and Arrow
columns, saved ``datasets`` folders); it is never held in memory. Counts of separate parts
merge in order (``TokenCounts.merge``), which is how the engines (``edgesdk.corpus.engines``:
one process, every core, or Spark) count a corpus in parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from edgesdk.errors import InputError

__all__ = ["TokenCounts", "open_tokenizer", "encode_documents"]

_NEVER = np.iinfo(np.int64).max


@dataclass
class TokenCounts:
    """Occurrences per token id, and after how many lines each id reached ``min_count``."""

    counts: np.ndarray
    reached_at: np.ndarray
    min_count: int
    lines: int = 0
    chars: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @classmethod
    def empty(cls, vocab_size: int, min_count: int) -> TokenCounts:
        return cls(np.zeros(vocab_size, np.int64), np.full(vocab_size, _NEVER, np.int64), min_count)

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    def add(self, flat: np.ndarray, lengths: np.ndarray, chars: set[str]) -> None:
        """Add one batch: its lines' token ids end to end, the number of ids of each line, and the
        batch's characters."""
        line = np.repeat(np.arange(self.lines + 1, self.lines + len(lengths) + 1), lengths)
        order = np.argsort(flat, kind="stable")
        unique, first, seen = np.unique(flat[order], return_index=True, return_counts=True)
        need = self.min_count - self.counts[unique]  # occurrences still needed to reach min_count
        now = (need >= 1) & (need <= seen)
        self.reached_at[unique[now]] = line[order][first[now] + need[now] - 1]
        self.counts += np.bincount(flat, minlength=len(self.counts))
        self.lines += len(lengths)
        self.chars |= chars

    def sparse(self) -> dict:
        """The ids that occurred, with their counts and reach lines: a small message between processes."""
        seen = np.flatnonzero(self.counts)
        return {"ids": seen, "counts": self.counts[seen], "reached_at": self.reached_at[seen], "lines": self.lines,
                "chars": self.chars}

    @classmethod
    def from_sparse(cls, vocab_size: int, min_count: int, part: dict) -> TokenCounts:
        counts = cls.empty(vocab_size, min_count)
        counts.counts[part["ids"]] = part["counts"]
        counts.reached_at[part["ids"]] = part["reached_at"]
        counts.lines, counts.chars = part["lines"], set(part["chars"])
        return counts

    def merge(self, other: TokenCounts) -> TokenCounts:
        """Counts of this corpus followed by ``other``."""
        later = np.where(other.reached_at == _NEVER, _NEVER, other.reached_at + self.lines)
        merged = TokenCounts(self.counts + other.counts, np.minimum(self.reached_at, later), self.min_count,
                             self.lines + other.lines, self.chars | other.chars, self.seconds + other.seconds)
        merged.reached_at[(merged.counts >= self.min_count) & (merged.reached_at == _NEVER)] = merged.lines
        return merged


def open_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` that neither pads nor truncates."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise InputError(f"{path}: not a readable tokenizer.json ({e})") from e
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_documents(tokenizer, documents: list[str]) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """Token ids of ``documents`` (without special tokens) end to end, ids per document, and
    their characters: what ``TokenCounts.add`` takes."""
    encodings = tokenizer.encode_batch(documents, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    flat = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, int(lengths.sum()))
    return flat, lengths, set().union(*documents)
