"""Write int8 ONNX models: QDQ around weight MatMul/Gemm/Conv nodes and after int8 Convs,
int8 embedding tables.

Activations are uint8 with edgesdk's ranges (asymmetric, per tensor); weights are int8,
symmetric, per output channel, scaled so that no adjacent pair of them can overflow the int16 sums
of x86 integer kernels (``_quantize_weight``), rounded to nearest unless calibration gives them
rounded against their inputs (``rounding.py``); Conv and Gemm biases int32. The rewrite is edgesdk's own
(onnx protobuf edits), so no quantizer's private API is involved. Large ``Gather`` tables indexed by a model
input (the token embedding) become int8 with one scale per row and one per column, gathered
and scaled at run time, so the table is stored at a quarter of its bytes and never
dequantized whole.

What stays float, and why (measured on MiniLM with onnxruntime on an AVX2 CPU): attention's
activation x activation MatMuls, Softmax, LayerNorm and GELU gain no int8 kernel worth
their Q/DQ overhead and are where accuracy goes; only MatMul/Gemm/Conv with constant
weights are quantized.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

import numpy as np

__all__ = ["QuantNode", "quantizable_nodes", "qdq_model", "quantize_embeddings", "embedding_columns",
           "activation_qparams", "prune_unused", "readers", "int8_weight_blocks", "blockable", "QUANT_OPS",
           "WEIGHT_BLOCK", "EMBEDDING_MIN_ROWS", "conv_outputs", "residual_able", "RESIDUAL_SUFFIX",
           "float16_weights", "float16_layers"]

QUANT_OPS = ("MatMul", "Gemm", "Conv")
EMBEDDING_MIN_ROWS = 256  # smaller tables (token types) stay float: every token reads their few rows, few bytes
WEIGHT_BLOCK = 32
PAIR_LIMIT = 127.5  # the scaled same-sign sum of two adjacent int8 weights (``_quantize_weight``)
BLOCKED_DQ_OPSET = 21  # DequantizeLinear's block_size
RESIDUAL_SUFFIX = "_residual"  # names what a layer's second int8 weight adds (``_QdqRewrite.residual``)


@dataclass(frozen=True)
class QuantNode:
    """A node with a constant weight: its ONNX name, the PyTorch layer it came from, its input."""

    node: str
    layer: str
    op: str
    activation: str


def layer_name(node) -> str:
    """The PyTorch module a node was exported from (its name scopes end with module, op)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in prop.value.strip("[]").replace("'", "").split(", ") if s]
            if len(scopes) >= 2:
                return scopes[-2].removeprefix("model.")
    return node.name


def quantizable_nodes(model) -> list[QuantNode]:
    """MatMul/Gemm/Conv nodes of ``model`` (an onnx.ModelProto) whose weight is a constant."""
    constants = {i.name for i in model.graph.initializer}
    return [
        QuantNode(n.name, layer_name(n), n.op_type, n.input[0])
        for n in model.graph.node
        if n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1] in constants and n.input[0] not in constants
    ]


