"""CNN int8 bench: how many of an image model's int8 Convs onnxruntime runs in int8, and its speed.

onnxruntime runs a QDQ model's Conv in int8 (``QLinearConv``) only where a ``QuantizeLinear``
follows its output (or its Relu): it fuses ``DequantizeLinear -> Conv -> QuantizeLinear``.
edgesdk quantizes layer inputs, so a Conv whose output feeds a residual add, a pool or a float
layer runs as a float Conv on dequantized inputs. This bench converts timm-shaped CNNs (defined
here: random weights, BatchNorm statistics randomized, so agreement figures would mean nothing)
to onnx fp32 and int8 with every layer int8 (``int8_layers=("*",)``: no float-layer search) and
reports, from the model onnxruntime optimizes when it loads the int8 bundle's model: the Convs in
all and those run as ``QLinearConv``; and the latency of both bundles' models (batch 1, 224x224
uint8 pixels, 2 threads, rounds alternating the two). CPU flags are recorded.

LiteRT, the same way (ai-edge-litert, XNNPACK, 2 threads, batch 1, rounds alternating): the tflite
fp32 bundle's model, ai-edge-quantizer's dynamic-range recipe of it, and edgesdk's full-integer
model of it (``quantize_full_integer``: edgesdk's ``mse`` ranges over the 32 calibration images,
every op int8 but the head writing the outputs, int8 pixels in), with the share of its ops that
compute in integers.

Usage: python bench/int8_cnn.py [--rounds N] [--results NAME]
Writes bench/results/int8_cnn.json (``--results int8_cnn_avx2``: bench/results/int8_cnn_avx2.json,
for a run on another kind of CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import edgesdk
from edgesdk import ImageClassifier, ImagePreprocessing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, print_table, write_results  # noqa: E402
from reparam import randomize_bn  # noqa: E402

SIZE = 224
LABELS = [str(i) for i in range(10)]


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))


class InvertedResidual(nn.Module):
    """timm's ``InvertedResidual`` (MobileNetV2, EfficientNet without SE): 1x1 expand, depthwise
    3x3, 1x1 project, and the residual add where shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class BasicBlock(nn.Module):
    """timm's ``BasicBlock`` (ResNet-18/34): two 3x3 convs, the add, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=False))
        self.down = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def network(block, stem: int, stages: list[tuple[int, int, int]], head: int | None) -> nn.Module:
    """A stem conv, ``(width, depth, stride)`` stages of ``block``, an optional 1x1 head conv, pool, linear."""
    layers, cin = [conv_bn(3, stem, 3, 2)], stem
    for width, depth, stride in stages:
        for i in range(depth):
            layers.append(block(cin, width, stride if i == 0 else 1))
            cin = width
    if head:
        layers.append(conv_bn(cin, head, 1))
        cin = head
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, len(LABELS)))


NETS = {
    "mobilenetv2_100": lambda: network(InvertedResidual, 32, [(16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2),
                                                              (96, 3, 1), (160, 3, 2), (320, 1, 1)], 1280),
    "resnet18_half": lambda: network(BasicBlock, 32, [(32, 2, 2), (64, 2, 2), (128, 2, 2), (256, 2, 2)], None),
}


def convs_run(model_path: Path, out: Path) -> dict[str, int]:
    """The Conv nodes of the model onnxruntime builds from ``model_path``, by how they run."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    return {"int8 (QLinearConv)": ops["QLinearConv"], "float": ops["Conv"] + ops["FusedConv"]}


