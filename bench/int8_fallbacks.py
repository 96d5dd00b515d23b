"""int8 fallback forms bench: what the layers edgesdk keeps out of int8 could be instead of float.

edgesdk's calibration keeps its most sensitive layers out of static int8 until the gate holds;
float, those layers cost time (a float MatMul reading GELU's output takes 2-3x its int8
kernel's time) and bytes (the int8 bytes goal is 0.28 of fp32). This bench calibrates one
fine-tuned classifier (bench/finetune.py) once, then writes the same int8 model with those
layers in other forms and measures each side by side:

- ``float``: every one of them float whole;
- ``edgesdk``: what edgesdk ships: int8 weight blocks of 32 for all but the fewest the gate
  needs float (``edgesdk.calibration.qdq.int8_weight_blocks``);
- ``static``: those layers int8 like the others (every layer int8);
- ``dynamic``: onnxruntime's ``DynamicQuantizeMatMul`` (activation range per call, per tensor;
  int8 weights per output channel), what ``quantize_dynamic`` writes;
- ``int8_weights``: int8 weights through ``DequantizeLinear``, float activations (onnxruntime
  turns ``DequantizeLinear -> MatMul`` into ``MatMulNBits``, which quantizes the activations
  per block of 32 at run time: its accuracy level 4 is the session default);
- ``nbits8_b32``: ``MatMulNBits`` 8-bit, blocks of 32, accuracy level 4, written by onnxruntime's
  ``MatMulNBitsQuantizer``.

For each: changed, lost and gained answers on the verification split (what the gate judges)
and whether edgesdk's gate holds there (``meets`` on the bound with one change of margin), test
agreement, bytes and latency against fp32 (batch 1, sequence 128, 2 threads) in onnxruntime
(each model in the onnx bundle's integer form), and for ``float`` and ``edgesdk`` in OpenVINO.

Usage: python bench/int8_fallbacks.py [--sets sst2,banking77] [--base minilm] [--rounds 4]
Writes bench/results/int8_fallbacks.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, print_table, write_results  # noqa: E402
from finetune import finetuned, load_set  # noqa: E402
from int8 import _classifier, _latency_ms, _rows  # noqa: E402


def _per_channel_int8(model, node, name: str) -> list[str]:
    """Add ``node``'s weight as int8 per output column with scales and zero points; their names."""
    from onnx import numpy_helper

    from edgesdk.calibration.qdq import _quantize_weight

    weights = {i.name: i for i in model.graph.initializer}
    q, scale = _quantize_weight(numpy_helper.to_array(weights[node.input[1]]), 1)
    model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}.q"),
                                    numpy_helper.from_array(scale, f"{name}.s"),
                                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}.z")])
    return [f"{name}.q", f"{name}.s", f"{name}.z"]


def _rewrite(model, nodes: set[str], form: str):
    """A copy of ``model`` with its float MatMuls ``nodes`` in ``form`` (dynamic or int8_weights)."""
    import onnx
    from onnx import helper

    from edgesdk.calibration.qdq import prune_unused

    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewritten = []
    for node in out.graph.node:
        if node.name not in nodes or node.op_type != "MatMul":
            rewritten.append(node)
            continue
        q, s, z = _per_channel_int8(out, node, node.input[1])
        if form == "dynamic":
            rewritten.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], q, s, z], list(node.output),
                                              name=node.name, domain="com.microsoft"))
        else:
            rewritten.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{q}.dq"], axis=1, name=f"{q}.dq"))
            node.input[1] = f"{q}.dq"
            rewritten.append(node)
    del out.graph.node[:]
    out.graph.node.extend(rewritten)
    prune_unused(out)
    return out