def quantize_embeddings(model) -> list[str]:
    """Replace float Gather tables with int8 rows, in place; returns their names.

    Each column is first divided by its largest magnitude (embedding tables carry a few outlier
    dimensions, and one scale per row would spend its levels on them), then each row gets its
    own scale: ``table ~= q * row_scale * column_scale``, gathered then scaled, so the table is
    never dequantized whole. Tables already int8 are left as they are, so a model can carry its
    int8 tables into every later ``qdq_model`` (a trial) without paying for them again.
    """
    import onnx
    from onnx import helper, numpy_helper

    tables = {i.name: i for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[0] >= EMBEDDING_MIN_ROWS
              and i.dims[1] > 1}  # an int8 table's row scales are (rows, 1)
    graph_inputs = {i.name for i in model.graph.input}
    done, nodes = [], []
    for node in model.graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        # only tables gathered by a model input (token ids): position tables are small and read by every token
        if node.op_type != "Gather" or node.input[0] not in tables or axis != 0 or node.input[1] not in graph_inputs:
            nodes.append(node)
            continue
        name, out = node.input[0], node.output[0]
        if name not in done:
            w = numpy_helper.to_array(tables[name]).astype(np.float32)
            columns = embedding_columns(w)[None]
            rows = np.maximum(np.abs(w / columns).max(1, keepdims=True), 1e-12) / 127
            q = np.clip(np.round(w / columns / rows), -127, 127).astype(np.int8)
            model.graph.initializer.remove(tables[name])
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}.int8"),
                                            numpy_helper.from_array(rows.astype(np.float32), f"{name}.scale"),
                                            numpy_helper.from_array(columns[0].astype(np.float32), f"{name}.columns")])
            done.append(name)
        nodes += [
            helper.make_node("Gather", [f"{name}.int8", node.input[1]], [f"{out}.int8"], name=f"{node.name}.int8"),
            helper.make_node("Cast", [f"{out}.int8"], [f"{out}.float"], to=onnx.TensorProto.FLOAT,
                             name=f"{node.name}.cast"),
            helper.make_node("Gather", [f"{name}.scale", node.input[1]], [f"{out}.scale"], name=f"{node.name}.scale"),
            helper.make_node("Mul", [f"{out}.float", f"{out}.scale"], [f"{out}.rows"], name=f"{node.name}.rows"),
            helper.make_node("Mul", [f"{out}.rows", f"{name}.columns"], [out], name=f"{node.name}.dequantize"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def embedding_columns(table: np.ndarray) -> np.ndarray:
    """One scale per column of an embedding table: its largest magnitude, which the table is
    divided by before one int8 scale per row is taken (``quantize_embeddings``)."""
    return np.maximum(np.abs(table).max(0), 1e-12)


def _activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point for an activation over [lo, hi]: uint8 over a range that holds 0,
    or int8 over [-m, m] with zero point 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        m = max(-lo, hi)
        scale = m / 127 if m > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return np.array(scale, np.float32), np.array(np.clip(np.round(-lo / scale), 0, 255), np.uint8)


def _weight_axis(node, rank: int) -> int:
    """The output-channel axis of a node's weight: MatMul's last, Gemm's by transB, Conv's first."""
    if node.op_type == "MatMul":
        return rank - 1
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 0


def _kernel_rows(node, w: np.ndarray) -> np.ndarray | None:
    """``w`` as (output channel, inputs) in the order onnxruntime's integer kernels read one output
    channel's inputs: a MatMul or Gemm weight's input rows; a Conv's (kernel rows, columns, input
    channels of its group), as onnxruntime's channels-last QLinearConv flattens them (a Conv of one
    input channel pairs neighbouring kernel positions). None for a depthwise Conv (several groups
    of one input channel each), whose kernel sums in int32 from the start."""
    if node.op_type in ("MatMul", "Gemm") and w.ndim == 2:
        return w if _weight_axis(node, 2) == 0 else w.T
    if node.op_type != "Conv" or w.ndim < 3:
        return None
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    if groups > 1 and w.shape[1] == 1:
        return None
    return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)


def _pair_peak(rows: np.ndarray) -> np.ndarray:
    """Per row: the largest magnitude of the same-sign part of an adjacent pair (2i, 2i+1) of it."""
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)))
    pairs = rows.reshape(rows.shape[0], -1, 2)
    return np.maximum(np.maximum(pairs, 0).sum(2), np.maximum(-pairs, 0).sum(2)).max(1)


