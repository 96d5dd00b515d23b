"""Priors for vocabulary pruning: pieces the corpus did not use, ranked by evidence that text
like the corpus will need them.

- ``tokenizer``: the tokenizer's own statistics from its training text: a Unigram piece's
  log-probability, a BPE piece's merge rank (earlier merges joined more frequent pairs).
  WordPiece keeps neither.
- ``wordfreq:LANG``: the most frequent words of a language (the ``wordfreq`` package, about
  40 languages, offline), tokenized with the original tokenizer; a piece scores the summed
  frequency of the words that use it.

Priors chain: ``wordfreq:es,tokenizer`` ranks the word list's pieces first, then the
tokenizer's. Only pieces written in the corpus's characters are ranked, so a Spanish corpus
does not buy Cyrillic pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgesdk.errors import InputError

from .vocab_tokenizer import bpe_merge_order, is_byte_level, vocab_ids

__all__ = ["PRIORS", "check_prior", "prior_order"]

PRIORS = ("tokenizer", "wordfreq:LANG")
WORDFREQ_WORDS = 200_000


def check_prior(spec: str | None) -> None:
    """Refuse an unknown prior or a wordfreq language the package lacks, before any work."""
    for one in [] if spec is None else spec.split(","):
        _check_one(one)


def _check_one(spec: str) -> None:
    name, _, language = spec.partition(":")
    if name == "tokenizer" and not language:
        return
    if name != "wordfreq":
        raise InputError(f"unknown vocabulary prior {spec!r}: choose one of {', '.join(PRIORS)}")
    try:
        import wordfreq
    except ImportError as e:
        raise InputError("the wordfreq prior needs the wordfreq package: pip install 'edgesdk[prior]'") from e
    languages = sorted(wordfreq.available_languages())
    if language not in languages:
        raise InputError(f"wordfreq has no word list for {language!r}: choose one of {', '.join(languages)} "
                         "or the tokenizer prior")


def prior_order(spec: str, tj: dict[str, Any], tokenizer: Any, alphabet: set[str]) -> list[int]:
    """Ids ranked by the priors of ``spec`` in turn (most needed first), only those written in
    ``alphabet``; an id comes at its first place."""
    ids: list[int] = []
    for one in spec.split(","):
        name, _, language = one.partition(":")
        ids += _tokenizer_order(tj) if name == "tokenizer" else _wordfreq_order(tj, tokenizer, language)
    ids = list(dict.fromkeys(ids))
    text = _piece_text(tj)
    allowed = set(alphabet) | {" "}
    return [i for i in ids if set(text(i)) <= allowed]


def _tokenizer_order(tj: dict[str, Any]) -> list[int]:
    model = tj["model"]
    if model["type"] == "Unigram":
        scores = np.array([score for _, score in model["vocab"]])
        return np.argsort(-scores, kind="stable").tolist()
    if model["type"] == "BPE":
        return bpe_merge_order(tj)
    raise InputError("a WordPiece tokenizer keeps no piece statistics: use the prior wordfreq:LANG "
                     "(the corpus's language)")


def _wordfreq_order(tj: dict[str, Any], tokenizer: Any, language: str) -> list[int]:
    import wordfreq

    table = wordfreq.get_frequency_dict(language)  # no re-tokenizing: Chinese and Japanese need no extras
    words = sorted(table, key=lambda w: (-table[w], w))[:WORDFREQ_WORDS]
    frequency = np.array([table[w] for w in words])
    forms = [words] + ([[" " + w for w in words]] if is_byte_level(tj) else [])
    score = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True))
    for texts in forms:
        for encoding, f in zip(tokenizer.encode_batch(texts, add_special_tokens=False), frequency):
            np.add.at(score, encoding.ids, f)
    used = np.flatnonzero(score)
    return used[np.argsort(-score[used], kind="stable")].tolist()


def _piece_text(tj: dict[str, Any]) -> Callable[[int], str]:
    """id -> the characters a piece writes, without the family's word markers."""
    model = tj["model"]
    piece = {i: p for p, i in vocab_ids(tj).items()}
    markers = [m for m in ("▁", model.get("continuing_subword_prefix"), model.get("end_of_word_suffix")) if m]
    decode = _byte_decoder() if is_byte_level(tj) else None

    def text(i: int) -> str:
        p = piece.get(i, "")
        if decode is not None:
            return bytes(decode.get(c, 0) for c in p).decode("utf-8", errors="ignore")
        for marker in markers:
            p = p.replace(marker, "")
        return p

    return text


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character for each byte (GPT-2's table), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars
