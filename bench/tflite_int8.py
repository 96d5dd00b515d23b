"""TFLite int8 bench: fp32, dynamic range and full integer side by side in ai-edge-litert.

Two models: the demo's digits CNN (image, trained by ``edgesdk.demo`` on scikit-learn's digits)
and MiniLM fine-tuned on SST-2 (text, ``bench/finetune.py``, 128 tokens). Each is converted by
edgesdk (onnx and tflite, fp32 and int8: 300 calibration samples, float layers judged on the
verification split), and from the same float .tflite the bench writes every variant:

- ``dynamic_range``: ai-edge-quantizer's dynamic-range recipe;
- ``full_integer``: edgesdk's full-integer model (its range method, its float layers; text:
  int8 activations around the weight layers only, the other ops float) from the float .tflite
  as litert-torch wrote it, without calibration's smoothing;
- ``full_integer_all_int8``: the same with no layer kept float;
- ``edgesdk_bundle``: the int8 bundle's own model, as the target chose it (its recipe, and for
  full integer calibration's smoothing and column-scaled token tables written in, edgesdk's
  float layers, those it added for LiteRT, and those of them given dynamic range or int8 weights);
- text only, ``full_integer_every_op``: every op int8 (softmax, LayerNorm, GELU...), no float layer;
- text only, ``*_one_length``: fp32 and dynamic range as the bundles were before signatures
  per sequence length (one signature at max_length), for the short-text figures.

Per variant, on the test split (never used by the conversion): top-1 agreement with the fp32
.tflite, accuracy, latency per sample (median, batch 1, XNNPACK, 2 threads; text: a 10-token
and a 128-token text, rounds alternating the variants), bytes, and the share of ops whose
outputs are all integer tensors. CPU flags are recorded, and the bundle's own searches (every
configuration its float-layer and int8-weight searches tried, ``edgesdk_searches``).

Usage: python bench/tflite_int8.py [--rounds N] [--results NAME]
Writes bench/results/tflite_int8.json (``--results tflite_int8_avx2``: bench/results/tflite_int8_avx2.json,
for a run on another kind of CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, print_table, write_results  # noqa: E402
from finetune import finetuned, load_set  # noqa: E402

SHORT_TEXT = "a gripping , funny and moving film ."  # 10 tokens with [CLS] and [SEP]


def _image_case(work: Path) -> dict:
    """The demo's digits CNN converted as the demo converts it; test: the demo's verification digits."""
    from edgesdk import convert
    from edgesdk.demo import CALIBRATION, digits_classifier, train_digits
    from edgesdk.models import load_weights

    train_images, train_labels, val_images, val_labels = train_digits(work / "digits.safetensors")
    np.savez(work / "calibration.npz", images=train_images[:CALIBRATION], labels=train_labels[:CALIBRATION])
    unlabeled = np.full(len(train_images) - CALIBRATION, -1)
    np.savez(work / "verify.npz", images=train_images[CALIBRATION:], labels=unlabeled)
    model = digits_classifier()
    load_weights(model.model, work / "digits.safetensors")
    convert(model, work / "image", targets=["onnx", "tflite"], precisions=["fp32", "int8"], quiet=True,
            verify_on=work / "verify.npz", calibration=work / "calibration.npz")
    return {"folder": work / "image", "test": list(val_images), "labels": val_labels,
            "calibration": list(train_images[:CALIBRATION]), "timed": {"image": [val_images[0]]}}


def _text_case(work: Path) -> dict:
    """MiniLM fine-tuned on SST-2; verification and test splits from bench/finetune.py."""
    from edgesdk import TextClassifier, convert

    _, _, calibration, verification, test = load_set("sst2")
    (work / "calibration.txt").write_text("".join(f"{t}\n" for t, _ in calibration), encoding="utf-8")
    (work / "verify.txt").write_text("".join(f"{t}\n" for t, _ in verification), encoding="utf-8")
    model = TextClassifier.from_pretrained(finetuned("sst2"), max_length=128)
    convert(model, work / "text", targets=["onnx", "tflite"], precisions=["fp32", "int8"], quiet=True,
            verify_on=work / "verify.txt", calibration=work / "calibration.txt")
    long_text = " ".join(t for t, _ in test[:40])
    return {"folder": work / "text", "test": [t for t, _ in test], "labels": np.array([y for _, y in test]),
            "calibration": [t for t, _ in calibration], "timed": {"10 tokens": [SHORT_TEXT], "128 tokens": [long_text]},
            "fixed": _fixed_length(model, work)}


def _fixed_length(model, work: Path) -> Path:
    """The text model as edgesdk's TFLite bundles were before signatures per length: one at max_length."""
    import litert_torch

    from edgesdk.targets.tflite_runtime import convert_signatures

    out = work / "fixed_length.tflite"
    sample = model.example_inputs(batch=1, length=128)
    convert_signatures(litert_torch, model.graph().eval(), {"serving_default": sample}, out)
    return out