def _quantize_weight(w: np.ndarray, axis: int, kernel_rows: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``w ~= q * scale`` along ``axis``.

    With ``kernel_rows`` (``_kernel_rows`` of ``w``), an output channel whose adjacent pairs of
    inputs could overflow int16 gets the larger scale that keeps each pair's same-sign int8 values
    at most 128 in magnitude (their scaled sum at most 127.5, so at most 128 once rounded).
    onnxruntime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2; AVX-512 without VNNI) add
    each such pair's products in saturating int16 (``vpmaddubsw``), so a pair of uint8 activations
    near 255 against two weights near 127 was clipped there and not on a VNNI CPU: the int8 model
    answered differently by CPU. With 255 x 128 = 32640 no pair saturates on any input, and every
    CPU computes the QDQ model's exact integers (MiniLM AG News, every layer int8, 2000 texts on an
    AVX2 CPU: 99.70% agreement with fp32 against 99.55% before, where the exact QDQ model gave
    99.70%; 80% of the output channels took a larger scale, the largest 1.95x. The demo's digit
    CNN, every layer int8, 1497 images: 95.72% against 99.73% computed exactly, 65 answers apart,
    most from its first Conv of one input channel, whose neighbouring kernel positions pair up;
    bounded, 99.87% both ways, none apart).
    """
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    magnitude = np.abs(w).max(axis=reduce)
    if kernel_rows is not None:
        magnitude = np.maximum(magnitude, _pair_peak(kernel_rows) * (127 / PAIR_LIMIT))
    scale = np.maximum(magnitude, 1e-12).astype(np.float32) / 127
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale


class _QdqRewrite:
    """Adds Q/DQ nodes and quantized initializers to a graph, each tensor's once."""

    def __init__(self, model, ranges: dict[str, tuple[float, float]], symmetric: bool,
                 weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.model, self.ranges, self.symmetric, self.rounded = model, ranges, symmetric, weights
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}  # converted when read: a large table never is
        self.added: dict[str, str] = {}
        self.nodes: list = []  # to go before the node being quantized
        self.after: list = []  # to go after it
        self.scales: dict[str, np.ndarray] = {}
        self.levels: dict[str, np.ndarray] = {}  # each int8 weight's integers

    def _array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self.arrays[name]

    def _constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _dequantize(self, source: str, q: str, scale: str, zero: str, axis: int | None = None) -> str:
        from onnx import helper

        out = f"{source}_DequantizeLinear_Output"
        extra = {} if axis is None else {"axis": axis}
        self.nodes.append(helper.make_node("DequantizeLinear", [q, scale, zero], [out],
                                           name=f"{source}_DequantizeLinear", **extra))
        return out

    def activation(self, name: str) -> str:
        """Route ``name`` through a QuantizeLinear -> DequantizeLinear pair with its range."""
        from onnx import helper

        if name not in self.added:
            scale, zero = _activation_qparams(*self.ranges[name], self.symmetric)
            self.scales[name] = scale
            s, z = self._constant(f"{name}_scale", scale), self._constant(f"{name}_zero_point", zero)
            self.nodes.append(helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_QuantizeLinear_Output"],
                                               name=f"{name}_QuantizeLinear"))
            self.added[name] = self._dequantize(name, f"{name}_QuantizeLinear_Output", s, z)
        return self.added[name]

    def weight(self, node, name: str) -> str:
        """Route ``node``'s weight ``name`` through DequantizeLinear of its int8 form: the one given
        for it (rounded against its inputs), else ``_quantize_weight``'s nearest rounding."""
        if name not in self.added:
            w = self._array(name)
            axis = _weight_axis(node, w.ndim)
            q, scale = self.rounded[name] if name in self.rounded else _quantize_weight(w, axis, _kernel_rows(node, w))
            self.scales[name], self.levels[name] = scale, q
            self.added[name] = self._dequantize(
                name, self._constant(f"{name}_quantized", q), self._constant(f"{name}_scale", scale),
                self._constant(f"{name}_zero_point", np.zeros(scale.shape, np.int8)), axis)
        return self.added[name]

    def bias(self, name: str, activation: str, weight: str) -> str:
        """int32 bias with scale activation scale x weight scale (what integer Conv and Gemm take)."""
        b = self._array(name)
        scale = (self.scales[activation] * self.scales[weight]).astype(np.float32)
        if b.ndim != 1 or b.shape != scale.shape:
            return name
        q = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
        return self._dequantize(name, self._constant(f"{name}_quantized", q), self._constant(f"{name}_scale", scale),
                                self._constant(f"{name}_zero_point", np.zeros(scale.shape, np.int32)), 0)

    def quantize(self, node, residual: bool = False) -> None:
        """Point ``node``'s activation, weight and bias inputs at their dequantized forms; with
        ``residual``, give it a second int8 weight (``residual``)."""
        x, w = node.input[0], node.input[1]
        node.input[0] = self.activation(x)
        node.input[1] = self.weight(node, w)
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in self.initializers:
            node.input[2] = self.bias(node.input[2], x, w)
        if residual:
            self.residual(node, w)

    def residual(self, node, name: str) -> None:
        """Add to the quantized MatMul ``node`` a second MatMul of the same int8 input and the
        rounding residual of its int8 weight ``name`` (``w - q * scale``) as int8 per output channel,
        and the Add of the two: the weight is then good to about 16 bits, computed by two integer
        MatMuls."""
        from onnx import helper

        rest_name = f"{name}{RESIDUAL_SUFFIX}"
        if rest_name not in self.added:
            w = self._array(name)
            axis = _weight_axis(node, w.ndim)
            shape = [1] * w.ndim
            shape[axis] = -1
            rest = (w - self.levels[name].astype(np.float32) * self.scales[name].reshape(shape)).astype(np.float32)
            q, scale = _quantize_weight(rest, axis, _kernel_rows(node, rest))
            self.added[rest_name] = self._dequantize(
                rest_name, self._constant(f"{rest_name}_quantized", q), self._constant(f"{rest_name}_scale", scale),
                self._constant(f"{rest_name}_zero_point", np.zeros(scale.shape, np.int8)), axis)
        weight = self.added[rest_name]
        output, first = node.output[0], f"{node.output[0]}_first"
        node.output[0] = first
        self.after += [helper.make_node("MatMul", [node.input[0], weight], [f"{output}{RESIDUAL_SUFFIX}"],
                                        name=f"{node.name}{RESIDUAL_SUFFIX}"),
                       helper.make_node("Add", [first, f"{output}{RESIDUAL_SUFFIX}"], [output],
                                        name=f"{node.name}{RESIDUAL_SUFFIX}_Add")]


