"""Full-integer LiteRT from edgesdk's calibration: its range method and its float layers.

ai-edge-quantizer's static recipe quantizes every op of a .tflite with activation ranges it is
given. Two things tie those to edgesdk's int8 calibration (the one the ONNX, OpenVINO and
TensorRT int8 bundles are built from):

- **Ranges**: every activation the recipe quantizes streams into edgesdk's histograms over
  edgesdk's calibration samples run through every signature of the float .tflite (padded
  token positions left out, as in calibration), and edgesdk's range method (``mse``,
  ``entropy``...) turns each into [lo, hi]. The .tflite's ops are not the ONNX graph's
  (LiteRT fuses activations into convolutions; an int8 op has an int8 output), so its tensors
  are its own; the method and the samples are the calibration's.
- **Smoothing**: where calibration migrated activation outliers into weights (SmoothQuant), the
  same scales are written into the PyTorch model that the float .tflite quantized here is
  converted from (``litert_smoothing``; ``TfliteTarget``), so LiteRT's int8 layers read the
  inputs the ONNX int8 layers read.
- **Which ops**: image models every op; text models only the layers with weights (every op
  int8 cost MiniLM 13 points of agreement, the weight layers alone about three).
- **Float layers**: each layer edgesdk kept float is found in the .tflite by its weight (the
  op whose constant holds the same values in any layout, or for a fully-connected layer the
  same matrix up to one factor per input channel: LiteRT folds a LayerNorm's scale into the
  layer it feeds) and stays float, its weight too (stored int8, weight-only, they cost the
  demo's topic MiniLM one more answer of 722 and its gate).
- **Outputs**: the ops writing the model's outputs (logits, probabilities, top-k) compute in
  float, and so does what reads them (``static_plan`` says why).
- **More float layers where LiteRT needs them**: a LiteRT int8 op also writes an int8 output,
  where edgesdk's ONNX int8 keeps a quantized layer's output float. On the demo's topic MiniLM
  the early layers' query/key/value outputs cost 9 answers of 722 that way, which no range
  method recovered, so the target keeps more of edgesdk's most sensitive layers out of static
  int8 when the budget needs them (``TfliteTarget``): dynamic range where it keeps the budget
  (an int8 input quantized at run time and a float output, as the ONNX int8 layer's), float
  otherwise (``_recipe``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edgesdk.calibration.observers import Histogram, unpadded
from edgesdk.calibration.qdq import EMBEDDING_MIN_ROWS
from edgesdk.calibration.ranges import activation_range

__all__ = ["DYNAMIC_RANGE", "WEIGHT_ONLY", "FullInteger", "StaticPlan", "builtin_op_names", "float_layer_weights",
           "quantize_full_integer", "static_plan", "edgesdk_ranges"]

PIXEL_RANGE = (0.0, 255.0)

# the forms of int8 weights a layer out of static int8 may take (``_recipe``)
WEIGHT_ONLY = "weight_only"  # dequantized when loaded: float compute
DYNAMIC_RANGE = "dynamic_range"  # the kernel quantizes the layer's input at run time; its output is float

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


def static_plan(float_model: Path, weights: dict[str, np.ndarray], weight_layers_only: bool = False) -> StaticPlan:
    """The static int8 recipe for ``float_model`` keeping the ops that hold ``weights`` float.

    Ops writing a model output stay float, and so does what reads them: LiteRT's XNNPACK
    hands out garbage for an int8 output that another op also reads (measured: the digits
    CNN's int8 probabilities, also read by its top-k, came out wrong while its logits were
    right), and a dequantized output that a float op reads fails ("Tensor data is null").
    ``weight_layers_only``: only ops with a constant weight (fully connected, convolutions) get
    int8 activations; every other op stays float. Embedding tables of ``EMBEDDING_MIN_ROWS`` rows
    or more are int8 (per row; ``litert_smoothing`` column-scales them first), their rows looked up
    into float; smaller ones (token types) stay float, as in the ONNX int8: every token reads
    their few rows, so a rounding error there is one bias on all of them (measured: the demo's
    topic MiniLM's two-row token-type table, per-row int8, cost 1.0 expected changed answer of
    722, more than its 2450-row word table).
    """
    return _recipe(_op_table(float_model, weights), set(weights), weight_layers_only)


@dataclass(frozen=True)
class _Op:
    """One op of a .tflite subgraph, as the recipe sees it."""

    kind: str
    scope: str
    weighted: bool  # it reads a constant weight (fully connected, convolution)
    large_table: bool  # an embedding lookup of a table of EMBEDDING_MIN_ROWS rows or more
    layer: str | None  # the edgesdk layer whose weight that is, if any
    inputs: frozenset[int]
    outputs: tuple[int, ...]


def _op_table(float_model: Path, weights: dict[str, np.ndarray]) -> list[tuple[list[_Op], set[int]]]:
    """Each subgraph's ops (weights matched to the layers of ``weights``) and its outputs."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(str(float_model))
    prints = _weight_prints(weights)
    table = []
    for graph in model.subgraphs:
        ops = []
        for op in graph.operators:
            kind = tfl.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            weight = _constant_weight(op, graph, model.buffers) if kind in WEIGHT_OPS else None
            lookup_table = _constant_weight(op, graph, model.buffers) if kind == "EMBEDDING_LOOKUP" else None
            ops.append(_Op(kind, tfl.get_op_scope(op, graph.tensors), weight is not None,
                           lookup_table is not None and lookup_table.shape[0] >= EMBEDDING_MIN_ROWS,
                           None if weight is None else _matching_layer(weight, prints),
                           frozenset(op.inputs), tuple(op.outputs)))
        table.append((ops, set(graph.outputs)))
    return table


