"""Write int8 ONNX models: QDQ around weight MatMul/Gemm/Conv nodes, int8 embedding tables.

Activations are uint8 with edgesdk's ranges (asymmetric, per tensor); weights are int8,
symmetric, per output channel. onnxruntime's ``QDQQuantizer`` does the QDQ rewrite with
those ranges (its own calibrators are not used). Large ``Gather`` tables indexed by a model
input (the token embedding) become int8 with one scale per row and one per column, gathered
and scaled at run time, so the table is stored at a quarter of its bytes and never
dequantized whole.

What stays float, and why (measured on MiniLM with onnxruntime on an AVX2 CPU): attention's
activation x activation MatMuls, Softmax, LayerNorm and GELU gain no int8 kernel worth
their Q/DQ overhead and are where accuracy goes; only MatMul/Gemm/Conv with constant
weights are quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QuantNode", "quantizable_nodes", "quantize_all", "with_float_nodes", "activation_qparams", "QUANT_OPS"]

QUANT_OPS = ("MatMul", "Gemm", "Conv")
EMBEDDING_MIN_ROWS = 256


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


def _quantize_embeddings(model) -> list[str]:
    """Replace float Gather tables with int8 rows, in place; returns their names.

    Each column is first divided by its largest magnitude (embedding tables carry a few outlier
    dimensions, and one scale per row would spend its levels on them), then each row gets its
    own scale: ``table ~= q * row_scale * column_scale``, gathered then scaled, so the table is
    never dequantized whole.
    """
    import onnx
    from onnx import helper, numpy_helper

    tables = {i.name: i for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and i.dims[0] >= EMBEDDING_MIN_ROWS}
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
            columns = np.maximum(np.abs(w).max(0, keepdims=True), 1e-12)
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


def quantize_all(fp32, ranges: dict[str, tuple[float, float]], nodes: list[str], symmetric: bool = False):
    """The QDQ model (onnx.ModelProto) of the float ``fp32`` (a ModelProto) with every one of
    ``nodes`` quantized and int8 embedding tables; returns it and the names of those tables.

    Activations are uint8 over [lo, hi], or with ``symmetric`` int8 over [-m, m] with zero
    point 0 (m = max(|lo|, |hi|)), the only form TensorRT accepts.
    """
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType

    model = onnx.shape_inference.infer_shapes(fp32)
    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for name, (lo, hi) in sorted(ranges.items())
    })
    options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True,
               "OpTypesToExcludeOutputQuantization": list(QUANT_OPS)}  # outputs stay float (bias add, GELU...)
    activation_type = QuantType.QInt8 if symmetric else QuantType.QUInt8
    quantizer = QDQQuantizer(model, True, False, QuantType.QInt8, activation_type, data, list(nodes), [],
                             list(QUANT_OPS), options)
    quantizer.quantize_model()
    model = quantizer.model.model
    del model.graph.value_info[:]  # shapes inferred for the rewrite; the runtime infers its own
    return model, _quantize_embeddings(model)


def with_float_nodes(qdq, fp32, float_nodes: set[str]):
    """A copy of ``qdq`` whose ``float_nodes`` take their float inputs again (from ``fp32``).

    Only the int8 nodes read quantized activations: onnxruntime's rewrite also routes other
    readers of a quantized tensor (a residual Add) through its Q/DQ pair, which those readers
    get back off. Q/DQ nodes and int8 weights that nothing uses any more are removed.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    originals = {n.name: n for n in fp32.graph.node if n.name in float_nodes}
    constants = {i.name: i for i in fp32.graph.initializer}
    restored: set[str] = set()
    for node in model.graph.node:
        if node.name in originals:
            del node.input[:]
            # float weights come back under a new name: the QDQ graph may reuse the old one for a DQ output
            node.input.extend(f"{i}.float" if i in constants else i for i in originals[node.name].input)
            restored |= {i for i in originals[node.name].input if i in constants}
    int8_nodes = {n.node for n in quantizable_nodes(fp32)} - set(float_nodes)
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in int8_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
    for name in sorted(restored):
        weight = onnx.TensorProto()
        weight.CopyFrom(constants[name])
        weight.name = f"{name}.float"
        model.graph.initializer.append(weight)
    _prune_unused(model)
    return model


def _prune_unused(model) -> None:
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
