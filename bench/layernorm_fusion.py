"""LayerNorm fusion bench: a residual ``Add -> LayerNormalization`` as onnxruntime fuses it
(``SkipLayerNormalization``) against edgesdk's ``Sum`` form, which it leaves unfused
(``edgesdk.converters.onnx_layernorm``).

One graph per hidden size (batch 1, 128 tokens), run in onnxruntime with its default
optimizations on 1 and 2 threads; rounds alternate the two forms in one process. The ops
each form runs are read back from onnxruntime's optimized model. CPU flags are recorded.

Usage: python bench/layernorm_fusion.py [--hidden 384,768] [--rounds 5]
Writes bench/results/layernorm_fusion.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, print_table, write_results  # noqa: E402

SEQUENCE = 128


def _residual_norm(hidden: int):
    """``LayerNormalization(x + skip)`` as torch's exporter writes a BERT residual."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, SEQUENCE, hidden]) for n in ("x", "skip", "y")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "skip"], ["z"]),
         helper.make_node("LayerNormalization", ["z", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
        "residual_norm", tensors[:2], tensors[2:],
        [numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), n) for n in ("gamma", "beta")])
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)])


def _session(model, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if optimized is not None:  # onnxruntime's fusions (SkipLayerNormalization's among them), written out
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ops_run(model, work: Path) -> list[str]:
    """The ops onnxruntime runs for ``model`` after its graph optimizations."""
    import onnx

    _session(model, 1, work / "optimized.onnx")
    return [n.op_type for n in onnx.load(str(work / "optimized.onnx")).graph.node]


def bench(hidden: int, threads: int, rounds: int, work: Path) -> dict[str, dict]:
    from edgesdk.converters.onnx_layernorm import residual_sums_unfused

    fused = _residual_norm(hidden)
    unfused = _residual_norm(hidden)
    residual_sums_unfused(unfused)
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(size=(1, SEQUENCE, hidden)).astype(np.float32) for n in ("x", "skip")}
    forms = {"Add (fused by onnxruntime)": fused, "Sum (edgesdk)": unfused}
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(rounds):
        for name, model in forms.items():
            session = _session(model, threads)
            for _ in range(50):
                session.run(None, feeds)
            start = time.perf_counter()
            for _ in range(500):
                session.run(None, feeds)
            times[name].append((time.perf_counter() - start) / 500 * 1e6)
    return {name: {"us": float(np.median(times[name])), "ops": _ops_run(model, work)} for name, model in forms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="384,768")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict = {"cpu_flags": cpu_flags(), "sequence": SEQUENCE, "runs": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in (int(h) for h in args.hidden.split(",")):
            for threads in (1, 2):
                run = bench(hidden, threads, args.rounds, Path(tmp))
                results["runs"][f"hidden {hidden}, {threads} threads"] = run
                (fused, a), (unfused, b) = run.items()
                rows.append([f"{hidden}", threads, " + ".join(a["ops"]), f"{a['us']:.1f}", " + ".join(b["ops"]),
                             f"{b['us']:.1f}", f"{a['us'] / b['us']:.2f}x"])
    print_table(["hidden", "threads", "fused ops", "us", "edgesdk ops", "us", "fused / edgesdk"], rows)
    print(f"\nCPU flags: {' '.join(results['cpu_flags'])}; wrote {write_results('layernorm_fusion', results)}")


if __name__ == "__main__":
    main()