def _recipe(table: list[tuple[list[_Op], set[int]]], float_layers: set[str], weight_layers_only: bool,
            int8_weights: Mapping[str, str] = MappingProxyType({})) -> StaticPlan:
    """``static_plan``'s recipe from an op table, the ops of ``float_layers`` kept out of static int8:
    float, or those of them in ``int8_weights`` with int8 weights per output channel in its form:
    ``WEIGHT_ONLY`` (computing in float) or ``DYNAMIC_RANGE`` (the input quantized at run time, the
    output float)."""
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    matched, quantized, keep_float = set(), [], []
    for ops, graph_outputs in table:
        float_tensors, outputs = set(), set(graph_outputs)
        for op in ops:
            layer = op.layer if op.layer in float_layers else None
            reads_float_output = bool(op.inputs & float_tensors & outputs)
            if layer or reads_float_output or set(op.outputs) & graph_outputs:
                # model outputs are written in float, and what reads a float output stays float, downstream too
                matched.update([layer] if layer else [])
                float_tensors.update(op.outputs)
                outputs.update(op.outputs if reads_float_output else [])
                keep_float.append(op.scope)
            elif op.weighted:
                quantized.append((op.kind, op.scope))
        if float_tensors & graph_outputs:
            keep_float.append(None)  # the model's outputs stay float
    if weight_layers_only:  # large embedding tables: int8 rows, looked up into float
        for scope in sorted({op.scope for ops, _ in table for op in ops if op.large_table}):
            manager.add_weight_only_config(regex=_exactly(scope), operation_name="EMBEDDING_LOOKUP", num_bits=8)
        for kind, scope in quantized:
            manager.add_static_config(regex=_exactly(scope), operation_name=kind, **_INT8)
    else:
        manager.add_static_config(regex=".*", operation_name="*", **_INT8)
    for scope in keep_float:
        manager.add_quantization_config(regex=".*" if scope is None else _exactly(scope),
                                        operation_name="OUTPUT" if scope is None else "*",
                                        algorithm_key=AlgorithmName.NO_QUANTIZE)
    for op in (op for ops, _ in table for op in ops if op.layer in float_layers and op.layer in int8_weights):
        add = manager.add_dynamic_config if int8_weights[op.layer] == DYNAMIC_RANGE else manager.add_weight_only_config
        add(regex=_exactly(op.scope), operation_name=op.kind, num_bits=8)
    return StaticPlan(manager.get_quantization_recipe(), sorted(matched), sorted(float_layers - matched))


_INT8 = {"activation_num_bits": 8, "weight_num_bits": 8}


def _attends(table: list[tuple[list[_Op], set[int]]]) -> bool:
    """Whether a model multiplies two activations (attention's ``BATCH_MATMUL`` without a constant
    weight: ViT, DeiT): then, as in text transformers, its softmax, LayerNorm, GELU and attention
    products stay float. On a tiny random ViT (400 images) every op int8 changed 89 answers (72
    expected) with calibration's float layers; int8 on its weight layers alone changed 2 (1.2)."""
    return any(op.kind == "BATCH_MATMUL" and not op.weighted for ops, _ in table for op in ops)