def latency_ms(models: dict[str, Path], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median batch-1 latency per model, rounds alternating the models, one session at a time."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feeds = {session.get_inputs()[0].name: x}
            for i in range(25):
                start = time.perf_counter()
                session.run(None, feeds)
                if i >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_net(name: str, rounds: int, work: Path) -> dict:
    torch.manual_seed(0)
    pre = ImagePreprocessing(size=(SIZE, SIZE), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    classifier = ImageClassifier.create(randomize_bn(NETS[name]()), LABELS, pre, name=name)
    rng = np.random.default_rng(0)
    data = work / f"{name}.npz"
    np.savez(data, images=rng.integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8))
    start = time.perf_counter()
    edgesdk.convert(classifier, work / name, targets=["onnx"], precisions=["fp32", "int8"], verify_on=data,
                    calibration=data, calibration_samples=32, int8_layers=("*",), quiet=True)
    seconds = time.perf_counter() - start
    models = {p: work / name / f"onnx-{p}" / "model.onnx" for p in ("fp32", "int8")}
    image = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    ms = latency_ms(models, image, rounds)
    convs = convs_run(models["int8"], work / f"{name}.optimized.onnx")
    edgesdk.convert(classifier, work / f"{name}-litert", targets=["tflite"], precisions=["fp32"], quiet=True)
    return {"convs": convs, "latency_ms": ms, "int8_over_fp32": ms["int8"] / ms["fp32"], "convert_s": seconds,
            "litert": litert_figures(work / f"{name}-litert" / "tflite-fp32", list(np.load(data)["images"][:32]),
                                     image[0], rounds, work)}


def litert_figures(fp32_bundle: Path, calibration: list[np.ndarray], image: np.ndarray, rounds: int,
                   work: Path) -> dict:
    """Latency in ai-edge-litert of the fp32 .tflite, its dynamic-range and its full-integer models,
    and the share of each one's ops that compute in integers."""
    from ai_edge_quantizer import quantizer, recipe
    from tflite_int8 import _integer_op_share
    from tflite_int8 import _latency_ms as litert_latency_ms

    from edgesdk.runtime import load_bundle
    from edgesdk.targets.tflite_int8 import quantize_full_integer
    from edgesdk.targets.tflite_runtime import TfliteTarget

    bundle = load_bundle(fp32_bundle)
    models = {"fp32": bundle.path / "model.tflite", **{name: work / f"{fp32_bundle.parent.name}-{name}.tflite"
                                                      for name in ("dynamic_range", "full_integer")}}
    q = quantizer.Quantizer(str(models["fp32"]))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize(None, enable_progress_report=False).export_model(str(models["dynamic_range"]))
    with TfliteTarget.runner(models["fp32"], bundle.spec) as runner:
        quantize_full_integer(runner, models["full_integer"], bundle.encoder, calibration, "mse", {})
    ms = litert_latency_ms(bundle.spec, bundle.encoder, models, [image], rounds)
    return {name: {"latency_ms": ms[name], "integer_op_share": _integer_op_share(path)}
            for name, path in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--results", default="int8_cnn")
    args = parser.parse_args()
    results: dict = {"cpu_flags": cpu_flags(), "onnxruntime": ort.__version__, "torch": torch.__version__,
                     "threads": 2, "nets": {}}
    rows, litert = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in NETS:
            r = results["nets"][name] = bench_net(name, args.rounds, Path(tmp))
            convs = r["convs"]
            rows.append([name, sum(convs.values()), convs["int8 (QLinearConv)"], f"{r['latency_ms']['fp32']:.2f}",
                         f"{r['latency_ms']['int8']:.2f}", f"{r['int8_over_fp32']:.2f}"])
            litert += [[name, variant, f"{v['latency_ms']:.2f}", f"{v['integer_op_share']:.0%}"]
                       for variant, v in r["litert"].items()]
    print(f"CPU flags: {' '.join(results['cpu_flags'])}; onnxruntime {results['onnxruntime']}, 2 threads")
    print_table(["network", "convs", "run as QLinearConv", "fp32 ms", "int8 ms", "int8/fp32"], rows)
    print("\nai-edge-litert (XNNPACK), 2 threads")
    print_table(["network", "model", "ms", "int ops"], litert)
    print(f"wrote {write_results(args.results, results)}")


if __name__ == "__main__":
    main()
