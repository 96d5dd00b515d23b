"""Bench: RepVGG- and MobileOne-style networks, unfused vs fused by edgesdk's passes.

Prints parameters, exported ONNX bytes and onnxruntime CPU latency (batch 1, 224x224,
2 threads), measured side by side in one run, and writes bench/results/reparam.json.
The networks are defined here, not imported from a library the passes know.
Run: python bench/reparam.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgesdk import ImageClassifier, ImagePreprocessing
from edgesdk.converters import run_passes
from edgesdk.converters.export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402


def convbn(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class RepVGGBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.k3, self.k1 = convbn(cin, cout, 3, stride), convbn(cin, cout, 1, stride)
        self.idn = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.k3(x) + self.k1(x)
        return torch.relu(y + self.idn(x) if self.idn is not None else y)


class MobileOneBlock(nn.Module):
    """Depthwise k-branch block then pointwise k-branch block (MobileOne-S style)."""

    def __init__(self, cin, cout, stride, k=4):
        super().__init__()
        self.dw = nn.ModuleList(convbn(cin, cin, 3, stride, cin) for _ in range(k))
        self.dw_scale = convbn(cin, cin, 1, stride, cin)
        self.dw_id = nn.BatchNorm2d(cin) if stride == 1 else None
        self.pw = nn.ModuleList(convbn(cin, cout, 1) for _ in range(k))
        self.pw_id = nn.BatchNorm2d(cout) if cin == cout else None

    def forward(self, x):
        y = sum(b(x) for b in self.dw) + self.dw_scale(x)
        y = torch.relu(y + self.dw_id(x) if self.dw_id is not None else y)
        z = sum(b(y) for b in self.pw)
        return torch.relu(z + self.pw_id(y) if self.pw_id is not None else z)


def body(block, widths, depths):
    layers, cin = [], 3
    for w, d in zip(widths, depths):
        for i in range(d):
            layers.append(block(cin, w, 2 if i == 0 else 1))
            cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


NETS = {
    # RepVGG-A0: widths 48/48/96/192/1280, depths 1/2/4/14/1
    "repvgg_a0": lambda: body(RepVGGBlock, [48, 48, 96, 192, 1280], [1, 2, 4, 14, 1]),
    # MobileOne-S0-like: k=4 over-parameterized branches
    "mobileone_s0": lambda: body(MobileOneBlock, [48, 48, 128, 256, 1024], [1, 2, 8, 10, 1]),
}


def randomize_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def latency_ms(path: Path, x: np.ndarray, runs: int = 30) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, {"pixels": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"pixels": x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    pre = ImagePreprocessing(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    results: dict[str, float] = {}
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in NETS.items():
            model = ImageClassifier.create(randomize_bn(make()), [str(i) for i in range(1000)], pre, name=name)
            fused, records = run_passes(model, ["fold_batchnorm", "fuse_branches"])
            with torch.no_grad():
                xt = torch.from_numpy(x)
                ref, out = model.graph()(xt)[0], fused.graph()(xt)[0]
            rel = float((ref - out).abs().max() / ref.abs().max())
            row = {}
            for form, c in (("unfused", model), ("fused", fused)):
                path = export_onnx(c, Path(tmp) / f"{name}-{form}.onnx")
                row[form] = (sum(p.numel() for p in c.model.parameters()), path.stat().st_size / 1e6)
            # latencies side by side, alternating, to share the machine's noise
            lat = {"unfused": [], "fused": []}
            for _ in range(3):
                for form in lat:
                    lat[form].append(latency_ms(Path(tmp) / f"{name}-{form}.onnx", x))
            for form in ("unfused", "fused"):
                params, mb = row[form]
                ms = statistics.median(lat[form])
                table.append([name, form, f"{params:,}", f"{mb:.2f}", f"{ms:.2f}"])
                results[f"{name}_{form}_params"] = params
                results[f"{name}_{form}_onnx_mb"] = round(mb, 3)
                results[f"{name}_{form}_latency_ms"] = round(ms, 3)
            results[f"{name}_latency_ratio_fused_over_unfused"] = round(
                statistics.median(lat["fused"]) / statistics.median(lat["unfused"]), 3)
            results[f"{name}_fused_blocks"] = len(records[1]["rewrites"])
            results[f"{name}_max_rel_logit_diff"] = rel
            print(f"{name}: fused {len(records[1]['rewrites'])} blocks, latency ratio "
                  f"{results[f'{name}_latency_ratio_fused_over_unfused']:.2f}, max |Δlogit|/max|logit| {rel:.1e}",
                  flush=True)
    print_table(["network", "form", "params", "onnx MB", "ms (b1)"], table)
    print(f"wrote {write_results('reparam', results)}")


if __name__ == "__main__":
    main()
