"""Fuzz campaign: hostile bundles and careless paths through every entry point, counted.

Seeded mutations of the demo's bundles (manifest fields set to hostile paths or random JSON,
files damaged, with and without a consistent re-hash) go through ``edgesdk inspect``,
``edgesdk verify``, ``load_bundle(self_test=True)`` + ``classify`` and the sample app of the
bundle's runtime, each in a fresh process with an audit hook that logs every path Python
opens. Hostile ``--out`` paths go through ``edgesdk convert``. Counted: runs, tracebacks,
reads outside the bundle (audited, plus a planted secret file), and files deleted outside
the output folder (a snapshot of everything else before and after).

Usage: python bench/fuzz_campaign.py [--demo DIR] [--cases N] [--seed S]
Writes bench/results/fuzz_campaign.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_table, write_results  # noqa: E402

HOOK = (
    "import sys, os\n"
    "_log = open(os.environ['AUDIT_LOG'], 'a')\n"
    "def _hook(event, args):\n"
    "    if event == 'open' and isinstance(args[0], (str, bytes)):\n"
    "        _log.write(os.path.abspath(os.fsdecode(args[0])) + '\\n'); _log.flush()\n"
    "sys.addaudithook(_hook)\n"
)
HOSTILE = ["../secret.txt", "{secret}", "/dev/zero", "/etc/passwd", "a/../../secret.txt", "", "~/x", "a\\b",
           "model.onnx", "tokenizer.json", "golden.npz", "manifest.json", "x" * 300]
FIELDS = [("model_file",), ("spec", "preprocessing", "tokenizer"), ("golden", "file"), ("reference", "file"),
          ("spec", "labels"), ("spec", "outputs"), ("spec", "inputs"), ("golden", "samples"), ("name",),
          ("parity",), ("files",), ("schema_version",), ("spec", "preprocessing", "max_length")]
APPS = {"onnx": "onnxruntime_app.py", "openvino": "openvino_app.py", "tflite": "litert_app.py"}


def _random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    if choice == 6:
        return {str(rng.randrange(9)): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [None, True, rng.randint(-5, 10**9), rng.random() * 1e6, "".join(rng.choices("ab./\\:~ \x00é", k=5)),
            None, None, "[" * 5000][choice]


def _mutate(folder: Path, secret: Path, rng: random.Random) -> str:
    from edgesdk.bundle import write_manifest

    manifest = json.loads((folder / "manifest.json").read_text())
    where = rng.choice(FIELDS)
    value = rng.choice(HOSTILE) if rng.random() < 0.6 else _random_json(rng)
    value = str(secret) if value == "{secret}" else value
    node = manifest
    for key in where[:-1]:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node[where[-1]] = value
    damaged = rng.choice([None, "tokenizer.json", "golden.npz", "reference.safetensors", manifest["model_file"]])
    if damaged and (folder / damaged).is_file() and rng.random() < 0.5:
        (folder / damaged).write_bytes(rng.randbytes(rng.randrange(1, 128)))
    if rng.random() < 0.5 and isinstance(manifest.get("files"), dict):
        manifest.pop("files")
        manifest.pop("schema_version", None)
        try:
            write_manifest(folder, manifest)
            return f"{'.'.join(where)} (re-hashed)"
        except (TypeError, ValueError):
            pass
    (folder / "manifest.json").write_text(json.dumps(manifest) if not isinstance(value, str) or "[" not in value
                                          else json.dumps(manifest).replace('"' + value + '"', value))
    return ".".join(where)


def _snapshot(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if not str(p).startswith(str(skip))}


def _run(args: list[str], log: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "AUDIT_LOG": str(log)}
    return subprocess.run([sys.executable, "-c", HOOK + args[0], *args[1:]], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


CLI = "import sys; from edgesdk.cli import main; sys.exit(main(sys.argv[1:]))"
LOADER = ("import sys, numpy as np; from edgesdk.runtime import load_bundle; from edgesdk.errors import EdgeSDKError\n"
          "try:\n    b = load_bundle(sys.argv[1], self_test=True)\n"
          "    b.classify(['hello'] if b.spec.kind == 'text' else [np.zeros((8, 8, 1), np.uint8)])\n"
          "except EdgeSDKError as e:\n    sys.exit(f'refused: {e}')\n")


def _app(name: str) -> str:
    return f"import runpy, sys; sys.path.insert(0, {str(ROOT / 'samples')!r}); runpy.run_path(" \
           f"{str(ROOT / 'samples' / name)!r}, run_name='__main__')"


def bundle_cases(demo: Path, cases: int, rng: random.Random, work: Path, counts: Counter, table: list) -> None:
    bases = [(kind, f"{t}-fp32") for kind in ("text", "image") for t in APPS]
    data = {"text": demo / "data" / "topics-val.tsv", "image": demo / "data" / "digits-val.npz"}
    for case in range(cases):
        kind, name = bases[case % len(bases)]
        root = work / f"case{case}"
        folder = root / "bundle"
        shutil.copytree(demo / kind / name, folder)
        secret = root / "secret.txt"
        secret.write_text("outside")
        what = _mutate(folder, secret, rng)
        before = _snapshot(root, folder)
        item = "hello" if kind == "text" else str(ROOT / "bench" / "results" / "digit.png")
        runs = {"inspect": [CLI, "inspect", str(folder)],
                "verify": [CLI, "verify", str(folder), "--data", str(data[kind])],
                "load_bundle": [LOADER, str(folder)], "sample app": [_app(APPS[name.split("-")[0]]), str(folder), item]}
        for entry, args in runs.items():
            log = root / f"{entry}.log"
            log.touch()
            r = _run(args, log)
            opened = [p for p in log.read_text().splitlines()
                      if p.startswith(str(root)) and not p.startswith(str(folder)) and not p.endswith(".log")
                      or p.startswith("/dev/zero") or p == "/etc/passwd"]
            counts["runs"] += 1
            counts["tracebacks"] += "Traceback" in r.stderr
            counts["escapes"] += bool(opened)
            counts["refused"] += r.returncode != 0
            if "Traceback" in r.stderr or opened:
                table.append({"case": case, "mutation": what, "entry": entry, "stderr": r.stderr[-400:],
                              "opened": opened[:3]})
        counts["deletions"] += len(before - _snapshot(root, folder))
        counts["cases"] += 1


def out_cases(demo: Path, work: Path, counts: Counter, table: list) -> None:
    model, data = work / "model", work / "val.tsv"
    shutil.copytree(demo / "models" / "chatbot-topics", model)
    shutil.copyfile(demo / "data" / "topics-val.tsv", data)
    (work / "mine").mkdir()
    (work / "mine" / "keep.txt").write_text("keep")
    (work / ".ox.tmp-1").mkdir()
    outs = [".", str(work), str(model), str(data), str(work / "mine"), str(work / "o*"), "x" * 5000, "/dev/null",
            str(data / "sub"), str(model / "tokenizer.json")]
    for out in outs:
        before = _snapshot(work, work / "o*")
        log = work / "convert.log"
        r = _run([CLI, "convert", "--model", str(model), "--out", out, "--verify-on", str(data), "--overwrite",
                  "--quiet"], log)
        lost = before - _snapshot(work, work / "o*")
        counts["runs"] += 1
        counts["tracebacks"] += "Traceback" in r.stderr
        counts["deletions"] += len(lost)
        table.append({"out": out[:60], "exit": r.returncode, "message": r.stderr.strip().splitlines()[-1][:200]
                      if r.stderr.strip() else "", "deleted": sorted(lost)[:3]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a demo output folder (built when missing)")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgesdk-fuzz-") as tmp:
        work = Path(tmp)
        demo = args.demo
        if demo is None:
            from edgesdk.demo import run_demo

            demo = work / "demo"
            run_demo(demo, quiet=True)
        from PIL import Image

        Image.new("L", (8, 8)).save(ROOT / "bench" / "results" / "digit.png")
        counts, table, outs = Counter(), [], []
        bundle_cases(demo, args.cases, random.Random(args.seed), work / "bundles", counts, table)
        out_counts = Counter()
        (work / "outs").mkdir()
        out_cases(demo, work / "outs", out_counts, outs)
        (ROOT / "bench" / "results" / "digit.png").unlink()
    result = {"bundles": dict(counts), "outputs": dict(out_counts), "bundle_failures": table[:20], "out_paths": outs}
    print_table(["campaign", "cases", "runs", "tracebacks", "escapes", "deletions"],
                [["bundles", counts["cases"], counts["runs"], counts["tracebacks"], counts["escapes"],
                  counts["deletions"]],
                 ["--out", len(outs), out_counts["runs"], out_counts["tracebacks"], "-", out_counts["deletions"]]])
    for row in outs:
        print(f"  --out {row['out']!r}: exit {row['exit']}: {row['message']}")
    print(f"wrote {write_results('fuzz_campaign', result)}")


if __name__ == "__main__":
    main()
