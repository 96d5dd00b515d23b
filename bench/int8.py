"""int8 bench: edgesdk's calibration (four range methods) against onnxruntime's and NNCF's.

A MiniLM sentiment classifier fine-tuned on SST-2 (bench/sst2_minilm.py, trained on first
use) is exported once; each configuration quantizes that ONNX model from the same 300
calibration sentences (SST-2 train lines the classifier was not trained on), in its own
process so its peak memory is its own. Accuracy and top-1 agreement with fp32 are measured
on SST-2 dev sentences; latency at batch 1, sequence 128, 2 threads is measured in this
process for all models side by side (rounds that alternate the models).

Usage: python bench/int8.py [--dev N] [--rounds N]    Writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_minilm import minilm_sst2, sst2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("minmax", "percentile", "entropy", "mse")
BASELINES = ("ort_quantize_static", "nncf_transformer")
CALIBRATION = slice(20000, 20300)  # after the 16,000 training sentences


def _classifier():
    from edgesdk import TextClassifier

    return TextClassifier.from_pretrained(minilm_sst2(), max_length=128)


def _rows(split: str, part: slice):
    data = sst2(split)[part]
    encoder = _classifier().encoder()
    return encoder, encoder.encode([t for t, _ in data]), np.array([y for _, y in data])


def _logits(model: Path, rows, encoder) -> np.ndarray:
    from edgesdk.calibration.calibrate import onnx_logits

    return onnx_logits(model, rows, encoder)


def quantize(config: str, fp32: Path, out: Path) -> dict[str, float]:
    """Quantize ``fp32`` into ``out`` with one configuration; returns its figures."""
    encoder, rows, labels = _rows("train", CALIBRATION)
    start = time.perf_counter()
    figures: dict[str, float] = {}
    if config in METHODS:
        import shutil

        from edgesdk.calibration import calibrate

        result = calibrate(fp32, rows, labels, encoder, out.parent / f"work-{config}", config)
        shutil.copyfile(result.model, out)
        figures.update(float_layers=len(result.float_layers), met_budget=float(result.met_budget))
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
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def _latency_ms(models: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median batch-1 latency per model; rounds alternate the models, and only one session
    exists at a time (onnxruntime's default spinning threads would fight each other)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
             "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, path in models.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for i in range(25):
                start = time.perf_counter()
                session.run(None, feeds)
                if i >= 5:
                    times[name].append((time.perf_counter() - start) * 1000)
            del session
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=int, default=2000, help="SST-2 dev sentences for accuracy")
    parser.add_argument("--rounds", type=int, default=4, help="latency rounds (20 timed runs per model each)")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "FP32", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        config, fp32, out = args.one
        print(json.dumps(quantize(config, Path(fp32), Path(out))))
        return
    from edgesdk.converters.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(_classifier(), work / "fp32.onnx")
        tokenizer_bytes = (minilm_sst2() / "tokenizer.json").stat().st_size
        models, figures = {"fp32": fp32}, {"fp32": {}}
        for config in (*METHODS, *BASELINES):
            out = work / f"{config}.onnx"
            done = subprocess.run([sys.executable, __file__, "--one", config, str(fp32), str(out)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{config} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            models[config], figures[config] = out, json.loads(done.stdout.strip().splitlines()[-1])
        encoder, rows, labels = _rows("dev", slice(0, args.dev))
        reference = _logits(fp32, rows, encoder)
        latency = _latency_ms(models, args.rounds)
        results: dict[str, float] = {}
        print(f"{'config':<22}{'MB':>8}{'bytes':>8}{'acc':>8}{'Δacc':>8}{'agree':>8}{'ms':>8}{'×fp32':>7}"
              f"{'calib s':>9}{'peak MB':>9}{'float':>7}")
        for name, path in models.items():
            logits = reference if name == "fp32" else _logits(path, rows, encoder)
            row = {
                "bundle_mb": (path.stat().st_size + tokenizer_bytes) / 1e6,
                "bytes_ratio": (path.stat().st_size + tokenizer_bytes) / (fp32.stat().st_size + tokenizer_bytes),
                "accuracy": float((logits.argmax(1) == labels).mean()),
                "accuracy_delta": float((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()),
                "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "latency_ms": latency[name],
                "latency_ratio": latency[name] / latency["fp32"],
                **figures[name],
            }
            results.update({f"{name}_{k}": v for k, v in row.items()})
            print(f"{name:<22}{row['bundle_mb']:>8.1f}{row['bytes_ratio']:>8.1%}{row['accuracy']:>8.2%}"
                  f"{row['accuracy_delta']:>+8.2%}{row['agreement']:>8.2%}{row['latency_ms']:>8.2f}"
                  f"{row['latency_ratio']:>7.2f}{row.get('calibration_s', 0):>9.1f}{row.get('peak_rss_mb', 0):>9.0f}"
                  f"{row.get('float_layers', 0):>7.0f}")
    results["dev_samples"] = len(rows)
    out = ROOT / "bench" / "results" / "int8.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
