"""Vocabulary pruning: keep the tokens a user's corpus uses, drop the rest of the embedding.

The pass counts the ids the corpus produces (``edgesdk.corpus``), keeps those plus what any
text needs to tokenize (``vocab_tokenizer.required_ids``), rewrites tokenizer.json
(``vocab_tokenizer.prune_tokenizer_json``) and copies the kept rows of every
vocabulary-sized weight (input embedding, tied or untied output embedding and bias),
found from the model's own ``get_input_embeddings``. Corpus texts then tokenize to the old
ids renumbered, so the pruned model gives the same logits on them.

A size can be asked for instead: a cap (``max_vocab``) or a target on held-out texts
(``min_coverage``, ``target_agreement``: ``vocab_sizing``), filled from a ranking of pieces
(``vocab_rank``) that a prior extends beyond the corpus (``vocab_priors``).
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
from .vocab_priors import check_prior, prior_order
from .vocab_rank import Ranking, rank_pieces
from .vocab_sizing import SPLIT_EVERY, SPLIT_LINES, Target, heldout_from_corpus, heldout_from_file, size_to_target
from .vocab_tokenizer import family, prune_tokenizer_json, required_ids, vocab_ids

__all__ = ["PruneVocabulary", "select_ids", "prune_embeddings", "heldout_figures"]

EXACT_SHARES = (0.9, 0.95, 0.99)  # held-out exact shares whose vocabulary size the report names
CURVE_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                    "unk_token_id", "mask_token_id", "decoder_start_token_id")


def _normalized_alphabet(tokenizer, chars: set[str]) -> set[str]:
    if tokenizer.normalizer is None:
        return chars
    return set().union(*(tokenizer.normalizer.normalize_str(c) for c in sorted(chars)), set())


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What the pass reads before it chooses: the tokenizer (parsed, its family, opened, its size),
    the embedding's rows, the corpus's counts, its normalized characters, the ids every text
    needs, and --heldout's texts."""

    tj: dict[str, Any]
    family: str
    tokenizer: Any
    vocab_size: int
    embedding_rows: int
    counts: TokenCounts
    alphabet: set[str]
    base: set[int]
    heldout: list[str] | None


def _target(min_coverage: float | None, target_agreement: float | None, max_vocab: int | None) -> Target | None:
    """The sizing target the options ask for, if any; refuses two at once or a share outside (0, 1]."""
    given = {name: value for name, value in (("coverage", min_coverage), ("agreement", target_agreement))
             if value is not None}
    if len(given) + (max_vocab is not None) > 1:
        raise InputError("give one of --max-vocab, --min-coverage and --target-agreement: each sets the "
                         "vocabulary's size")
    for name, value in given.items():
        if not 0 < value <= 1:
            raise InputError(f"the {name} target is a share in (0, 1], e.g. 0.99, not {value}")
        return Target(name, value)
    return None


def _read_forced(path: Path, vocab: dict[str, int]) -> set[int]:
    ids = set()
    for number, token in read_text_lines(Path(path)):
        if not token:
            continue
        if token not in vocab:
            raise InputError(f"{path}:{number}: token {token!r} is not in the tokenizer's vocabulary")
        ids.add(vocab[token])
    return ids


def select_ids(ranking: Ranking, max_vocab: int | None) -> list[int]:
    """Sorted kept ids: every corpus piece, or the ranked pieces that fit in ``max_vocab``."""
    if max_vocab is None:
        return ranking.kept(ranking.corpus)
    keep = ranking.kept(0)
    if len(keep) > max_vocab:
        raise InputError(
            f"max_vocab={max_vocab} is below the {len(keep)} tokens every text needs (special tokens, "
            "unknown token and the corpus' characters): raise it"
        )
    closure, kept = ranking.closure, set(keep)
    for i in ranking.order:
        extra = closure({i}) - kept
        if len(kept) + len(extra) <= max_vocab:
            kept |= extra
    return sorted(kept)


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