def _variants(case: dict, work: Path) -> dict[str, Path | str]:
    """Every int8 variant of the case's float .tflite; a variant the quantizer cannot write is its error."""
    from ai_edge_quantizer import quantizer, recipe

    from edgesdk.runtime import load_bundle
    from edgesdk.targets.tflite_int8 import float_layer_weights, quantize_full_integer
    from edgesdk.targets.tflite_runtime import TfliteTarget

    fp32 = load_bundle(case["folder"] / "tflite-fp32")
    calibration = json.loads((case["folder"] / "onnx-int8" / "manifest.json").read_text())["build"]["calibration"]
    variants: dict[str, Path | str] = {"fp32": fp32.path / "model.tflite",
                                       "edgesdk_bundle": case["folder"] / "tflite-int8" / "model.tflite"}
    q = quantizer.Quantizer(str(fp32.path / "model.tflite"))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.quantize(None, enable_progress_report=False).export_model(str(work / "dynamic_range.tflite"))
    variants["dynamic_range"] = work / "dynamic_range.tflite"
    if "fixed" in case:  # before signatures per length: fp32 and dynamic range at max_length only
        variants["fp32_one_length"] = case["fixed"]
        q = quantizer.Quantizer(str(case["fixed"]))
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        q.quantize(None, enable_progress_report=False).export_model(str(work / "dynamic_range_one_length.tflite"))
        variants["dynamic_range_one_length"] = work / "dynamic_range_one_length.tflite"
    weights = float_layer_weights(case["folder"] / "onnx-fp32" / "model.onnx", calibration["float_layers"])
    full = [("full_integer", weights, None), ("full_integer_all_int8", {}, None)]
    if fp32.spec.kind == "text":  # every op int8, not only the weight layers
        full.append(("full_integer_every_op", {}, False))
    for name, kept, weight_layers_only in full:
        try:
            with TfliteTarget.runner(fp32.path / "model.tflite", fp32.spec) as runner:
                quantize_full_integer(runner, work / f"{name}.tflite", fp32.encoder, case["calibration"],
                                      calibration["method"], kept, weight_layers_only)
            variants[name] = work / f"{name}.tflite"
        except Exception as e:  # the bench reports what the quantizer refuses, and goes on
            variants[name] = f"{type(e).__name__}: {str(e)[:200]}"
    case["float_layers"] = len(weights)
    return variants