def conv_outputs(model, nodes: set[str] | list[str]) -> dict[str, str]:
    """Each Conv of ``nodes`` (the int8 layers) -> the tensor to quantize after it: its output,
    or the output of the Relu or Clip that is its only reader. onnxruntime runs a QDQ Conv as
    ``QLinearConv`` only when a QuantizeLinear is the only reader of that tensor (it folds a Relu
    or Clip whose range the quantization clamps); without one it dequantizes the weight and runs
    a float Conv, slower than the float model's. Left out: a tensor the model outputs, and one
    that a float layer reads, since onnxruntime quantizes the float weight of a Conv or Gemm that
    reads a DequantizeLinear itself (per tensor: its ``WeightBiasQuantization``)."""
    wanted, read = set(nodes), readers(model.graph)
    float_layers = {q.node for q in quantizable_nodes(model)} - wanted
    outputs = {o.name for o in model.graph.output}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in wanted:
            continue
        tensor = node.output[0]
        after = read.get(tensor, [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip") and tensor not in outputs:
            tensor = after[0].output[0]
        after = read.get(tensor, [])
        if tensor not in outputs and after and not any(r.name in float_layers for r in after):
            found[node.name] = tensor
    return found


def qdq_model(fp32, ranges: dict[str, tuple[float, float]], nodes: set[str] | list[str], symmetric: bool = False,
              weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, residual: Set[str] = frozenset()):
    """The QDQ model (onnx.ModelProto) of the float ``fp32`` (a ModelProto) with ``nodes``
    quantized, and int8 embedding tables; returns it and the names of those tables. ``weights``:
    int8 weights and their scales already rounded, by initializer name (``rounding.py``).

    Only the quantized nodes read the dequantized activation; other readers of the same
    tensor (a residual Add) keep the float one. A quantized Conv's output (``conv_outputs``)
    is the exception, where ``ranges`` has it: every reader reads it quantized, so that
    onnxruntime runs the Conv in int8. Activations are uint8 over [lo, hi], or with
    ``symmetric`` int8 over [-m, m] with zero point 0 (m = max(|lo|, |hi|)), the only form
    TensorRT accepts; weights are int8 per output channel; Conv and Gemm biases int32. The
    ``residual`` nodes (MatMuls of ``nodes``, ``residual_able``) take a second int8 weight, the
    rounding residual of the first (``_QdqRewrite.residual``).
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    rewrite = _QdqRewrite(model, ranges, symmetric, weights or {})
    wanted = set(nodes)
    quantized_outputs = {t for t in conv_outputs(model, wanted).values() if t in ranges}
    ordered = []
    for node in model.graph.node:
        if node.name in wanted:
            rewrite.quantize(node, node.name in residual)
        for i, name in enumerate(node.input):
            if name in quantized_outputs:
                node.input[i] = rewrite.activation(name)
        ordered += rewrite.nodes + [node] + rewrite.after
        rewrite.nodes, rewrite.after = [], []
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    prune_unused(model)
    return model, quantize_embeddings(model)


def residual_able(model) -> set[str]:
    """The MatMul nodes of ``model`` with a constant 2-D weight, which ``qdq_model`` can give a
    second int8 weight."""
    weights = {i.name: i for i in model.graph.initializer}
    return {n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and n.input[0] not in weights
            and len(weights[n.input[1]].dims) == 2}


def blockable(model) -> set[str]:
    """The MatMul nodes of ``model`` whose constant 2-D weight ``int8_weight_blocks`` can split into
    blocks of ``WEIGHT_BLOCK`` input rows (none below opset 21)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < BLOCKED_DQ_OPSET:
        return set()
    weights = {i.name: i for i in model.graph.initializer}
    able = residual_able(model)
    return {n.name for n in model.graph.node if n.name in able and weights[n.input[1]].dims[0] % WEIGHT_BLOCK == 0}


def int8_weight_blocks(model, nodes: set[str]) -> None:
    """Give the float MatMuls ``nodes`` of ``model`` (an onnx.ModelProto, in place) int8 weights with
    one scale per block of ``WEIGHT_BLOCK`` input rows and output column (DequantizeLinear's
    blocked form), their activations left float.

    onnxruntime runs such a MatMul as its ``MatMulNBits`` (8 bits; by default it quantizes the
    activation per block of 32 at run time) and OpenVINO as a compressed weight with its own
    run-time activation quantization: int8 arithmetic with a scale per 32 values instead of one
    per tensor, so a layer too sensitive for static int8 often keeps the budget this way, at a
    quarter of its float bytes (plus its scales) and, in OpenVINO, at int8 speed (MiniLM SST-2:
    0.52-0.53x fp32's time against 0.66-0.84x with those layers float, ``bench/int8_fallbacks.py``).
    The onnx bundle ships them folded to float at load instead (``targets.onnx_integer``)."""
    if not nodes:
        return
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()  # a weight two of the nodes share is written once
    ordered = []
    for node in model.graph.node:
        if node.name in nodes and node.input[1] in weights:
            name = node.input[1]
            node.input[1] = f"{name}_blocks_dequantized"
            if name in done:
                ordered.append(node)
                continue
            done.add(name)
            q, scale = _quantize_blocks(numpy_helper.to_array(weights[name]).astype(np.float32))
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_blocks"),
                                            numpy_helper.from_array(scale, f"{name}_block_scale")])
            ordered.append(helper.make_node("DequantizeLinear", [f"{name}_blocks", f"{name}_block_scale"],
                                            [f"{name}_blocks_dequantized"], name=f"{name}_DequantizeLinear_blocks",
                                            axis=0, block_size=WEIGHT_BLOCK))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    prune_unused(model)


