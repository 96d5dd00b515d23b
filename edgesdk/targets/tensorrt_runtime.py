"""TensorRT target: ONNX for TensorRT's parser plus a script that builds the engine on the GPU.

A TensorRT engine is specific to the GPU and TensorRT version it is built with, so the
bundle ships what builds it: the float ONNX (fp32, or fp16 built with the FP16 flag) or
the explicitly quantized ONNX (int8: symmetric int8 Q/DQ, the form TensorRT accepts, from
the same ranges and float layers as every other int8 bundle), and ``build_engine.py``,
which parses it with TensorRT's Python builder and sets the optimization profile from the
manifest's input shapes. Parity needs that engine on a GPU: where no GPU or no
``tensorrt`` package is present, parity is reported as skipped with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgesdk.runtime.runners import BUILD_SCRIPT

from .base import TARGETS, Target

__all__ = ["TensorRtTarget"]

_SCRIPT = '''"""Build this bundle's TensorRT engine on the GPU it will run on (edgesdk bundle).

Usage: python build_engine.py [--out ../NAME.engine] [--max-batch 32]

The engine is written beside the bundle folder (not into it: the bundle lists every file it holds).
Needs: pip install tensorrt (and an NVIDIA GPU with its driver).
"""

import argparse
import json
from pathlib import Path

import tensorrt as trt

HERE = Path(__file__).resolve().parent


def profile_shapes(spec, max_batch):
    """(min, opt, max) per input from the manifest: batch 1..max_batch, other dims from the spec."""
    pre = spec["preprocessing"]
    shapes = {}
    for t in spec["inputs"]:
        low, opt, high = [], [], []
        for i, dim in enumerate(t["shape"]):
            if isinstance(dim, int):
                low.append(dim); opt.append(dim); high.append(dim)
            elif i == 0:
                low.append(1); opt.append(1); high.append(max_batch)
            elif dim == "sequence":
                low.append(1); opt.append(pre["max_length"]); high.append(pre["max_length"])
            else:  # image height / width: any size, optimized for the model's own
                size = pre["size"][0 if dim == "height" else 1]
                low.append(1); opt.append(size); high.append(4 * size)
        shapes[t["name"]] = (low, opt, high)
    return shapes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(HERE.parent / f"{HERE.name}.engine"))
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    manifest = json.loads((HERE / "manifest.json").read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser_ = trt.OnnxParser(network, logger)
    if not parser_.parse((HERE / manifest["model_file"]).read_bytes()):
        raise SystemExit("\\n".join(str(parser_.get_error(i)) for i in range(parser_.num_errors)))
    config = builder.create_builder_config()
    if manifest["precision"] == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(manifest["spec"], args.max_batch).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SystemExit("TensorRT could not build the engine (see the log above)")
    out = Path(args.out).absolute()
    if out.parent == HERE.absolute():
        raise SystemExit(f"write the engine outside the bundle folder (not {out}): the loader refuses unlisted files")
    out.write_bytes(engine)
    print(f"wrote {HERE / args.out}")


if __name__ == "__main__":
    main()
'''


@TARGETS.register("tensorrt")
class TensorRtTarget(Target):
    name = "tensorrt"
    runtime = "tensorrt"
    extra = "tensorrt"
    distribution = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    model_file = "model.onnx"
    purposes = {"model.onnx": "the model TensorRT's ONNX parser builds the engine from",
                BUILD_SCRIPT: "builds the TensorRT engine on the GPU it will run on"}

    def build(self, artifacts: Any, precision: str, folder: Path) -> dict[str, Any]:
        notes: dict[str, Any] = {"engine": f"built on the target GPU by {BUILD_SCRIPT}"}
        if precision in ("fp32", "fp16"):
            shutil.copyfile(artifacts.onnx_fp32(), folder / self.model_file)
            notes["build_flags"] = ["FP16"] if precision == "fp16" else []
        else:
            calibration = artifacts.calibration()
            calibration.write_model(folder / self.model_file, symmetric=True)
            notes.update(int8="explicit quantization: symmetric int8 Q/DQ on activations (same ranges), int8 "
                              "per-channel weights, int8 embedding rows",
                         **self.write_ranges(calibration, folder, weights={}),
                         symmetric=calibration.symmetric()["summary"])
        (folder / BUILD_SCRIPT).write_text(_SCRIPT, encoding="utf-8")
        if _has_attention(folder / self.model_file):
            notes["parser"] = "TensorRT 10.14 or later: the model has ONNX Attention (opset 23)"
        return notes


def _has_attention(model: Path) -> bool:
    import onnx

    return any(n.op_type == "Attention" for n in onnx.load(str(model), load_external_data=False).graph.node)
