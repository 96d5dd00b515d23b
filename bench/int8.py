"""int8 bench: edgesdk's calibration against onnxruntime's and NNCF's, on several fine-tuned classifiers.

For each set (bench/finetune.py: MiniLM fine-tuned on SST-2, Banking77, SMS Spam, AG News;
``--e5 SET`` adds multilingual-e5-small on one), the float ONNX export is quantized by each
configuration from the same 300 calibration texts, each in its own process so its peak
memory is its own: edgesdk (``--methods``, default mse; it also judges its float layers on the
set's verification split, as ``--verify-on`` does), edgesdk with every layer int8 (the first
method, ``--int8-layers '*'``: its accuracy without float fallbacks), onnxruntime
``quantize_dynamic`` (Optimum's default CPU int8; MatMul and Gather, as its ``Attention`` rule
breaks ONNX Attention), onnxruntime ``quantize_static`` (defaults) and NNCF
``model_type=TRANSFORMER``. Agreement with fp32 and accuracy are measured on the test split
(never used by any configuration). Latency at batch 1, sequence 128, 2 threads is measured in
this process for all models side by side (rounds alternate the models, one session at a
time); the OpenVINO fp32 and edgesdk int8 IRs likewise. edgesdk's model is timed in the form
its onnx bundle ships (``edgesdk.targets.onnx_integer``) and its QDQ model in OpenVINO; its rows
also name the layers it kept out of static int8, those it gave a second int8 weight
(``residual_layers``), those of its whole float ones it stored as float16 (``float16_layers``)
and the weight rounding its judging chose (``gptq`` or ``nearest``). CPU flags are recorded.

Usage: python bench/int8.py [--sets sst2,banking77,sms_spam,ag_news] [--e5 sms_spam] [--rounds N] [--resume]
    [--results NAME]
Writes bench/results/int8.json (``--results int8_avx2``: bench/results/int8_avx2.json, for a run on
another kind of CPU beside the one the README quotes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, peak_rss_mb, print_table, write_results  # noqa: E402
from finetune import finetuned, load_set  # noqa: E402

PEERS = ("ort_quantize_dynamic", "ort_quantize_static", "nncf_transformer")
ALL_INT8 = "_all_int8"  # an edgesdk configuration with every layer int8


def _classifier(folder: Path):
    from edgesdk import TextClassifier

    return TextClassifier.from_pretrained(folder, max_length=128)


def _rows(folder: Path, split: list[tuple[str, int]]):
    encoder = _classifier(folder).encoder()
    return encoder, encoder.encode([t for t, _ in split]), np.array([y for _, y in split])


def _logits(model: Path, rows, encoder) -> np.ndarray:
    import onnx

    from edgesdk.calibration.onnx_run import onnx_logits

    return onnx_logits(onnx.load(str(model)), rows, encoder)


def _qdq(model: Path) -> Path:
    """Where an edgesdk configuration's QDQ model is kept beside its onnxruntime form."""
    return model.with_suffix(".qdq.onnx")


