"""Pruning fidelity bench: does a vocabulary pruned to a small corpus keep the model's answers?

Model: multilingual-e5-small fine-tuned on SIB-200 topics in eight languages
(``finetune.py sib200 --base e5``). For each language and corpus size (lines of that
language's SIB-200 train split; English also 2,000 and 10,000 lines, topped up with AG News
sentences, as SIB-200 has 701 per language), three ways to prune:

- ``corpus``: the corpus's pieces only (edgesdk's default);
- ``tokenizer`` / ``wordfreq`` / ``wordfreq+tokenizer``: the vocabulary sized by
  ``--target-agreement`` with that prior, on the language's dev split (99 texts) as
  ``--heldout``.

Each row: bytes against fp32, held-out exact-tokenization share and top-1 agreement with
the unpruned model on the language's test split (204 texts, never used for sizing).
For the ``--scan`` languages, the sizing search is checked against a scan of agreement over
20 vocabulary sizes (``agreement_by_size``, on the test split): the size it picks when
sized on the test split itself, against the smallest scanned size that meets the target.

Usage: python bench/vocab_fidelity.py [--languages spa_Latn,...] [--target 0.99] [--scan LANGS] [--resume]
Writes bench/results/vocab_fidelity.json after each language.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgesdk import TextClassifier
from edgesdk.converters.prune_vocab import PruneVocabulary
from edgesdk.converters.vocab_sizing import agreement_by_size
from edgesdk.corpus import open_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, cpu_flags, print_table, write_results  # noqa: E402
from finetune import SIB_LANGUAGES, finetuned, sib200  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vocab_fidelity.json"
WORDFREQ = {"eng_Latn": "en", "spa_Latn": "es", "arb_Arab": "ar", "rus_Cyrl": "ru", "hin_Deva": "hi",
            "zho_Hans": "zh", "deu_Latn": "de"}  # wordfreq has no Swahili list


def _corpus(language: str, lines: int) -> list[str]:
    texts = [t for t, _ in sib200(language, "train")]
    if lines > len(texts) and language == "eng_Latn":
        news = (SHARED_DATA / "ag_news" / "data" / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()
        texts += [row.split("\t")[0] for row in news if row.strip()]
    return texts[:lines]


def _write(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@torch.inference_mode()
def _row(original: TextClassifier, answers: np.ndarray, test: list[str], work: Path, name: str,
         **options) -> dict:
    prune = PruneVocabulary(**options)
    prune.workdir = work / name
    start = time.perf_counter()
    result = prune(original)
    seconds = time.perf_counter() - start
    n = result.notes
    pruned_answers = result.classifier.logits(test).argmax(1)
    row = {"vocab": n["vocab_after"], "bytes_ratio": n["weight_bytes_after"] / n["weight_bytes_before"],
           "exact": _exact_share(original, result.classifier, test),
           "agreement": float(np.mean(pruned_answers == answers)), "seconds": seconds}
    if "sizing" in n:
        row.update(sized_on=n["sizing"]["heldout_texts"], sizing_reached=n["sizing"]["reached"],
                   sizing_met=n["sizing"]["met"], prior_pieces_kept=n["prior"]["kept"])
    return row


def _priors(language: str) -> dict[str, str]:
    """The priors a language's sized runs use, by name in the table."""
    priors = {"tokenizer": "tokenizer"}
    if language in WORDFREQ:
        words = f"wordfreq:{WORDFREQ[language]}"
        priors.update({"wordfreq": words, "wordfreq+tokenizer": f"{words},tokenizer"})
    return priors


def _exact_share(original: TextClassifier, pruned: TextClassifier, texts: list[str]) -> float:
    """The share of ``texts`` the pruned tokenizer splits exactly as the original does."""
    old, new = open_tokenizer(original.tokenizer_file), open_tokenizer(pruned.tokenizer_file)
    same = [[old.id_to_token(i) for i in a.ids] == [new.id_to_token(i) for i in b.ids]
            for a, b in zip(old.encode_batch(texts), new.encode_batch(texts))]
    return float(np.mean(same))


