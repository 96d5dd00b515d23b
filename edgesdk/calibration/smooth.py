"""Migrate activation outliers into weights before int8 (SmoothQuant, Xiao et al. 2023).

Transformer activations carry a few channels far larger than the rest (LayerNorm outputs of
BERT-like models reach +-28 in a handful of channels while most stay within +-2), so one
per-tensor uint8 scale wastes most of its levels on them. For a MatMul/Gemm ``y = x @ W``
with a constant weight, ``y = (x / s) @ (diag(s) W)`` exactly. edgesdk only shrinks the
outlier channels, ``s = max(1, max|x| / median_c max|x|)^alpha``, and never amplifies a
channel: SmoothQuant's ``max|x|^alpha / max|W|^(1 - alpha)`` also scales quiet channels up,
and a channel quiet in calibration but not in real traffic then overflows its range (on
MiniLM classifiers that cost 2-3x more logit KL than not smoothing at all). Measured on
SST-2 and topic MiniLMs, alpha 0.75 gave the lowest KL (0.5: +25%, 1.0: +150%).

``x / s`` is a ``Mul`` on the path to those MatMuls only: other readers of ``x`` (a
residual ``Add``, a LayerNorm) keep the original tensor, so the float model computes the
same function. Consumers that share an input share one ``s``. Three kinds of activation read
only by those MatMuls take ``1 / s`` without an extra pass over the tensor: a product (GELU
written out as ``x * (0.5 * (1 + erf(x / sqrt 2)))``) in its constant factor, an attention
output in the value projection's weight and bias columns (a Mul on MiniLM's 128 x 384
attention output cost 27 us per layer in onnxruntime, 2 threads), and a LayerNorm output
(pre-LN transformers) in the LayerNorm's scale and bias. An opset-23 ``Gelu`` op
gets a ``Mul``. Where every MatMul reading a smoothed activation stays float,
``drop_idle_smoothing`` takes its ``Mul`` out of the final model again (it would cost a pass
and buy nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ChannelMax", "smoothable", "smooth_model", "smoothing_scale", "drop_idle_smoothing", "SMOOTH_ALPHA"]

SMOOTH_ALPHA = 0.75
_SCALE_CLIP = (1e-4, 1e4)
_MUL_SUFFIX = ".mul"


class ChannelMax:
    """Running max |x| per last-axis channel (constant memory)."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def update(self, values: np.ndarray) -> None:
        x = np.abs(np.asarray(values, dtype=np.float32))
        if x.ndim == 0 or not x.size:
            return
        m = x.reshape(-1, x.shape[-1]).max(0)
        self.value = m if self.value is None or self.value.shape != m.shape else np.maximum(self.value, m)


def _weight_rows(node: Any, weight: np.ndarray) -> np.ndarray | None:
    """``weight`` with the input channels of ``node`` on axis 0, or None when it has no such layout."""
    attrs = {a.name: a.i for a in node.attribute}
    if weight.ndim != 2:
        return None
    if node.op_type == "MatMul":
        return weight
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        return weight.T if attrs.get("transB", 0) else weight
    return None


def smoothable(model: Any, nodes: list) -> dict[str, list]:
    """Activation tensor -> the quantizable MatMul/Gemm nodes (``QuantNode``) reading it whose weight
    has one row per channel of the activation's last axis."""
    from onnx import numpy_helper

    constants = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    groups: dict[str, list] = {}
    for q in nodes:
        node = by_name[q.node]
        if q.op in ("MatMul", "Gemm") and _weight_rows(node, numpy_helper.to_array(constants[node.input[1]])) \
                is not None:
            groups.setdefault(q.activation, []).append(q)
    return groups


def smoothing_scale(channel_max: np.ndarray, alpha: float = SMOOTH_ALPHA) -> np.ndarray:
    """Each channel's divisor: outlier channels (max |x| above the median channel's) shrink, the
    others stay as they are."""
    scale = np.maximum(channel_max / max(float(np.median(channel_max)), 1e-12), 1.0) ** alpha
    return np.clip(scale, *_SCALE_CLIP).astype(np.float32)