def quantize(config: str, folder: Path, set_name: str, fp32: Path, out: Path) -> dict[str, float]:
    """Quantize ``fp32`` into ``out`` with one configuration; returns its figures."""
    _, _, calibration, verification, _ = load_set(set_name)
    encoder, rows, labels = _rows(folder, calibration)
    start = time.perf_counter()
    figures: dict[str, float] = {}
    if config.startswith("edgesdk_"):
        import shutil

        import onnx

        from edgesdk.calibration import Judge, LayerChoice, calibrate
        from edgesdk.targets.onnx_integer import onnxruntime_form

        _, judge_rows, judge_labels = _rows(folder, verification)
        method = config.removeprefix("edgesdk_").removesuffix(ALL_INT8)
        choice = LayerChoice(int8_layers=("*",)) if config.endswith(ALL_INT8) else LayerChoice()
        result = calibrate(fp32, rows, labels, encoder, out.parent / f"work-{config}", method,
                           judge=Judge(judge_rows, judge_labels, "verification split"), choice=choice)
        shutil.copyfile(result.model, _qdq(out))  # what the OpenVINO bundle is built from
        onnx.save_model(onnxruntime_form(onnx.load(str(result.model))), str(out))  # what the onnx bundle ships
        figures.update(float_layers=len(result.float_layers), weight_blocks=len(result.blocks),
                       residual_layers=len(result.residual), float16_layers=len(result.halves),
                       met_budget=float(result.met_budget),
                       float_layer_names=[f["layer"] for f in result.float_layers],
                       residual_layer_names=[f["layer"] for f in result.figures["residual_weights"]["layers"]],
                       weight_rounding=result.figures["weight_rounding"]["method"])
    elif config == "ort_quantize_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Its default op list includes "Attention", which it takes for com.microsoft's and turns the
        # ONNX Attention of the opset-23 export into a QAttention that onnxruntime rejects.
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])
    elif config == "ort_quantize_static":
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.feeds = (feeds for _, feeds in encoder.batches(rows, 1))

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(str(fp32), str(out), Reader())  # onnxruntime's defaults
    elif config == "nncf_transformer":
        import nncf
        import onnx

        dataset = nncf.Dataset([feeds for _, feeds in encoder.batches(rows, 1)])
        model = nncf.quantize(onnx.load(str(fp32)), dataset, model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(rows))
        onnx.save_model(model, str(out))
    figures["calibration_s"] = time.perf_counter() - start
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def _feeds(names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
             "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    return {k: v for k, v in feeds.items() if k in names}


def _latency_ms(models: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median batch-1 latency per model; rounds alternate the models, and only one session exists
    at a time (onnxruntime's spinning threads would fight each other). ``ov:`` names run in OpenVINO."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            if name.startswith("ov:"):
                from edgesdk.runtime.runners import openvino_core

                config = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
                compiled = openvino_core().compile_model(str(path), "CPU", config)
                feeds = _feeds([p.get_any_name() for p in compiled.inputs])
                run = partial(compiled.create_infer_request().infer, feeds)
            else:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                run = partial(session.run, None, _feeds([i.name for i in session.get_inputs()]))
            for i in range(25):
                start = time.perf_counter()
                run()
                if i >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
            run = None
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_set(set_name: str, base: str, methods: list[str], rounds: int, work: Path) -> dict[str, dict]:
    from edgesdk.converters.export import export_onnx

    folder = finetuned(set_name, base)
    fp32 = export_onnx(_classifier(folder), work / "fp32.onnx")
    models, figures = {"fp32": fp32}, {"fp32": {}}
    for config in (*(f"edgesdk_{m}" for m in methods), f"edgesdk_{methods[0]}{ALL_INT8}", *PEERS):
        out = work / f"{config}.onnx"
        done = subprocess.run([sys.executable, __file__, "--one", config, str(folder), set_name, str(fp32), str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{set_name}/{config} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        models[config], figures[config] = out, json.loads(done.stdout.strip().splitlines()[-1])
    _, _, _, _, test = load_set(set_name)
    encoder, rows, labels = _rows(folder, test)
    reference = _logits(fp32, rows, encoder)
    timed = dict(models)
    if f"edgesdk_{methods[0]}" in models:
        timed.update({"ov:fp32": fp32, f"ov:edgesdk_{methods[0]}": _qdq(models[f"edgesdk_{methods[0]}"])})
    latency = _latency_ms(timed, rounds)
    table = {}
    for name, path in models.items():
        logits = reference if name == "fp32" else _logits(path, rows, encoder)
        table[name] = {
            "bytes_ratio": path.stat().st_size / fp32.stat().st_size,
            "accuracy": float((logits.argmax(1) == labels).mean()),
            "accuracy_delta": float((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()),
            "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
            "latency_ms": latency[name], "latency_ratio": latency[name] / latency["fp32"], **figures[name],
        }
        if f"ov:{name}" in latency:
            table[name]["openvino_latency_ratio"] = latency[f"ov:{name}"] / latency["ov:fp32"]
    return {"test_samples": len(rows), "configs": table}


def _print(name: str, result: dict) -> None:
    print(f"\n{name} ({result['test_samples']} test texts)")
    print_table(["config", "bytes", "acc", "Δacc", "agree", "ms", "×fp32", "OV ×", "calib s", "peak MB", "float",
                 "residual"],
                [[config, f"{row['bytes_ratio']:.1%}", f"{row['accuracy']:.2%}", f"{row['accuracy_delta']:+.2%}",
                  f"{row['agreement']:.2%}", f"{row['latency_ms']:.2f}", f"{row['latency_ratio']:.2f}",
                  f"{row['openvino_latency_ratio']:.2f}" if "openvino_latency_ratio" in row else "",
                  f"{row.get('calibration_s', 0):.1f}", f"{row.get('peak_rss_mb', 0):.0f}",
                  f"{row.get('float_layers', 0):.0f}", f"{row.get('residual_layers', 0):.0f}"]
                 for config, row in result["configs"].items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="sst2,banking77,sms_spam,ag_news")
    parser.add_argument("--e5", default="sms_spam", help="set to also run with multilingual-e5-small ('' for none)")
    parser.add_argument("--methods", default="mse", help="edgesdk range methods (mse, minmax, percentile, entropy)")
    parser.add_argument("--rounds", type=int, default=4, help="latency rounds (20 timed runs per model each)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the other sets of the results file (measured on a CPU with the same flags)")
    parser.add_argument("--results", default="int8", help="results name: bench/results/NAME.json")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        config, folder, set_name, fp32, out = args.one
        print(json.dumps(quantize(config, Path(folder), set_name, Path(fp32), Path(out))))
        return
    flags = cpu_flags()
    runs = [(s, "minilm") for s in args.sets.split(",") if s] + ([(args.e5, "e5")] if args.e5 else [])
    results: dict[str, dict] = {"cpu_flags": flags}
    earlier = Path(__file__).resolve().parent / "results" / f"{args.results}.json"
    if args.resume and earlier.is_file() and json.loads(earlier.read_text())["cpu_flags"] == flags:
        results = json.loads(earlier.read_text())
    for set_name, base in runs:
        with tempfile.TemporaryDirectory() as tmp:
            results[f"{base}-{set_name}"] = bench_set(set_name, base, args.methods.split(","), args.rounds, Path(tmp))
        _print(f"{base}-{set_name}", results[f"{base}-{set_name}"])
        write_results(args.results, results)  # after each set, so a stopped run keeps the sets it finished
    print(f"\nCPU flags: {' '.join(flags)}; wrote {write_results(args.results, results)}")


if __name__ == "__main__":
    main()
