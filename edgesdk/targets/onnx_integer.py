"""onnxruntime's form of a QDQ model: each quantized MatMul and its bias in one kernel, and
weight blocks dequantized once at load.

onnxruntime turns ``DequantizeLinear -> MatMul`` into its ``MatMulIntegerToFloat`` kernel, but
leaves the bias ``Add`` that follows as a separate pass over the output (its QDQ fusion has no
bias input; its MatMulInteger fusion has one but only matches scales that are not constants).
Writing ``com.microsoft.MatMulIntegerToFloat`` with the bias directly computes the same values
(the same uint8 activation, int8 weight, scales and zero points, the bias added in float; only
the order of the float additions differs) with one node: measured on MiniLM at sequence 128,
2 threads, the all-int8 model ran in 0.60-0.64x fp32's time against 0.63-0.68x as QDQ. The
QDQ model stays what the other runtimes' int8 bundles are built from; this form is
onnxruntime's own (onnxruntime-web's WebAssembly build registers the kernel too). A layer
with a second int8 weight (its first one's rounding residual) is two such MatMuls of the
same input and their Add.

A layer calibration gave int8 weight blocks (``qdq.int8_weight_blocks``) is written as
``Cast -> Reshape -> Mul -> Reshape`` of its int8 weight and block scales: the same float
weight, which onnxruntime's constant folding computes once when it loads the model, so the
file keeps int8 bytes and the layer runs as a float MatMul. Left as a blocked
``DequantizeLinear``, onnxruntime fuses it into its 8-bit ``MatMulNBits``, which quantizes
the activations per block at run time: a 128 x 384 x 1536 MatMul ran 1.3-2x slower than float
on an AVX2-only CPU (no VNNI), and MiniLM SST-2 with 9 such layers ran at 1.48x fp32's time
there, 1.01x folded (``bench/int8.py``), where on an AVX-512 VNNI CPU ``MatMulNBits`` saved 4%
of the model's time over float layers (``bench/int8_fallbacks.py``). A bundle runs on whatever CPU
loads it, so its blocks take the form that is never slower than float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgesdk.calibration.qdq import prune_unused, readers

__all__ = ["onnxruntime_form"]

MS_DOMAIN = "com.microsoft"


def _dequantized(name: str, producers: dict[str, Any], constants: dict[str, Any]) -> list[str] | None:
    """The (quantized, scale, zero point) inputs of the DequantizeLinear writing ``name``, or None."""
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) != 3:
        return None
    return list(node.input) if node.input[1] in constants and node.input[2] in constants else None


def _size(tensor: Any) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _bias(add: Any, matmul_out: str, columns: int, constants: dict[str, Any]) -> str | None:
    """The constant float bias of ``add`` (one value per output column), or None when it is no bias."""
    from onnx import TensorProto

    other = add.input[1] if add.input[0] == matmul_out else add.input[0]
    tensor = constants.get(other)
    if tensor is None or tensor.data_type != TensorProto.FLOAT or list(tensor.dims[-1:]) != [columns] \
            or _size(tensor) != columns:
        return None
    return other


def _integer_inputs(node: Any, producers: dict[str, Any], constants: dict[str, Any]) -> list[str] | None:
    """MatMulIntegerToFloat's inputs for a MatMul reading a per-tensor uint8 activation and a 2-D
    int8 weight through DequantizeLinear, or None for any other node."""
    from onnx import TensorProto

    activation = _dequantized(node.input[0], producers, constants) if node.op_type == "MatMul" else None
    weight = _dequantized(node.input[1], producers, constants) if activation else None
    if (not activation or not weight or _size(constants[activation[1]]) != 1
            or constants[activation[2]].data_type != TensorProto.UINT8 or len(constants[weight[0]].dims) != 2
            or constants[weight[0]].data_type != TensorProto.INT8):
        return None
    return [activation[0], weight[0], activation[1], weight[1], activation[2], weight[2]]


def onnxruntime_form(qdq: Any) -> Any:
    """A copy of the QDQ ``qdq`` (an onnx.ModelProto) where every MatMul reading a per-tensor
    uint8 activation and a 2-D int8 weight through DequantizeLinear, and the bias Add after it,
    are one ``MatMulIntegerToFloat``, and every weight block dequantization is folded at load
    (``_fold_weight_blocks``)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}  # read for dims and types only
    producers = {o: n for n in graph.node for o in n.output}
    readers_of = readers(graph)
    graph_outputs = {o.name for o in graph.output}
    fused: set[str] = set()  # outputs of the bias Adds taken into a kernel
    nodes = []
    for node in graph.node:
        if node.op_type == "Add" and node.output[0] in fused:
            continue
        inputs = _integer_inputs(node, producers, constants)
        if inputs is None:
            nodes.append(node)
            continue
        output = node.output[0]
        after = readers_of.get(output, [])
        if len(after) == 1 and after[0].op_type == "Add" and output not in graph_outputs:
            bias = _bias(after[0], output, constants[inputs[1]].dims[1], constants)
            if bias is not None:
                inputs.append(bias)
                output = after[0].output[0]
                fused.add(output)
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [output], name=node.name, domain=MS_DOMAIN))
    del graph.node[:]
    graph.node.extend(_fold_weight_blocks(nodes, model))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    prune_unused(model)
    onnx.checker.check_model(model)
    return model


def _fold_weight_blocks(nodes: list[Any], model: Any) -> list[Any]:
    """``nodes`` with each ``DequantizeLinear`` of a constant 2-D weight in blocks along its rows
    (``qdq.int8_weight_blocks``: no zero point) written as ``Cast -> Reshape -> Mul -> Reshape``:
    int8 rows (blocks, block, columns) times scales (blocks, 1, columns); the new constants are
    added to ``model``."""
    from onnx import TensorProto, helper, numpy_helper

    constants = {i.name: i for i in model.graph.initializer}
    out = []
    for node in nodes:
        block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if (node.op_type != "DequantizeLinear" or not block or axis != 0 or len(node.input) != 2
                or node.input[0] not in constants or node.input[1] not in constants
                or len(constants[node.input[0]].dims) != 2):
            out.append(node)
            continue
        rows, columns = constants[node.input[0]].dims
        scale = numpy_helper.to_array(constants[node.input[1]])
        name = node.output[0]
        model.graph.initializer.extend([
            numpy_helper.from_array(scale.reshape(rows // block, 1, columns), f"{name}_scale"),
            numpy_helper.from_array(np.array([rows // block, block, columns], np.int64), f"{name}_blocked_shape"),
            numpy_helper.from_array(np.array([rows, columns], np.int64), f"{name}_shape")])
        out += [helper.make_node("Cast", [node.input[0]], [f"{name}_float"], name=f"{name}_Cast", to=TensorProto.FLOAT),
                helper.make_node("Reshape", [f"{name}_float", f"{name}_blocked_shape"], [f"{name}_blocked"],
                                 name=f"{name}_Reshape_blocks"),
                helper.make_node("Mul", [f"{name}_blocked", f"{name}_scale"], [f"{name}_scaled"], name=f"{name}_Mul"),
                helper.make_node("Reshape", [f"{name}_scaled", f"{name}_shape"], [name], name=f"{name}_Reshape")]
    return out