def smooth_model(model: Any, groups: dict[str, list], channel_max: dict[str, np.ndarray],
                 alpha: float = SMOOTH_ALPHA) -> tuple[Any, dict[str, str]]:
    """A float model equal to ``model`` with each group's activation divided by its smoothing scale.

    Returns the model and a map from each original activation to the tensor its MatMuls now
    read (the one to observe and quantize).
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    by_name = {n.name: n for n in graph.node}
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    for activation in sorted(groups):
        amax = channel_max.get(activation)
        consumers = [by_name[q.node] for q in groups[activation]]
        rows = [_weight_rows(n, numpy_helper.to_array(constants[n.input[1]])) for n in consumers]
        if amax is None or any(r is None or r.shape[0] != amax.shape[0] for r in rows):
            continue
        scale = smoothing_scale(amax, alpha)
        smoothed = f"{activation}.smooth"
        if uses.get(activation) == len(consumers) and activation not in outputs and (
                _fold_into_factor(graph, activation, 1 / scale, producers, constants, uses)
                or _fold_into_values(graph, activation, 1 / scale, producers, constants, uses)
                or _fold_into_layernorm(graph, activation, 1 / scale, producers, constants, uses)):
            smoothed = activation
        else:
            graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), f"{smoothed}.inv_scale"))
            first = min(list(graph.node).index(n) for n in consumers)
            graph.node.insert(first, helper.make_node("Mul", [activation, f"{smoothed}.inv_scale"], [smoothed],
                                                      name=f"{smoothed}{_MUL_SUFFIX}"))
        for node in consumers:
            _scale_weight(graph, node, scale, constants, uses)
            node.input[0] = smoothed
        renamed[activation] = smoothed
    return out, renamed


def _fold_into_factor(graph: Any, activation: str, inverse: np.ndarray, producers: dict, constants: dict,
                      uses: dict[str, int]) -> bool:
    """Divide ``activation`` by the smoothing scale inside the product that computes it, when it is
    one: a constant factor of its ``Mul`` (or of a ``Mul`` feeding only that one) becomes a
    per-channel vector, so no extra pass over the tensor runs (GELU's ``x * (0.5 * (1 + erf))``
    takes it in its 0.5). Returns whether it did."""
    from onnx import numpy_helper

    name: str | None = activation
    for _ in range(3):
        node = producers.get(name)
        if node is None or node.op_type != "Mul":
            return False
        for index, factor_input in enumerate(node.input):
            value = numpy_helper.to_array(constants[factor_input]) if factor_input in constants else None
            if value is not None and value.dtype == np.float32 and value.size in (1, inverse.size) \
                    and value.shape[-1:] in ((), (1,), (inverse.size,)):
                factor = f"{activation}.smooth.factor"
                graph.initializer.append(numpy_helper.from_array((value.reshape(-1) * inverse).astype(np.float32),
                                                                 factor))
                node.input[index] = factor
                return True
        name = next((i for i in node.input if i in producers and uses.get(i) == 1), None)
    return False


def _fold_into_values(graph: Any, activation: str, inverse: np.ndarray, producers: dict, constants: dict,
                      uses: dict[str, int]) -> bool:
    """Divide an attention output by the smoothing scale inside the value projection, when it is one:
    ``Attention``'s output channel c is a softmax-weighted sum of value channel c (one value head per
    query head, no past values), so scaling the value weight's and bias's column c scales it exactly.
    Returns whether it did."""
    node = producers.get(activation)
    attrs = {a.name: a.i for a in node.attribute} if node is not None else {}
    if node is None or node.op_type != "Attention" or node.output[0] != activation or any(node.output[1:]) \
            or any(node.input[4:]) or not attrs.get("q_num_heads") or attrs["q_num_heads"] != attrs.get("kv_num_heads"):
        return False
    scaled, name = [], node.input[2]
    while uses.get(name) == 1 and name in producers:
        producer = producers[name]
        columns = [i for i, n in enumerate(producer.input) if n in constants
                   and tuple(constants[n].dims[-1:]) == inverse.shape]
        if producer.op_type == "MatMul" and columns == [1] and len(constants[producer.input[1]].dims) == 2:
            for node_, index in [*scaled, (producer, 1)]:
                _scale_constant(graph, node_, index, inverse, constants, uses)
            return True
        if producer.op_type != "Add" or len(columns) != 1:
            return False
        scaled.append((producer, columns[0]))
        name = producer.input[1 - columns[0]]
    return False


def _fold_into_layernorm(graph: Any, activation: str, inverse: np.ndarray, producers: dict, constants: dict,
                         uses: dict[str, int]) -> bool:
    """Divide a LayerNorm output by the smoothing scale in its scale and bias, when it is one over the
    last axis with constant ones (pre-LN transformers: ViT, ModernBERT, whose residual reads the
    LayerNorm's input). Returns whether it did."""
    node = producers.get(activation)
    if node is None or node.op_type != "LayerNormalization" or node.output[0] != activation:
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    affine = [i for i in (1, 2) if i < len(node.input) and node.input[i]]
    if axis != -1 or any(node.input[i] not in constants or tuple(constants[node.input[i]].dims) != inverse.shape
                         for i in affine):
        return False
    for index in affine:
        _scale_constant(graph, node, index, inverse, constants, uses)
    return True


def _scale_weight(graph: Any, node: Any, scale: np.ndarray, constants: dict, uses: dict[str, int]) -> None:
    """Multiply ``node``'s weight by ``scale`` per input channel."""
    _scale_constant(graph, node, 1, _per_input_channel(node, scale), constants, uses)


def _per_input_channel(node: Any, factor: np.ndarray) -> np.ndarray:
    """``factor`` shaped to multiply ``node``'s weight per input channel (Gemm with transB: per column)."""
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return factor[None, :] if transposed else factor[:, None]


def _scale_constant(graph: Any, node: Any, index: int, factor: np.ndarray, constants: dict,
                    uses: dict[str, int]) -> None:
    """Multiply ``node``'s constant input ``index`` by ``factor`` (broadcast; a private copy when the
    constant is shared)."""
    from onnx import numpy_helper

    name = node.input[index]
    value = numpy_helper.to_array(constants[name]).astype(np.float32) * factor
    node.input[index] = f"{name}.smooth.{node.name}" if uses.get(name, 0) > 1 else name
    _set_constant(graph, constants, numpy_helper.from_array(value.astype(np.float32), node.input[index]))


def _set_constant(graph: Any, constants: dict, tensor: Any) -> None:
    """Store ``tensor`` in ``graph`` under its name: over the initializer of that name, or as a new one."""
    if tensor.name in constants:
        constants[tensor.name].CopyFrom(tensor)
    else:
        graph.initializer.append(tensor)
        constants[tensor.name] = graph.initializer[-1]


def drop_idle_smoothing(model: Any, original: Any) -> int:
    """Undo, in place, the smoothing ``Mul`` of every activation that only float MatMul/Gemm nodes
    read in ``model`` (a QDQ model built from a smoothed copy of ``original``): they read the
    original activation, and their weights lose that smoothing again (``_unsmoothed_weight``).
    Returns how many it undid."""
    from onnx import numpy_helper

    from .qdq import prune_unused, readers

    graph = model.graph
    weight_of = {n.name: n.input[1] for n in original.graph.node if n.op_type in ("MatMul", "Gemm")}
    original_constants = {i.name: i for i in original.graph.initializer}
    constants = {i.name: i for i in graph.initializer}
    readers_of = readers(graph)
    idle = [n for n in graph.node if n.op_type == "Mul" and n.name == f"{n.output[0]}{_MUL_SUFFIX}"
            and n.output[0].endswith(".smooth") and readers_of.get(n.output[0])
            and all(r.name in weight_of and r.input[0] == n.output[0] for r in readers_of[n.output[0]])]
    for mul in idle:
        inverse = numpy_helper.to_array(constants[mul.input[1]]).reshape(-1)
        for node in readers_of[mul.output[0]]:
            weight = _unsmoothed_weight(node, numpy_helper.to_array(constants[node.input[1]]), inverse,
                                        numpy_helper.to_array(original_constants[weight_of[node.name]]))
            node.input[0], node.input[1] = mul.input[0], weight_of[node.name]
            _set_constant(graph, constants, numpy_helper.from_array(weight, node.input[1]))
        graph.node.remove(mul)
    prune_unused(model)
    return len(idle)


def _unsmoothed_weight(node: Any, weight: np.ndarray, inverse: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``node``'s smoothed ``weight`` with its input channels divided by their scale again: the
    original values wherever that gives them back (to rounding), so a weight smoothed only on its
    input comes back bit for bit, while a fold of its own (a value projection's columns) stays."""
    undone = weight * _per_input_channel(node, inverse)
    return np.where(np.isclose(undone, original, rtol=1e-5, atol=0), original, undone).astype(np.float32)