def _scan(original: TextClassifier, corpus: Path, prior: str, test: list[str], target: float, work: Path,
          chosen_vocab: int) -> dict:
    """Agreement on ``test`` at 20 sizes of the pass's ranking, the smallest size that meets
    ``target``, and ``chosen_vocab``, the size the sizing search picked on ``test``."""
    tj = json.loads(Path(original.tokenizer_file).read_text(encoding="utf-8"))
    ranking = PruneVocabulary(corpus=[corpus], prior=prior, max_vocab=len(tj["model"]["vocab"])).ranking(original)
    tokenizer = open_tokenizer(original.tokenizer_file)
    needs = ranking.needs([e.ids for e in tokenizer.encode_batch(test, add_special_tokens=False)])
    at = agreement_by_size(original, tj, ranking, test, needs, work)
    sizes = np.unique(np.linspace(0, len(ranking), 21).astype(int))
    curve = [[len(ranking.kept(int(k))), at(int(k))] for k in sizes]
    smallest = next((vocab for vocab, value in curve if value >= target), None)
    return {"curve": curve, "smallest_scanned_vocab": smallest, "chosen_vocab": chosen_vocab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="spa_Latn,arb_Arab,rus_Cyrl,hin_Deva,zho_Hans,eng_Latn")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of other languages from bench/results/vocab_fidelity.json")
    parser.add_argument("--scan", default="spa_Latn,arb_Arab",
                        help="languages whose wordfreq+tokenizer sizing is checked against a scan ('' for none)")
    args = parser.parse_args()
    scan = set(args.scan.split(","))
    torch.set_num_threads(2)
    original = TextClassifier.from_pretrained(finetuned("sib200", "e5"), max_length=128)
    results: dict = {"cpu_flags": cpu_flags(), "model": "multilingual-e5-small fine-tuned on SIB-200 "
                     f"({', '.join(SIB_LANGUAGES)})", "target_agreement": args.target, "rows": []}
    if args.resume and RESULTS.is_file():  # keep the languages an earlier run finished
        results["rows"] = [r for r in json.loads(RESULTS.read_text())["rows"]
                           if r["language"] not in args.languages.split(",")]
    table = [[r["language"], r["corpus_lines"], r["way"], f"{r['vocab']:,}", f"{r['bytes_ratio']:.1%}",
              f"{r['exact']:.1%}", f"{r['agreement']:.2%}", f"{r['seconds']:.0f}"] for r in results["rows"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for language in args.languages.split(","):
            test = [t for t, _ in sib200(language, "test")]
            dev = _write(work / f"{language}-dev.txt", [t for t, _ in sib200(language, "dev")])
            with torch.inference_mode():
                answers = original.logits(test).argmax(1)
            sizes = (500, 701, 2000, 10000) if language == "eng_Latn" else (500, 701)
            for lines in sizes:
                corpus = _write(work / f"{language}-{lines}.txt", _corpus(language, lines))
                runs: dict[str, dict] = {"corpus": {}}
                for way, prior in _priors(language).items():
                    runs[way] = {"heldout": dev, "prior": prior, "target_agreement": args.target}
                for way, options in runs.items():
                    row = _row(original, answers, test, work, f"{language}-{lines}-{way}", corpus=[corpus],
                               **options)
                    if language in scan and way == "wordfreq+tokenizer" and lines == 701:
                        on_test = _row(original, answers, test, work, f"{language}-on-test", corpus=[corpus],
                                       **{**options, "heldout": _write(work / f"{language}-test.txt", test)})
                        row["scan"] = _scan(original, corpus, options["prior"], test, args.target, work,
                                            on_test["vocab"])
                    results["rows"].append({"language": language, "corpus_lines": lines, "way": way, **row})
                    table.append([language, lines, way, f"{row['vocab']:,}", f"{row['bytes_ratio']:.1%}",
                                  f"{row['exact']:.1%}", f"{row['agreement']:.2%}", f"{row['seconds']:.0f}"])
                    print("  ".join(map(str, table[-1])), flush=True)
            write_results("vocab_fidelity", results)
    print_table(["language", "corpus lines", "pruning", "vocab", "bytes", "test exact", "test agreement", "s"],
                table)
    print(f"wrote {write_results('vocab_fidelity', results)}")


if __name__ == "__main__":
    main()
