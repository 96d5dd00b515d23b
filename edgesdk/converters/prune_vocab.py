"""Vocabulary pruning: keep the tokens a user's corpus uses, drop the rest of the embedding.

The pass counts the ids the corpus produces (``edgesdk.corpus``), keeps those plus what any
text needs to tokenize (``vocab_tokenizer.required_ids``), rewrites tokenizer.json
(``vocab_tokenizer.prune_tokenizer_json``) and copies the kept rows of every
vocabulary-sized weight (input embedding, tied or untied output embedding and bias),
found from the model's own ``get_input_embeddings``. Corpus texts then tokenize to the old
ids renumbered, so the pruned model gives the same logits on them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesdk.corpus import TokenCounts, check_engine, count_corpus, open_tokenizer, parse_sources
from edgesdk.data import read_text_lines
from edgesdk.errors import InputError, PassError
from edgesdk.models import TextClassifier
from edgesdk.runtime.bundle import file_sha256

from .base import PASSES, Pass, PassResult
from .vocab_tokenizer import bpe_closure, family, prune_tokenizer_json, required_ids, vocab_ids

__all__ = ["PruneVocabulary", "select_ids", "prune_embeddings", "heldout_figures"]

CURVE_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id", "decoder_start_token_id")


def _normalized_alphabet(tokenizer, chars: set[str]) -> set[str]:
    if tokenizer.normalizer is None:
        return chars
    return set().union(*(tokenizer.normalizer.normalize_str(c) for c in sorted(chars)), set())


def _read_forced(path: Path, vocab: dict[str, int]) -> set[int]:
    ids = set()
    for number, token in read_text_lines(Path(path)):
        if not token:
            continue
        if token not in vocab:
            raise InputError(f"{path}:{number}: token {token!r} is not in the tokenizer's vocabulary")
        ids.add(vocab[token])
    return ids


def select_ids(tj: dict[str, Any], counts: TokenCounts, base: set[int], max_vocab: int | None) -> list[int]:
    """Sorted kept ids: ``base`` and the corpus ids counted ``min_count`` times, within ``max_vocab``."""
    closure = bpe_closure(tj)
    keep = closure(base)
    used = np.flatnonzero(counts.counts >= counts.min_count)
    if max_vocab is None:
        return sorted(closure(keep | set(used.tolist())))
    if len(keep) > max_vocab:
        raise InputError(
            f"max_vocab={max_vocab} is below the {len(keep)} tokens every text needs (special tokens, "
            "unknown token and the corpus' characters): raise it"
        )
    for i in sorted(used.tolist(), key=lambda i: (-counts.counts[i], i)):
        extra = closure({i}) - keep
        if len(keep) + len(extra) <= max_vocab:
            keep |= extra
    return sorted(keep)


def prune_embeddings(model: nn.Module, keep: list[int], pad_id: int | None) -> nn.Module:
    """A copy of a Hugging Face model with the kept rows of every vocabulary-sized weight."""
    model = copy.deepcopy(model)
    embedding = model.get_input_embeddings()
    rows = embedding.weight.shape[0]
    index = torch.as_tensor(keep, dtype=torch.long)
    new_id = {old: new for new, old in enumerate(keep)}
    pruned: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.ndim and param.shape[0] == rows:
                if id(param) not in pruned:
                    pruned[id(param)] = nn.Parameter(param.detach()[index].clone(), requires_grad=param.requires_grad)
                setattr(module, name, pruned[id(param)])
        if isinstance(module, nn.Embedding) and module.weight.shape[0] == len(keep):
            module.num_embeddings = len(keep)
        if isinstance(module, nn.Linear) and module.weight.shape[0] == len(keep):
            module.out_features = len(keep)
        padding = getattr(module, "padding_idx", None)
        if pad_id is not None and padding == pad_id and new_id.get(pad_id) != pad_id:
            if module is not embedding:
                raise PassError(
                    f"{type(module).__name__} ties positions to pad id {pad_id}, which pruning would renumber to "
                    f"{new_id.get(pad_id)}: force the tokens below it in with a forced-tokens file"
                )
            module.padding_idx = new_id.get(pad_id)
    config = model.config
    config.vocab_size = len(keep)
    for field_name in _TOKEN_ID_FIELDS:
        value = getattr(config, field_name, None)
        if isinstance(value, int):
            setattr(config, field_name, new_id.get(value))
    return model


def heldout_figures(tokenizer, pruned_tokenizer, tj: dict[str, Any], counts: TokenCounts, base: set[int],
                    keep: list[int], path: Path) -> dict[str, Any]:
    """How held-out texts tokenize after pruning, and the exact share against corpus fraction.

    The endpoint is measured with the pruned tokenizer; the curve counts a text exact at a
    fraction of the corpus when all its ids are kept by pruning on that first fraction.
    """
    texts = [line.rpartition("\t")[0] if "\t" in line else line for _, line in read_text_lines(Path(path))]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"held-out file {path} holds no text")
    before = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    after = [e.ids for e in pruned_tokenizer.encode_batch(texts, add_special_tokens=False)]
    new_id = np.full(len(counts.counts), -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    exact = [list(new_id[b]) == a for b, a in zip(before, after)]
    unk = _unk(tj)
    unk_old, unk_new = (None, None) if unk is None else (tokenizer.token_to_id(unk), pruned_tokenizer.token_to_id(unk))
    curve, closure = [], bpe_closure(tj)
    for fraction in CURVE_FRACTIONS:
        reached = set(np.flatnonzero(counts.reached_at <= fraction * counts.lines).tolist())
        kept = np.zeros(len(counts.counts), bool)
        kept[sorted(closure(base | reached))] = True
        curve.append([fraction, float(np.mean([kept[b].all() for b in before]))])
    return {
        "file": _file_entry(path),
        "texts": len(texts),
        "exact_share": float(np.mean(exact)),
        "unk_rate_before": _rate(before, unk_old),
        "unk_rate_after": _rate(after, unk_new),
        "curve": curve,
    }


def _size_figures(before: TextClassifier, after: TextClassifier) -> dict[str, int]:
    """Parameters, weight bytes and tokenizer bytes before and after pruning."""
    (params_before, bytes_before), (params_after, bytes_after) = map(_parameter_bytes, (before.model, after.model))
    return {"parameters_before": params_before, "parameters_after": params_after,
            "weight_bytes_before": bytes_before, "weight_bytes_after": bytes_after,
            "tokenizer_bytes_before": Path(before.tokenizer_file).stat().st_size,
            "tokenizer_bytes_after": Path(after.tokenizer_file).stat().st_size}


def _file_entry(path: Path) -> dict[str, str]:
    """A file as the manifest names it: its name and content hash, not where it lay."""
    return {"name": path.name, "sha256": file_sha256(path)}


def _unk(tj: dict[str, Any]) -> str | None:
    model = tj["model"]
    if model["type"] == "Unigram":
        return None if model.get("unk_id") is None else model["vocab"][model["unk_id"]][0]
    return model.get("unk_token")


def _rate(ids: list[list[int]], unk: int | None) -> float:
    total = sum(len(i) for i in ids)
    return float(sum(i.count(unk) for i in ids) / total) if unk is not None and total else 0.0


def _parameter_bytes(model: nn.Module) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


@PASSES.register("prune_vocabulary")
class PruneVocabulary(Pass):
    """Keep the tokens of ``corpus`` in the tokenizer and the embedding.

    ``corpus`` names text files, globs of shards, ``file.parquet:column``, ``file.arrow:column``
    or saved ``datasets`` folders (``edgesdk.corpus.sources``); ``engine`` counts them on this
    machine's cores (``processes``) or on Spark (``spark_master``).
    """

    kinds = ("text",)

    exact = False  # exact on the corpus' texts; other texts may tokenize differently

    def __init__(self, corpus: list[str | Path] | None = None, min_count: int = 1, max_vocab: int | None = None,
                 forced_tokens: str | Path | None = None, heldout: str | Path | None = None, engine: str = "local",
                 processes: int | None = None, spark_master: str | None = None) -> None:
        if min_count < 1:
            raise InputError(f"min_count must be at least 1, not {min_count}")
        if max_vocab is not None and max_vocab < 1:
            raise InputError(f"max_vocab must be a positive number of tokens, not {max_vocab}")
        check_engine(engine, processes)
        self.corpus = parse_sources(list(corpus or []), urls=engine == "spark")
        for path in (Path(p) for p in (forced_tokens, heldout) if p is not None):
            if not path.is_file():
                raise InputError(f"{path} does not exist or is not a file")
        self.min_count, self.max_vocab = min_count, max_vocab
        self.forced_tokens = forced_tokens
        self.heldout = heldout
        self.engine = {"engine": engine, "processes": processes, "master": spark_master}

    def applies_to(self, classifier: Any) -> bool:
        return bool(self.corpus) and isinstance(classifier, TextClassifier)

    def _corpus_figures(self, counts: TokenCounts, keep: list[int]) -> dict[str, Any]:
        files = [{**_file_entry(f), "name": s.name if f == s.path else f"{s.name}/{f.name}"}
                 for s in self.corpus for f in s.files()] + [{"name": s.name} for s in self.corpus if s.url]
        return {"corpus_files": files, "corpus_lines": counts.lines, "corpus_tokens": counts.tokens,
                "corpus_coverage": float(counts.counts[keep].sum() / max(counts.tokens, 1)),
                "min_count": self.min_count, "max_vocab": self.max_vocab, "corpus_engine": self.engine["engine"]}

    def __call__(self, classifier: TextClassifier) -> PassResult:
        if self.workdir is None:
            raise InputError("prune_vocabulary needs a workdir (set pass.workdir) for the pruned tokenizer.json")
        start = time.perf_counter()
        tj = json.loads(Path(classifier.tokenizer_file).read_text(encoding="utf-8"))
        kind = family(tj)
        tokenizer = open_tokenizer(classifier.tokenizer_file)
        rows = classifier.model.get_input_embeddings().weight.shape[0]
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > rows:
            raise InputError(f"tokenizer.json has {size} tokens but the embedding has {rows} rows: "
                             "the tokenizer belongs to another model")
        counts = count_corpus(tokenizer, self.corpus, self.min_count, progress=self.progress, **self.engine)
        pre = classifier.spec.preprocessing
        base = required_ids(tj, _normalized_alphabet(tokenizer, counts.chars)) | {pre.pad_id}
        if self.forced_tokens is not None:
            base |= _read_forced(Path(self.forced_tokens), vocab_ids(tj))
        keep = select_ids(tj, counts, base, self.max_vocab)
        pruned_tj = prune_tokenizer_json(tj, keep)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tokenizer_file = self.workdir / "tokenizer.json"
        tokenizer_file.write_text(json.dumps(pruned_tj, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        model = prune_embeddings(classifier.model, keep, pre.pad_id)
        new_pre = dataclasses.replace(pre, pad_id=keep.index(pre.pad_id))
        pruned = dataclasses.replace(classifier, model=model, tokenizer_file=tokenizer_file,
                                     spec=dataclasses.replace(classifier.spec, preprocessing=new_pre))
        notes = {"family": kind, "vocab_before": size, "vocab_after": len(keep), "embedding_rows_before": rows,
                 **_size_figures(classifier, pruned), **self._corpus_figures(counts, keep)}
        if self.heldout is not None:
            notes["heldout"] = heldout_figures(tokenizer, open_tokenizer(tokenizer_file), tj, counts, base, keep,
                                               Path(self.heldout))
        notes["timing"] = {"seconds": time.perf_counter() - start,
                           "lines_per_s": counts.lines / max(counts.seconds, 1e-9)}
        return PassResult(pruned, True, notes)