def _exactly(scope: str) -> str:
    """A recipe regex matching one op scope."""
    return "^" + re.escape(scope) + "$"


def _constant_weight(op: Any, graph: Any, buffers: list) -> np.ndarray | None:
    """The constant weight ``op`` reads (its second input), or None when that is an activation."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    if len(op.inputs) < 2 or op.inputs[1] < 0:
        return None
    return tfl.get_tensor_data(graph.tensors[op.inputs[1]], buffers)


def builtin_op_names() -> dict[int, str]:
    """LiteRT's builtin op codes to their names (``FULLY_CONNECTED``...), from its own schema."""
    from ai_edge_litert import schema_py_generated as schema

    return {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


@dataclass(frozen=True)
class _WeightPrint:
    """What identifies a layer's weight in the .tflite: its values sorted (any layout) and its
    input channels as unit columns, where LiteRT folds one factor per input channel into the
    weight: a LayerNorm's scale into the fully-connected layer it feeds (a matrix: both
    orientations), an image model's input normalization into its first convolution (ONNX's
    (out, in, kh, kw) read as (out * kh * kw, in))."""

    values: np.ndarray
    unit_columns: tuple[np.ndarray, ...]


def _weight_prints(weights: dict[str, np.ndarray]) -> dict[str, _WeightPrint]:
    def columns(w: np.ndarray) -> tuple[np.ndarray, ...]:
        if w.ndim == 2:
            return _unit_columns(w), _unit_columns(w.T)
        return (_unit_columns(np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])),) if w.ndim == 4 else ()

    return {layer: _WeightPrint(np.sort(w.ravel()), columns(w)) for layer, w in weights.items()}


def _tflite_columns(weight: np.ndarray) -> list[np.ndarray]:
    """A .tflite weight's input channels as unit columns: a fully-connected (out, in) one's; a
    convolution's (out, kh, kw, in), or a depthwise one's (1, kh, kw, out), as (out * kh * kw, in)."""
    if weight.ndim == 2:
        return [_unit_columns(weight)]
    if weight.ndim != 4:
        return []
    return [_unit_columns(weight.reshape(-1, weight.shape[-1])),
            _unit_columns(np.transpose(weight, (3, 1, 2, 0)).reshape(-1, weight.shape[0]))]


def _matching_layer(weight: np.ndarray, prints: dict[str, _WeightPrint]) -> str | None:
    """The layer of ``prints`` whose weight ``weight`` is, in LiteRT's layout."""
    values = None
    for layer, p in prints.items():
        if p.values.size == weight.size:
            values = np.sort(weight.ravel()) if values is None else values
            if np.allclose(values, p.values, rtol=1e-5, atol=1e-7):
                return layer
    candidates = _tflite_columns(weight)
    for layer, p in prints.items():
        if any(c.shape == t.shape and np.allclose(c, t, rtol=1e-4, atol=1e-6) for c in p.unit_columns
               for t in candidates):
            return layer
    return None


def _unit_columns(weight: np.ndarray) -> np.ndarray:
    """``weight`` with each column divided by its largest-magnitude entry (sign included)."""
    pivots = np.take_along_axis(weight, np.abs(weight).argmax(0)[None], 0)
    return weight / np.where(pivots == 0, 1, pivots)