def _integer_op_share(model: Path) -> float:
    """The share of ops whose outputs are all integer tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the interpreter's only listing of ops
    return sum(all(np.dtype(tensors[t]["dtype"]).kind in "iu" for t in op["outputs"]) for op in ops) / len(ops)


def _latency_ms(spec, encoder, models: dict[str, Path], samples: list, rounds: int) -> dict[str, float]:
    """Median per-sample latency of each model on ``samples``; rounds alternate the models."""
    from edgesdk.targets.tflite_runtime import TfliteTarget

    rows = encoder.encode(samples)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            with TfliteTarget.runner(path, spec) as runner:
                for _, feeds in encoder.batches(rows, 1):
                    for i in range(25):
                        start = time.perf_counter()
                        runner.infer(feeds)
                        if i >= 5:
                            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_case(case: dict, work: Path, rounds: int) -> dict:
    from edgesdk.runtime import load_bundle
    from edgesdk.targets.tflite_runtime import TfliteTarget

    fp32 = load_bundle(case["folder"] / "tflite-fp32")
    variants = _variants(case, work)
    models = {name: path for name, path in variants.items() if isinstance(path, Path)}
    rows = fp32.encoder.encode(case["test"])
    logits = {}
    for name, path in models.items():
        with TfliteTarget.runner(path, fp32.spec) as runner:
            logits[name] = fp32.run_rows(rows, runner=runner)["logits"]
    latency = {label: _latency_ms(fp32.spec, fp32.encoder, models, samples, rounds)
               for label, samples in case["timed"].items()}
    build = json.loads((case["folder"] / "tflite-int8" / "manifest.json").read_text())["build"]
    table = {}
    for name, path in variants.items():
        if not isinstance(path, Path):
            table[name] = {"error": path}
            continue
        top = logits[name].argmax(1)
        table[name] = {
            "agreement": float((top == logits["fp32"].argmax(1)).mean()),
            "accuracy": float((top == case["labels"]).mean()),
            "bytes_ratio": path.stat().st_size / models["fp32"].stat().st_size,
            "integer_op_share": _integer_op_share(path),
            "latency_ms": {label: figures[name] for label, figures in latency.items()},
        }
    return {"test_samples": len(rows), "float_layers": case["float_layers"], "edgesdk_recipe": build["recipe"],
            "edgesdk_float_layers_added": build.get("float_layers_added", []),
            "edgesdk_float_layers_int8_weights": build.get("float_layers_int8_weights", []),
            "edgesdk_float_layers_dynamic_range": build.get("float_layers_dynamic_range", []),
            "edgesdk_searches": {key: build.get(key, []) for key in ("float_layer_search", "int8_weight_search")},
            "variants": table}


def _print(name: str, result: dict) -> None:
    print(f"\n{name} ({result['test_samples']} test samples; edgesdk's int8 bundle: {result['edgesdk_recipe']}, "
          f"{result['float_layers']} float layers, {len(result['edgesdk_float_layers_added'])} more for LiteRT, "
          f"{len(result['edgesdk_float_layers_dynamic_range'])} of them dynamic range, "
          f"{len(result['edgesdk_float_layers_int8_weights'])} with int8 weights, float compute)")
    labels = next(iter(v["latency_ms"] for v in result["variants"].values() if "latency_ms" in v))
    print_table(["variant", "agree", "acc", "bytes", "int ops", *(f"ms {k}" for k in labels)],
                [[name, f"{row['agreement']:.2%}", f"{row['accuracy']:.2%}", f"{row['bytes_ratio']:.1%}",
                  f"{row['integer_op_share']:.0%}", *(f"{row['latency_ms'][k]:.2f}" for k in labels)]
                 for name, row in result["variants"].items() if "error" not in row])
    for name, row in result["variants"].items():
        if "error" in row:
            print(f"{name}: not written ({row['error']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="latency rounds (20 timed runs per model each)")
    parser.add_argument("--results", default="tflite_int8", help="results name: bench/results/NAME.json")
    args = parser.parse_args()
    results: dict = {"cpu_flags": cpu_flags(), "threads": 2, "runtime": "ai-edge-litert (XNNPACK)", "models": {}}
    for name, make in (("digits_cnn", _image_case), ("minilm_sst2", _text_case)):
        with tempfile.TemporaryDirectory(prefix=f"tflite-int8-{name}-") as tmp:
            work = Path(tmp)
            results["models"][name] = bench_case(make(work), work, args.rounds)
        _print(name, results["models"][name])
    print(f"\nwrote {write_results(args.results, results)}")


if __name__ == "__main__":
    main()