def heldout_figures(tokenizer, pruned_tokenizer, tj: dict[str, Any], counts: TokenCounts, ranking: Ranking,
                    keep: list[int], texts: list[str]) -> dict[str, Any]:
    """How held-out texts tokenize after pruning, the exact share against corpus fraction, and
    the vocabulary sizes at which given shares of them would tokenize exactly.

    The endpoint is measured with the pruned tokenizer; the curve counts a text exact at a
    fraction of the corpus when all its ids are kept by pruning on that first fraction.
    """
    before = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    after = [e.ids for e in pruned_tokenizer.encode_batch(texts, add_special_tokens=False)]
    new_id = np.full(len(counts.counts), -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    exact = [list(new_id[b]) == a for b, a in zip(before, after)]
    unk = _unk(tj)
    unk_old, unk_new = (None, None) if unk is None else (tokenizer.token_to_id(unk), pruned_tokenizer.token_to_id(unk))
    curve = []
    for fraction in CURVE_FRACTIONS:
        reached = set(np.flatnonzero(counts.reached_at <= fraction * counts.lines).tolist())
        kept = np.zeros(len(counts.counts), bool)
        kept[sorted(ranking.closure(ranking.base | reached))] = True
        curve.append([fraction, float(np.mean([kept[b].all() for b in before]))])
    needs = ranking.needs(before)
    sizes = {f"{share:g}": (None if k is None else len(ranking.kept(k)))
             for share in EXACT_SHARES for k in [Ranking.smallest_for_coverage(needs, share)]}
    return {
        "texts": len(texts),
        "exact_share": float(np.mean(exact)),
        "unk_rate_before": _rate(before, unk_old),
        "unk_rate_after": _rate(after, unk_new),
        "curve": curve,
        "vocab_for_exact_share": sizes,
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
                 processes: int | None = None, spark_master: str | None = None, prior: str | None = None,
                 min_coverage: float | None = None, target_agreement: float | None = None) -> None:
        if min_count < 1:
            raise InputError(f"min_count must be at least 1, not {min_count}")
        if max_vocab is not None and max_vocab < 1:
            raise InputError(f"max_vocab must be a positive number of tokens, not {max_vocab}")
        self.target = _target(min_coverage, target_agreement, max_vocab)
        if prior is not None and max_vocab is None and self.target is None:
            raise InputError(f"the prior {prior!r} adds pieces up to a size: give --max-vocab, --min-coverage "
                             "or --target-agreement")
        check_prior(prior)
        check_engine(engine, processes)
        self.corpus = parse_sources(list(corpus or []), urls=engine == "spark")
        for path in (Path(p) for p in (forced_tokens, heldout) if p is not None):
            if not path.is_file():
                raise InputError(f"{path} does not exist or is not a file")
        self.min_count, self.max_vocab = min_count, max_vocab
        self.forced_tokens = forced_tokens
        self.heldout = heldout
        self.prior = prior
        self.engine = {"engine": engine, "processes": processes, "master": spark_master}

    def applies_to(self, classifier: Any) -> bool:
        return bool(self.corpus) and isinstance(classifier, TextClassifier)

    def _corpus_figures(self, counts: TokenCounts, keep: list[int]) -> dict[str, Any]:
        files = [{**_file_entry(f), "name": s.name if f == s.path else f"{s.name}/{f.name}"}
                 for s in self.corpus for f in s.files()] + [{"name": s.name} for s in self.corpus if s.url]
        return {"corpus_files": files, "corpus_lines": counts.lines, "corpus_tokens": counts.tokens,
                "corpus_coverage": float(counts.counts[keep].sum() / max(counts.tokens, 1)),
                "min_count": self.min_count, "max_vocab": self.max_vocab, "corpus_engine": self.engine["engine"]}

    def _read(self, classifier: TextClassifier) -> _Reading:
        """The tokenizer, the corpus's counts and the pieces every text needs."""
        tj = json.loads(Path(classifier.tokenizer_file).read_text(encoding="utf-8"))
        kind = family(tj)  # refuses a family it can't prune before the corpus is read
        tokenizer = open_tokenizer(classifier.tokenizer_file)
        rows = classifier.model.get_input_embeddings().weight.shape[0]
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > rows:
            raise InputError(f"tokenizer.json has {size} tokens but the embedding has {rows} rows: "
                             "the tokenizer belongs to another model")
        counts = count_corpus(tokenizer, self.corpus, self.min_count, progress=self.progress, **self.engine)
        alphabet = _normalized_alphabet(tokenizer, counts.chars)
        base = required_ids(tj, alphabet) | {classifier.spec.preprocessing.pad_id}
        if self.forced_tokens is not None:
            base |= _read_forced(Path(self.forced_tokens), vocab_ids(tj))
        heldout = None if self.heldout is None else heldout_from_file(Path(self.heldout))
        return _Reading(tj, kind, tokenizer, size, rows, counts, alphabet, base, heldout)

    def _rank(self, reading: _Reading) -> tuple[Ranking, list[str] | None]:
        """The ranking and the held-out texts a target is judged on (the corpus's split, taken out
        of the counts, when a target has no --heldout)."""
        r = reading
        prior = None if self.prior is None else prior_order(self.prior, r.tj, r.tokenizer, r.counts.chars | r.alphabet)
        texts = r.heldout
        if self.target is not None and r.heldout is None:
            texts = heldout_from_corpus(r.tokenizer, self.corpus, r.counts)
        return rank_pieces(r.tj, r.counts, r.base, prior), texts

    def ranking(self, classifier: TextClassifier) -> Ranking:
        """The order in which this pass keeps ``classifier``'s pieces: the corpus's by count, then
        the prior's (benches scan sizes of it)."""
        return self._rank(self._read(classifier))[0]

    def _choose(self, classifier: TextClassifier, reading: _Reading
                ) -> tuple[Ranking, list[int], dict[str, Any] | None]:
        """The ranking, the kept ids (every corpus piece, what fits the cap, or what the target
        needs) and, for a target, the sizing figures."""
        ranking, texts = self._rank(reading)
        if self.target is None:
            return ranking, select_ids(ranking, self.max_vocab), None
        k, sizing = size_to_target(classifier, reading.tokenizer, reading.tj, ranking, texts, self.target,
                                   self.workdir)
        sizing["heldout"] = "--heldout" if reading.heldout is not None else \
            f"every {SPLIT_EVERY}th of the corpus's first {SPLIT_LINES} documents, kept out of the counts"
        return ranking, ranking.kept(k), sizing

    def __call__(self, classifier: TextClassifier) -> PassResult:
        if self.workdir is None:
            raise InputError("prune_vocabulary needs a workdir (set pass.workdir) for the pruned tokenizer.json")
        start = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        reading = self._read(classifier)
        tj, tokenizer, counts, heldout = reading.tj, reading.tokenizer, reading.counts, reading.heldout
        ranking, keep, sizing = self._choose(classifier, reading)
        pruned_tj = prune_tokenizer_json(tj, keep)
        tokenizer_file = self.workdir / "tokenizer.json"
        tokenizer_file.write_text(json.dumps(pruned_tj, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        pre = classifier.spec.preprocessing
        model = prune_embeddings(classifier.model, keep, pre.pad_id)
        new_pre = dataclasses.replace(pre, pad_id=keep.index(pre.pad_id))
        pruned = dataclasses.replace(classifier, model=model, tokenizer_file=tokenizer_file,
                                     spec=dataclasses.replace(classifier.spec, preprocessing=new_pre))
        notes = {"family": reading.family, "vocab_before": reading.vocab_size, "vocab_after": len(keep),
                 "embedding_rows_before": reading.embedding_rows, **_size_figures(classifier, pruned),
                 **self._corpus_figures(counts, keep)}
        if self.prior is not None:
            notes["prior"] = {"name": self.prior, "pieces": len(ranking) - ranking.corpus,
                              "kept": len(set(keep) - set(ranking.kept(ranking.corpus)))}
        if sizing is not None:
            notes["sizing"] = sizing
        if heldout is not None:
            notes["heldout"] = {"file": _file_entry(Path(self.heldout)),
                                **heldout_figures(tokenizer, open_tokenizer(tokenizer_file), tj, counts, ranking,
                                                  keep, heldout)}
        notes["timing"] = {"seconds": time.perf_counter() - start,
                           "lines_per_s": counts.lines / max(counts.seconds, 1e-9)}
        return PassResult(pruned, True, notes)
