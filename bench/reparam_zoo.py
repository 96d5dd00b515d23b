"""Bench: edgesdk's reparameterization passes on timm's architectures, beside timm's own
``reparameterize_model``.

timm needs torchvision >= 0.29, which pairs with torch >= 2.14, while the project pins torch
2.13.0: so this bench makes its own venv (bench/.zoo-venv: torch 2.14.1, torchvision 0.29.1,
timm 1.0.31 and edgesdk with its onnx extra; CPU only) and runs itself inside it.

For each architecture (random init, eval, BatchNorm statistics randomized so that folding is
not trivial): convolutions and BatchNorms before, after edgesdk's passes (fold_batchnorm,
fuse_branches) and after timm's ``reparameterize_model``; the relative max difference of the
logits from the unfused model's (max |Δ| / max |logit|); and onnxruntime latency (batch 1,
224x224 uint8 through the bundle graph, 2 threads) of the three, measured side by side in
alternating rounds, with the node count of each model as onnxruntime optimizes it (onnxruntime
folds a BatchNorm into its conv itself, so equal counts mean the same graph runs). Writes
bench/results/reparam_zoo.json.

Run: python bench/reparam_zoo.py [--models repvgg_a0,resnet18] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cpu_flags, print_table, write_results  # noqa: E402

VENV = ROOT / "bench" / ".zoo-venv"
REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31"]
MODELS = ["repvgg_a0", "mobileone_s0", "fastvit_t8", "repghostnet_050", "resnet18", "efficientnet_b0",
          "mobilenetv3_large_100", "regnety_002", "convnext_atto", "ghostnet_100", "mobilenetv4_conv_small"]


def in_zoo_venv() -> None:
    """Re-run this script in bench/.zoo-venv, making the venv first when it is missing."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.check_call(pip + REQUIREMENTS)
        subprocess.check_call(pip + ["-e", f"{ROOT}[onnx]"])  # torch 2.14.1 already satisfies edgesdk's range
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def randomize_bn(model):
    import torch

    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def counts(model) -> dict[str, int]:
    import torch

    return {"convs": sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()),
            "batchnorms": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())}


def latency(sessions: dict, feed, rounds: int) -> dict[str, float]:
    """Median ms of each session, rounds alternating between them."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_model(name: str, rounds: int, folder: Path) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import timm
    import torch
    from timm.utils.model import reparameterize_model

    from edgesdk import ImageClassifier, ImagePreprocessing
    from edgesdk.converters import run_passes
    from edgesdk.converters.export import export_onnx

    torch.manual_seed(0)
    net = randomize_bn(timm.create_model(name, pretrained=False, num_classes=10))
    pre = ImagePreprocessing(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    unfused = ImageClassifier.create(net, [str(i) for i in range(10)], pre)
    start = time.perf_counter()
    edgesdk_model, records = run_passes(unfused, ["fold_batchnorm", "fuse_branches"])
    seconds = time.perf_counter() - start
    timm_model = ImageClassifier.create(reparameterize_model(randomize_bn(
        timm.create_model(name, pretrained=False, num_classes=10)), inplace=False), [str(i) for i in range(10)], pre)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = unfused.graph()(x)[0]
        diffs = {k: float((c.graph()(x)[0] - ref).abs().max() / ref.abs().max())
                 for k, c in (("edgesdk", edgesdk_model), ("timm", timm_model))}
    sessions, optimized = {}, {}
    for k, c in (("unfused", unfused), ("edgesdk", edgesdk_model), ("timm", timm_model)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.optimized_model_filepath = str(folder / f"{name}-{k}.optimized.onnx")
        sessions[k] = ort.InferenceSession(str(export_onnx(c, folder / f"{name}-{k}.onnx")), options,
                                           providers=["CPUExecutionProvider"])
        optimized[k] = len(onnx.load(options.optimized_model_filepath).graph.node)
    feed = {sessions["unfused"].get_inputs()[0].name: np.asarray(x[:1])}
    return {"unfused": counts(net), "edgesdk": counts(edgesdk_model.model), "timm": counts(timm_model.model),
            "rel_diff": diffs, "latency_ms": latency(sessions, feed, rounds), "passes_s": seconds,
            "onnxruntime_optimized_nodes": optimized,
            "rewrites": [len(r["rewrites"]) for r in records],
            "skipped": [s for r in records for s in r["skipped"]][:10]}


def _row(name: str, r: dict) -> list[str]:
    """One model's cells of the printed table (its error, when it failed)."""
    if "error" in r:
        return [name, f"error: {r['error'][:90]}"]
    lat = r["latency_ms"]
    return [name, *(f"{r[k]['convs']}/{r[k]['batchnorms']}" for k in ("unfused", "edgesdk", "timm")),
            f"{r['rel_diff']['edgesdk']:.1e}", *(f"{lat[k]:.2f}" for k in ("unfused", "edgesdk", "timm")),
            "/".join(str(n) for n in r["onnxruntime_optimized_nodes"].values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    in_zoo_venv()
    import timm
    import torch

    torch.set_num_threads(2)
    results: dict = {"cpu_flags": cpu_flags(), "torch": torch.__version__, "timm": timm.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                results["models"][name] = bench_model(name, args.rounds, Path(tmp))
            except Exception as e:  # one architecture's failure is a result, not the end of the bench
                results["models"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(name, results["models"][name].get("error", "done"), flush=True)
    print(f"\ntorch {results['torch']}, timm {results['timm']}; CPU flags: {' '.join(results['cpu_flags'])}")
    print_table(["model", "conv/BN before", "edgesdk", "timm", "rel diff", "ms unfused", "edgesdk", "timm",
                 "ORT nodes u/e/t"], [_row(name, r) for name, r in results["models"].items()])
    print(f"wrote {write_results('reparam_zoo', results)}")


if __name__ == "__main__":
    main()
