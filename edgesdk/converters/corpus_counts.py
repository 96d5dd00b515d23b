"""Count the token ids a corpus produces, streamed in batches through the fast tokenizer.

A corpus is one or more UTF-8 text files (plain or gzip), one document per line; it is
never held in memory. Counts of separate files merge (``TokenCounts.merge``), so a large
corpus can be counted in parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np

from edgesdk.data import read_text_lines
from edgesdk.errors import InputError

__all__ = ["TokenCounts", "count_corpus", "open_tokenizer"]

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

    def add(self, ids: list[list[int]], chars: set[str]) -> None:
        """Add one batch: the token ids of each line, and the batch's characters."""
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64)
        line = np.repeat(np.arange(self.lines + 1, self.lines + len(ids) + 1), [len(i) for i in ids])
        order = np.argsort(flat, kind="stable")
        unique, first, seen = np.unique(flat[order], return_index=True, return_counts=True)
        need = self.min_count - self.counts[unique]  # occurrences still needed to reach min_count
        now = (need >= 1) & (need <= seen)
        self.reached_at[unique[now]] = line[order][first[now] + need[now] - 1]
        self.counts += np.bincount(flat, minlength=len(self.counts))
        self.lines += len(ids)
        self.chars |= chars

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


def _documents(path: Path) -> Iterator[str]:
    for number, line in read_text_lines(path):
        if "\x00" in line:
            raise InputError(f"{path}: line {number} holds binary data, not text; give one document per line")
        if line.strip():
            yield line


def count_corpus(tokenizer, files: list[Path], min_count: int = 1, batch_lines: int = 512,
                 progress: Callable[[str], None] | None = None) -> TokenCounts:
    """Stream ``files`` through ``tokenizer`` (without special tokens) and count ids."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    total = TokenCounts.empty(vocab_size, min_count)
    start = time.perf_counter()
    for path in files:
        part = TokenCounts.empty(vocab_size, min_count)
        docs = _documents(Path(path))
        while batch := list(islice(docs, batch_lines)):
            part.add([e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)], set().union(*batch))
            if progress is not None:
                rate = (total.lines + part.lines) / max(time.perf_counter() - start, 1e-9)
                progress(f"{Path(path).name}: {total.lines + part.lines:,} lines, {rate:,.0f} lines/s")
        total = total.merge(part)
    total.seconds = time.perf_counter() - start
    if not total.lines:
        raise InputError(f"the corpus ({', '.join(map(str, files))}) holds no text: give one document per line")
    return total