def float16_weights(model, nodes: Set[str]) -> list[str]:
    """Store the float32 weight of each MatMul/Gemm/Conv of ``nodes`` (layers left float) in
    ``model`` (an onnx.ModelProto, in place) as float16, with a ``Cast`` to float32 after it;
    returns the weights' names. onnxruntime folds the Cast when it loads the model and OpenVINO
    reads it as a compressed weight, so those layers still compute in float32, with weights rounded
    to float16 (11 significant bits), at half their float bytes. A weight that another node reads
    too, or that float16 can't hold (a magnitude over 65504), stays float32."""
    import onnx
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    read = readers(model.graph)
    wanted = {n.input[1] for n in model.graph.node
              if n.name in nodes and n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1] in weights}
    done, casts = [], []
    for name in sorted(wanted):
        w = numpy_helper.to_array(weights[name])
        if any(r.name not in nodes for r in read[name]) or np.abs(w).max() > np.finfo(np.float16).max:
            continue
        model.graph.initializer.remove(weights[name])
        model.graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), f"{name}_float16"))
        casts.append(helper.make_node("Cast", [f"{name}_float16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}_Cast"))
        done.append(name)
    nodes_in_order = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes_in_order)
    return done


def float16_layers(model) -> set[str]:
    """The MatMul/Gemm/Conv nodes of ``model`` whose weight ``float16_weights`` stored as float16."""
    import onnx

    halves = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    cast = {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in halves}
    return {n.name for n in model.graph.node if n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1] in cast}


def _quantize_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_quantize_weight`` with one scale per block of ``WEIGHT_BLOCK`` rows and column of ``w``
    (rows, columns): ``w ~= q * scale[row // WEIGHT_BLOCK, column]``."""
    blocks, columns = w.shape[0] // WEIGHT_BLOCK, w.shape[1]
    # each (block, column) pair becomes one column of a (WEIGHT_BLOCK, blocks * columns) matrix
    stacked = w.reshape(blocks, WEIGHT_BLOCK, columns).transpose(1, 0, 2).reshape(WEIGHT_BLOCK, -1)
    q, scale = _quantize_weight(stacked, 1)
    return q.reshape(WEIGHT_BLOCK, blocks, columns).transpose(1, 0, 2).reshape(w.shape), scale.reshape(blocks, columns)


def readers(graph) -> dict[str, list]:
    """Each tensor name of ``graph`` -> the nodes that read it, in graph order."""
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def prune_unused(model) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = outputs | {i for n in model.graph.node for i in n.input}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def activation_qparams(model) -> dict[str, dict[str, float | int]]:
    """Scale and zero point of every activation QuantizeLinear in a QDQ model."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[0]: {"scale": float(constants[n.input[1]]), "zero_point": int(constants[n.input[2]]),
                     "dtype": str(constants[n.input[2]].dtype)}
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants and constants[n.input[1]].size == 1
    }