def edgesdk_ranges(float_model: Path, quantizer_ranges: dict[str, Any], samples: dict[str, list[dict[str, np.ndarray]]],
                   method: str, mask_arg: str | None) -> dict[str, Any]:
    """``quantizer_ranges`` (ai-edge-quantizer's calibration result) with each activation's
    min/max replaced by edgesdk's ``method`` range over ``samples`` (per signature) run through
    the float model; positions where ``mask_arg`` (the attention mask) is 0 are left out."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer.utils.tfl_interpreter_utils import get_signature_main_subgraph_index

    interpreter = Interpreter(model_path=str(float_model), experimental_preserve_all_tensors=True, num_threads=2)
    histograms: dict[str, Histogram] = {}
    for signature, signature_samples in samples.items():
        subgraph = get_signature_main_subgraph_index(interpreter, signature)
        index = {t["name"]: t["index"] for t in interpreter.get_tensor_details(subgraph)
                 if t["name"] in quantizer_ranges}  # tensor names are unique across signatures
        histograms.update({name: Histogram() for name in index})
        run = interpreter.get_signature_runner(signature)
        for sample in signature_samples:
            run(**sample)
            mask = sample[mask_arg] if mask_arg else None
            for name, i in index.items():
                value = unpadded(interpreter.get_tensor(i, subgraph), mask)
                histograms[name].update(value[np.isfinite(value)])  # no int8 range holds an infinite mask value
    out = dict(quantizer_ranges)
    for name, histogram in histograms.items():
        if histogram.total:
            lo, hi = activation_range(histogram, method)
            out[name] = {**out[name], "min": np.array(lo, np.float32), "max": np.array(hi, np.float32)}
    return out


class FullInteger:
    """Full-integer models of one float .tflite from edgesdk's calibration: its ops matched to
    edgesdk's layers and its ranges taken once, then written with any of those layers kept float.

    ``runner`` runs the float model; ``items`` are edgesdk's calibration samples (every signature
    sees every sample, cut or padded to its length) and ``method`` its range method; ``weights``
    every layer that may be kept float, by name; ranges are taken for the ops quantized when
    only ``float_layers`` are float (keep at least those float in ``write``). The pixel input's
    range is 0..255, so int8 pixels are exact. ``weight_layers_only`` (``static_plan``'s; by
    default for text models and for image models with attention, ``_attends``) quantizes only the
    layers with weights.
    """

    def __init__(self, runner: Any, encoder: Any, items: Sequence[Any], method: str, weights: dict[str, np.ndarray],
                 float_layers: set[str], weight_layers_only: bool | None = None) -> None:
        from ai_edge_quantizer import quantizer

        self.float_model, spec = runner.model_path, runner.spec
        self.table = _op_table(self.float_model, weights)
        self.weight_layers_only = (spec.kind == "text" or _attends(self.table) if weight_layers_only is None
                                   else weight_layers_only)
        q = quantizer.Quantizer(str(self.float_model))
        q.load_quantization_recipe(_recipe(self.table, float_layers, self.weight_layers_only).recipe)
        rows = encoder.encode(items)
        samples = {signature: [runner.model_inputs(feeds, i, signature) for _, feeds in encoder.batches(rows, 32)
                               for i in range(len(next(iter(feeds.values()))))] for signature in runner.signatures}
        mask = runner.inputs["attention_mask"][0] if "attention_mask" in runner.inputs else None
        tensors = q.calibrate({signature: found[:1] for signature, found in samples.items()})  # which need ranges
        self.ranges = edgesdk_ranges(self.float_model, tensors, samples, method, mask)  # edgesdk's, all samples
        pixels = runner.tensor_names[runner.inputs[spec.inputs[0].name][0]]
        if spec.kind == "image" and pixels in self.ranges:
            self.ranges[pixels] = {**self.ranges[pixels], "min": np.array(PIXEL_RANGE[0], np.float32),
                                   "max": np.array(PIXEL_RANGE[1], np.float32)}

    def write(self, out: Path, float_layers: set[str], int8_weights: Mapping[str, str] = MappingProxyType({})
              ) -> StaticPlan:
        """Write the model with the ops of ``float_layers`` out of static int8 to ``out``: float, or
        those of them in ``int8_weights`` with int8 weights in its form (``_recipe``)."""
        from ai_edge_quantizer import quantizer

        static = _recipe(self.table, float_layers, self.weight_layers_only, int8_weights)
        q = quantizer.Quantizer(str(self.float_model))
        q.load_quantization_recipe(static.recipe)
        Path(out).unlink(missing_ok=True)
        q.quantize(self.ranges, enable_progress_report=False).export_model(str(out))
        return static


def quantize_full_integer(runner: Any, out: Path, encoder: Any, items: Sequence[Any], method: str,
                          weights: dict[str, np.ndarray], weight_layers_only: bool | None = None) -> StaticPlan:
    """Write the full-integer model of ``runner``'s float .tflite to ``out`` with the ops holding
    ``weights`` (edgesdk's float layers) float; the rest as ``FullInteger``."""
    full = FullInteger(runner, encoder, items, method, weights, set(weights), weight_layers_only)
    return full.write(out, set(weights))