def _nbits(model, nodes: set[str]):
    """A copy of ``model`` with its float MatMuls ``nodes`` as 8-bit ``MatMulNBits`` (the quantizer
    rewrites the model it is given)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer = MatMulNBitsQuantizer(copy, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                     nodes_to_include=sorted(nodes))
    quantizer.process()
    return quantizer.model.model


def forms(folder: Path, calibration: list[tuple[str, int]], fp32: Path, judge_rows, judge_labels, work: Path
          ) -> tuple[dict, dict[str, Path], int]:
    """Calibrate ``fp32`` once on the ``calibration`` texts, judged on ``judge_rows``; write every
    form; returns the calibration's figures, the models (onnxruntime's integer form; ``ov:`` the QDQ
    models OpenVINO reads) and the count of layers out of int8."""
    import dataclasses

    import onnx

    from edgesdk.calibration import Judge, calibrate
    from edgesdk.calibration.qdq import qdq_model
    from edgesdk.targets.onnx_integer import onnxruntime_form

    encoder, rows, labels = _rows(folder, calibration)
    result = calibrate(fp32, rows, labels, encoder, work / "calibration", "mse",
                       judge=Judge(judge_rows, judge_labels, "verification split"))
    float_nodes = {f["node"] for f in result.float_layers}
    ranges = {name: (r["lo"], r["hi"]) for name, r in result.ranges["activations"].items()}
    qdq = {"edgesdk": result.model,
           "float": dataclasses.replace(result, blocks=frozenset()).write_model(work / "float.qdq.onnx")}
    whole = onnxruntime_form(onnx.load(str(qdq["float"])))
    every_layer, _ = qdq_model(result.float_model, ranges, set(result.quantized_nodes), weights=result.weights)
    models = {"float": whole, "edgesdk": onnxruntime_form(onnx.load(str(qdq["edgesdk"]))),
              "static": onnxruntime_form(every_layer), "dynamic": _rewrite(whole, float_nodes, "dynamic"),
              "int8_weights": _rewrite(whole, float_nodes, "int8_weights"), "nbits8_b32": _nbits(whole, float_nodes)}
    paths = {f"ov:{form}": path for form, path in qdq.items()}
    for form, model in models.items():
        paths[form] = work / f"{form}.onnx"
        onnx.save_model(model, str(paths[form]))
    return result.figures, paths, len(float_nodes)


def bench(set_name: str, base: str, rounds: int, work: Path) -> dict:
    import onnx

    from edgesdk.calibration.calibrate import JUDGEMENTS, Budget, effect, meets
    from edgesdk.calibration.onnx_run import onnx_logits
    from edgesdk.converters.export import export_onnx

    folder = finetuned(set_name, base)
    fp32 = export_onnx(_classifier(folder), work / "fp32.onnx")
    _, _, calibration, verification, test = load_set(set_name)
    encoder, verify_rows, verify_labels = _rows(folder, verification)
    _, test_rows, test_labels = _rows(folder, test)
    figures, paths, float_count = forms(folder, calibration, fp32, verify_rows, verify_labels, work)
    float_model = onnx.load(str(fp32))
    reference = {"verification": onnx_logits(float_model, verify_rows, encoder),
                 "test": onnx_logits(float_model, test_rows, encoder)}
    latency = _latency_ms({"fp32": fp32, "ov:fp32": fp32, **paths}, rounds)
    table = {}
    for form, path in paths.items():
        if form.startswith("ov:"):
            continue
        model = onnx.load(str(path))
        judged = effect(reference["verification"], onnx_logits(model, verify_rows, encoder), verify_labels)
        tested = effect(reference["test"], onnx_logits(model, test_rows, encoder), test_labels)
        table[form] = {"verification_changed": judged["samples"] - judged["agreeing"],
                       "verification_lost": judged["lost"], "verification_gained": judged["gained"],
                       "expected_changes": judged["expected_changes"],
                       "kl": judged["kl"], "gate": meets(judged, Budget(), **JUDGEMENTS[figures["judged_by"]]),
                       "test_agreement": tested["agreement"], "test_accuracy_drop": tested["accuracy_drop"],
                       "bytes_ratio": path.stat().st_size / fp32.stat().st_size,
                       "latency_ratio": latency[form] / latency["fp32"]}
        if f"ov:{form}" in latency:
            table[form]["openvino_latency_ratio"] = latency[f"ov:{form}"] / latency["ov:fp32"]
    return {"set": f"{base}-{set_name}", "float_layers": float_count, "judged_by": figures["judged_by"],
            "weight_blocks": figures["weight_blocks"]["layers"],
            "verification_samples": len(verify_rows), "test_samples": len(test_rows), "forms": table}


def _print(result: dict) -> None:
    print(f"\n{result['set']}: {result['float_layers']} layers kept out of static int8 by the search "
          f"({result['weight_blocks']} of them with int8 weight blocks in edgesdk's model); verification "
          f"{result['verification_samples']} texts, test {result['test_samples']}")
    print_table(["form of those layers", "verif changed", "lost", "gained", "expected", "gate", "test agree",
                 "test Δacc", "bytes", "×fp32", "OV ×fp32"],
                [[form, r["verification_changed"], r["verification_lost"], r["verification_gained"],
                  f"{r['expected_changes']:.2f}", "holds" if r["gate"] else "fails", f"{r['test_agreement']:.2%}",
                  f"{r['test_accuracy_drop']:+.2%}", f"{r['bytes_ratio']:.1%}", f"{r['latency_ratio']:.2f}",
                  f"{r['openvino_latency_ratio']:.2f}" if "openvino_latency_ratio" in r else ""]
                 for form, r in result["forms"].items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="sst2,banking77")
    parser.add_argument("--base", default="minilm", choices=["minilm", "e5"])
    parser.add_argument("--rounds", type=int, default=4, help="latency rounds (20 timed runs per model each)")
    args = parser.parse_args()
    flags = cpu_flags()
    results: dict = {"cpu_flags": flags}
    for set_name in args.sets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            result = bench(set_name, args.base, args.rounds, Path(tmp))
        results[result["set"]] = result
        _print(result)
    print(f"\nCPU flags: {' '.join(flags)}; wrote {write_results('int8_fallbacks', results)}")


if __name__ == "__main__":
    main()
