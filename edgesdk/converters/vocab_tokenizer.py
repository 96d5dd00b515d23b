"""Rewrite a tokenizer.json to a subset of its token ids (WordPiece, BPE or Unigram).

Why the pruned tokenizer reproduces the original on the text the kept ids came from:
WordPiece matches the longest piece greedily, so dropping pieces it never chose changes
nothing; Unigram picks the best-scoring segmentation, which survives when its pieces do
(the lowest-scoring piece is kept too, because the unknown-token score derives from it);
BPE replays merges by rank, so every piece a kept piece is merged from is kept with it
(``bpe_closure``) and a merge is kept when its two inputs and its output are.

Kept ids keep their order and are renumbered from 0. The model's vocabulary, merges and
unk id, the added tokens, the padding id and the post-processor's special-token ids are
rewritten: the result is a plain tokenizer.json that any ``tokenizers`` runtime loads.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from edgesdk.errors import InputError

__all__ = ["FAMILIES", "family", "vocab_ids", "required_ids", "bpe_closure", "bpe_merge_order", "is_byte_level",
           "prune_tokenizer_json"]

FAMILIES = ("WordPiece", "BPE", "Unigram")
_BYTE_FALLBACK = [f"<0x{b:02X}>" for b in range(256)]


def family(tj: dict[str, Any]) -> str:
    """The tokenizer model's type, or an InputError for one this pass can't prune."""
    kind = (tj.get("model") or {}).get("type")
    if kind not in FAMILIES:
        raise InputError(f"vocabulary pruning supports {', '.join(FAMILIES)} tokenizers, not {kind!r}")
    return kind


def vocab_ids(tj: dict[str, Any]) -> dict[str, int]:
    """The tokenizer model's vocabulary: piece -> id."""
    model = tj["model"]
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def _merges(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model.get("merges", [])]


def _merged(model: dict[str, Any], a: str, b: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return a + b[len(prefix):]


def is_byte_level(tj: dict[str, Any]) -> bool:
    return '"ByteLevel"' in repr(tj.get("pre_tokenizer")).replace("'", '"')


def _map_post_processor_ids(pp: dict[str, Any] | None, fn: Callable[[int], int]) -> None:
    """Apply ``fn`` to every token id a post-processor holds, in place."""
    if not pp:
        return
    kind = pp.get("type")
    if kind == "Sequence":
        for inner in pp["processors"]:
            _map_post_processor_ids(inner, fn)
    elif kind == "TemplateProcessing":
        for special in pp["special_tokens"].values():
            special["ids"] = [fn(i) for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            pp[key] = [pp[key][0], fn(pp[key][1])]


def required_ids(tj: dict[str, Any], alphabet: Iterable[str]) -> set[int]:
    """Ids kept whatever the corpus: specials, unk, and what any text needs to tokenize.

    ``alphabet`` holds the corpus' characters after the tokenizer's normalizer.
    """
    model, vocab = tj["model"], vocab_ids(tj)
    ids = {t["id"] for t in tj.get("added_tokens", [])}
    _map_post_processor_ids(copy.deepcopy(tj.get("post_processor")), lambda i: ids.add(i) or i)
    if (tj.get("padding") or {}).get("pad_id") is not None:
        ids.add(tj["padding"]["pad_id"])
    chars = set(alphabet)
    pieces: set[str] = set()
    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix", "##")
        pieces = {model["unk_token"]} | chars | {prefix + c for c in chars}
    elif model["type"] == "BPE":
        pieces = {model.get("unk_token") or ""}
        if is_byte_level(tj):
            from tokenizers.pre_tokenizers import ByteLevel

            pieces |= set(ByteLevel.alphabet())
        else:
            pieces |= chars
        if model.get("byte_fallback"):
            pieces |= set(_BYTE_FALLBACK)
    else:  # Unigram: unk, the lowest-scoring piece (the unk score derives from it), single characters
        if model.get("unk_id") is not None:
            ids.add(model["unk_id"])
        scores = [score for _, score in model["vocab"]]
        ids.add(min(range(len(scores)), key=scores.__getitem__))
        pieces = chars | {"▁"}
        if model.get("byte_fallback"):
            pieces |= set(_BYTE_FALLBACK)
    return ids | {vocab[p] for p in pieces if p in vocab}


def bpe_closure(tj: dict[str, Any]) -> Callable[[set[int]], set[int]]:
    """A function: ids -> those ids plus every piece any of them is merged from, recursively.

    The merge table is read once, so the function is cheap to call per token. For WordPiece
    and Unigram it returns the ids unchanged.
    """
    model = tj["model"]
    if model["type"] != "BPE":
        return set
    vocab = model["vocab"]
    piece = {i: p for p, i in vocab.items()}
    producers: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for a, b in _merges(model):
        producers[_merged(model, a, b)].append((a, b))

    def closure(ids: set[int]) -> set[int]:
        stack = [piece[i] for i in ids if i in piece]
        seen = set(stack)
        while stack:
            for a, b in producers.get(stack.pop(), ()):
                for part in (a, b):
                    if part not in seen and part in vocab:
                        seen.add(part)
                        stack.append(part)
        return set(ids) | {vocab[p] for p in seen}

    return closure


def bpe_merge_order(tj: dict[str, Any]) -> list[int]:
    """A BPE vocabulary's ids: pieces no merge produces (the alphabet) first, then each piece at
    the rank of the first merge that produces it."""
    model = tj["model"]
    vocab = model["vocab"]
    merged = [vocab[p] for p in dict.fromkeys(_merged(model, a, b) for a, b in _merges(model)) if p in vocab]
    produced = set(merged)
    return sorted(i for i in vocab.values() if i not in produced) + merged


def prune_tokenizer_json(tj: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """A copy of ``tj`` holding only the ids in ``keep`` (sorted), renumbered from 0."""
    new_id = {old: new for new, old in enumerate(keep)}

    def remap(old: int) -> int:
        if old not in new_id:
            raise InputError(f"token id {old} is used by the tokenizer's configuration but was not kept")
        return new_id[old]

    out = copy.deepcopy({key: value for key, value in tj.items() if key != "model"})
    model = out["model"] = copy.deepcopy({key: value for key, value in tj["model"].items()
                                          if key not in ("vocab", "merges")})
    source = tj["model"]
    if model["type"] == "Unigram":
        size = len(source["vocab"])
        model["vocab"] = [list(source["vocab"][i]) for i in keep if i < size]
        if model.get("unk_id") is not None:
            model["unk_id"] = remap(model["unk_id"])
    else:
        piece = {i: p for p, i in source["vocab"].items()}
        model["vocab"] = {piece[i]: new_id[i] for i in keep if i in piece}
        if model["type"] == "BPE":
            kept = model["vocab"]
            model["merges"] = [
                copy.copy(m) for m, (a, b) in zip(source.get("merges", []), _merges(source))
                if a in kept and b in kept and _merged(model, a, b) in kept
            ]
    for token in out.get("added_tokens", []):
        token["id"] = remap(token["id"])
    if (out.get("padding") or {}).get("pad_id") is not None:
        out["padding"]["pad_id"] = remap(out["padding"]["pad_id"])
    _map_post_processor_ids(out.get("post_processor"), remap)
    return out
