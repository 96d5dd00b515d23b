"""Full-integer LiteRT from edgesdk's calibration: its range method and its float layers.

ai-edge-quantizer's static recipe quantizes every op of a .tflite with activation ranges it is
given. Two things tie those to edgesdk's int8 calibration (the one the ONNX, OpenVINO and
TensorRT int8 bundles are built from):

- **Ranges**: every activation the recipe quantizes streams into edgesdk's histograms over
  edgesdk's calibration samples run through the float .tflite (padded token positions left
  out, as in calibration), and edgesdk's range method (``mse``, ``entropy``...) turns each
  into [lo, hi]. The .tflite's ops are not the ONNX graph's (LiteRT fuses activations into
  convolutions and quantizes every op, not only weight layers), so its tensors are its own;
  the method and the samples are the calibration's.
- **Float layers**: each layer edgesdk kept float is found in the .tflite by its weight (the
  op whose constant holds the same values, in any layout) and left unquantized by the recipe.
  When such an op's output is a model output, what reads it stays float too (LiteRT's XNNPACK
  cannot hand out an output that also feeds a quantize op).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesdk.calibration.observers import Histogram, unpadded
from edgesdk.calibration.ranges import activation_range

__all__ = ["StaticPlan", "float_layer_weights", "quantize_full_integer", "static_plan", "edgesdk_ranges"]

PIXEL_RANGE = (0.0, 255.0)

WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL", "CONV_2D_TRANSPOSE")


@dataclass
class StaticPlan:
    """ai-edge-quantizer's static int8 recipe with edgesdk's float layers left unquantized."""

    recipe: list[dict[str, Any]]
    float_layers: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def float_layer_weights(onnx_model: Path, float_layers: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each float layer's constant weight in the float ONNX model, by layer name."""
    import onnx
    from onnx import numpy_helper

    wanted = {f["node"]: f["layer"] for f in float_layers}
    if not wanted:
        return {}
    graph = onnx.load(str(onnx_model)).graph
    constants = {i.name: i for i in graph.initializer}
    return {wanted[n.name]: numpy_helper.to_array(constants[n.input[1]]) for n in graph.node
            if n.name in wanted and len(n.input) > 1 and n.input[1] in constants}


def static_plan(float_model: Path, weights: dict[str, np.ndarray]) -> StaticPlan:
    """The static int8 recipe for ``float_model`` keeping the ops that hold ``weights`` float."""
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    manager = recipe_manager.RecipeManager()
    manager.add_static_config(regex=".*", operation_name="*", activation_num_bits=8, weight_num_bits=8,
                              algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    model = tfl.read_model(str(float_model))
    prints = {layer: np.sort(w.ravel()) for layer, w in weights.items()}
    matched, keep_float = [], []
    for graph in model.subgraphs:
        float_tensors, outputs = set(), set(graph.outputs)
        for op in graph.operators:
            kind = tfl.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            layer = kind in WEIGHT_OPS and _layer_of(op, graph, model.buffers, prints)
            reads_float_output = bool(set(op.inputs) & float_tensors & outputs)
            if layer or reads_float_output:  # what reads a float model output stays float, and so on downstream
                matched += [layer] if layer else []
                float_tensors.update(op.outputs)
                outputs.update(op.outputs if reads_float_output else [])
                keep_float.append(tfl.get_op_scope(op, graph.tensors))
        if float_tensors & set(graph.outputs):
            keep_float.append(None)  # the model's outputs stay float
    for scope in keep_float:
        manager.add_quantization_config(regex=".*" if scope is None else "^" + re.escape(scope) + "$",
                                        operation_name="OUTPUT" if scope is None else "*",
                                        algorithm_key=AlgorithmName.NO_QUANTIZE)
    return StaticPlan(manager.get_quantization_recipe(), sorted(matched), sorted(set(weights) - set(matched)))


def _layer_of(op: Any, graph: Any, buffers: list, prints: dict[str, np.ndarray]) -> str | None:
    """The float layer whose weight ``op`` holds (same values, any layout), if any."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    if len(op.inputs) < 2 or op.inputs[1] < 0:
        return None
    weight = tfl.get_tensor_data(graph.tensors[op.inputs[1]], buffers)
    if weight is None:  # an activation, not a constant
        return None
    values = None
    for layer, sorted_weight in prints.items():
        if sorted_weight.size == weight.size:
            values = np.sort(weight.ravel()) if values is None else values
            if np.allclose(values, sorted_weight, rtol=1e-5, atol=1e-7):
                return layer
    return None


def edgesdk_ranges(float_model: Path, quantizer_ranges: dict[str, Any], signature: str,
                   samples: Sequence[dict[str, np.ndarray]], method: str, mask_arg: str | None) -> dict[str, Any]:
    """``quantizer_ranges`` (ai-edge-quantizer's calibration result) with each activation's
    min/max replaced by edgesdk's ``method`` range over ``samples`` run through ``signature`` of
    the float model; positions where ``mask_arg`` (the attention mask) is 0 are left out."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(float_model), experimental_preserve_all_tensors=True)
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    histograms = {name: Histogram() for name in quantizer_ranges if name in index}
    run = interpreter.get_signature_runner(signature)
    for sample in samples:
        run(**sample)
        mask = sample[mask_arg] if mask_arg else None
        for name, histogram in histograms.items():
            value = unpadded(interpreter.get_tensor(index[name]), mask)
            histogram.update(value[np.isfinite(value)])  # no int8 range holds an infinite mask value
    out = dict(quantizer_ranges)
    for name, histogram in histograms.items():
        if histogram.total:
            lo, hi = activation_range(histogram, method)
            out[name] = {**out[name], "min": np.array(lo, np.float32), "max": np.array(hi, np.float32)}
    return out


def quantize_full_integer(runner: Any, out: Path, encoder: Any, items: Sequence[Any], method: str,
                          weights: dict[str, np.ndarray]) -> StaticPlan:
    """Write the full-integer model of ``runner``'s float .tflite to ``out``: ranges by edgesdk's
    ``method`` over ``items`` (edgesdk's calibration samples), the ops holding ``weights`` (edgesdk's
    float layers) float, and the pixel input's range 0..255 (so int8 pixels are exact)."""
    from ai_edge_quantizer import quantizer

    float_model, spec = runner.model_path, runner.spec
    static = static_plan(float_model, weights)
    q = quantizer.Quantizer(str(float_model))
    q.load_quantization_recipe(static.recipe)
    samples = [runner.model_inputs(feeds, i) for _, feeds in encoder.batches(encoder.encode(items), 32)
               for i in range(len(next(iter(feeds.values()))))]
    mask = runner.inputs["attention_mask"][0] if "attention_mask" in runner.inputs else None
    ranges = edgesdk_ranges(float_model, q.calibrate({runner.signature: samples}), runner.signature, samples, method,
                            mask)
    pixels = runner.tensor_names[runner.inputs[spec.inputs[0].name][0]]
    if spec.kind == "image" and pixels in ranges:
        ranges[pixels] = {**ranges[pixels], "min": np.array(PIXEL_RANGE[0], np.float32),
                          "max": np.array(PIXEL_RANGE[1], np.float32)}
    Path(out).unlink(missing_ok=True)
    q.quantize(ranges, enable_progress_report=False).export_model(str(out))
    return static
