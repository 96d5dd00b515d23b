"""ONNX ``Attention`` on (batch, sequence, hidden) tensors: no head split around it.

torch's exporter writes each attention as ``Reshape -> Transpose`` of query, key and value into
(batch, heads, sequence, head size), ``Attention``, then ``Transpose -> Reshape`` back: four
Transposes and four Reshapes per layer, each a pass over the tensor. ONNX ``Attention`` (opset
23) also takes the 3-D tensors with ``q_num_heads``/``kv_num_heads`` and splits the heads itself,
which is the same computation. The rewrite only applies where the exporter's shapes prove the
split: each Reshape turns (a, b, H*D) into (a, b, H, D) with the same a and b, and the output's
into (a, b, H*D).

``attention_masks_per_query`` broadcasts a mask with one row for all queries, (.., 1, kv), to
(.., q, kv): onnxruntime 1.32's CPU ``Attention`` rejects that broadcast, which the ONNX spec
allows and which models that write ``mask[:, None, None, :]`` export.

``rotary_caches_per_batch`` does the same for ``RotaryEmbedding``'s cos and sin caches: rotary
models (ModernBERT) export them as (1, sequence, rotary size / 2) for any batch, and
onnxruntime 1.32 runs a batch of one but rejects more ("expected to have the same shape as
input 'x'"), where the spec has one cache row block per batch item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["attention_on_hidden_states", "attention_masks_per_query", "rotary_caches_per_batch"]

_HEADS_FIRST = [0, 2, 1, 3]


def _perm(node: Any) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _split_heads(name: str, producers: dict[str, Any], shapes: dict[str, list]) -> tuple[str, int] | None:
    """The 3-D tensor and head count behind ``Transpose(Reshape(x, (a, b, H, D)), (0, 2, 1, 3))``."""
    transpose = producers.get(name)
    if transpose is None or transpose.op_type != "Transpose" or _perm(transpose) != _HEADS_FIRST:
        return None
    reshape = producers.get(transpose.input[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    before, after = shapes.get(reshape.input[0]), shapes.get(reshape.output[0])
    if before is None or after is None or len(before) != 3 or len(after) != 4 or before[:2] != after[:2] \
            or None in before[:2]:
        return None
    heads, size = after[2:]
    if not isinstance(heads, int) or not isinstance(size, int) or before[2] != heads * size:
        return None
    return reshape.input[0], heads


def _merge_heads(node: Any, readers: dict[str, list], shapes: dict[str, list]) -> list | None:
    """The ``Transpose(attention, (0, 2, 1, 3))`` and the Reshape after it into (a, b, H*D), or None."""
    after = readers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type != "Transpose" or _perm(after[0]) != _HEADS_FIRST:
        return None
    merge = readers.get(after[0].output[0], [])
    if len(merge) != 1 or merge[0].op_type != "Reshape":
        return None
    heads_last, merged = shapes.get(after[0].output[0]), shapes.get(merge[0].output[0])
    if heads_last is None or merged is None or len(heads_last) != 4 or len(merged) != 3 \
            or merged[:2] != heads_last[:2] or None in merged[:2] \
            or not all(isinstance(d, int) for d in heads_last[2:]) or merged[2] != heads_last[2] * heads_last[3]:
        return None
    return [after[0], merge[0]]


def _shapes(graph: Any) -> dict[str, list]:
    """Each typed tensor's dims: ints, symbol names, or None where unknown."""
    return {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.value_info, *graph.output)}


def _is_attention(node: Any) -> bool:
    return node.op_type == "Attention" and node.domain in ("", "ai.onnx")


def attention_on_hidden_states(model: Any) -> int:
    """Rewrite, in place, every 4-D ``Attention`` of ``model`` (an onnx.ModelProto with the
    exporter's value_info) whose head split and merge are plain Reshape/Transpose pairs into
    one 3-D ``Attention``; returns how many it rewrote."""
    from onnx import helper

    from edgesdk.calibration.qdq import prune_unused, readers

    graph = model.graph
    shapes = _shapes(graph)
    producers = {o: n for n in graph.node for o in n.output}
    readers_of = readers(graph)
    merges: list[Any] = []
    for index, node in enumerate(graph.node):
        if not _is_attention(node) or len(node.input) > 4 \
                or len(node.output) != 1 or any(a.name in ("q_num_heads", "kv_num_heads") for a in node.attribute):
            continue
        split = [_split_heads(name, producers, shapes) for name in node.input[:3]]
        merge = _merge_heads(node, readers_of, shapes)
        if merge is None or any(s is None for s in split) or split[1][1] != split[2][1]:
            continue
        inputs = [s[0] for s in split] + list(node.input[3:])
        attention = helper.make_node("Attention", inputs, [merge[1].output[0]], name=node.name,
                                     q_num_heads=split[0][1], kv_num_heads=split[1][1])
        attention.attribute.extend(node.attribute)
        attention.metadata_props.extend(node.metadata_props)
        graph.node[index].CopyFrom(attention)
        merges.extend(merge)
    for node in merges:
        graph.node.remove(node)
    prune_unused(model)
    names = {t for n in graph.node for t in (*n.input, *n.output)}
    stale = [v for v in graph.value_info if v.name not in names]
    for value in stale:
        graph.value_info.remove(value)
    return len(merges) // 2


def attention_masks_per_query(model: Any) -> int:
    """Expand, in place, each ``Attention`` mask of ``model`` whose shape (from its value_info) has
    one row for all queries to one row per query; returns how many it expanded."""
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _shapes(graph)
    nodes: list[Any] = []
    for node in graph.node:
        mask = shapes.get(node.input[3]) if _is_attention(node) and len(node.input) > 3 and node.input[3] else None
        if mask is not None and len(mask) >= 2 and mask[-2] == 1:
            prefix = f"{node.name}.mask"
            sequence_axis = 1 if any(a.name == "q_num_heads" for a in node.attribute) else 2
            graph.initializer.extend([numpy_helper.from_array(np.ones(len(mask) - 2, np.int64), f"{prefix}.leading"),
                                      numpy_helper.from_array(np.ones(1, np.int64), f"{prefix}.keys")])
            nodes += [helper.make_node("Shape", [node.input[0]], [f"{prefix}.queries"], start=sequence_axis,
                                       end=sequence_axis + 1),
                      helper.make_node("Concat", [f"{prefix}.leading", f"{prefix}.queries", f"{prefix}.keys"],
                                       [f"{prefix}.shape"], axis=0),
                      helper.make_node("Expand", [node.input[3], f"{prefix}.shape"], [f"{prefix}.per_query"])]
            node.input[3] = f"{prefix}.per_query"
        nodes.append(node)
    expanded = len(nodes) - len(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return expanded // 3


def rotary_caches_per_batch(model: Any) -> int:
    """Expand, in place, the cos and sin caches of each ``RotaryEmbedding`` of ``model`` without
    position ids (whose caches are (batch, sequence, rotary size / 2)) to the batch of the tensor
    it rotates; a cache with that batch already is left as it is by the ``Expand``. Returns how
    many caches it expanded (one per cache tensor, shared by every node that reads it)."""
    from onnx import helper

    graph = model.graph
    expanded: dict[str, str] = {}
    nodes: list[Any] = []
    for node in graph.node:
        rotary = node.op_type == "RotaryEmbedding" and node.domain in ("", "ai.onnx") \
            and not (len(node.input) > 3 and node.input[3])
        for index in (1, 2) if rotary else ():
            cache = node.input[index]
            if cache not in expanded:
                prefix = f"{cache}.per_batch"
                nodes += [helper.make_node("Shape", [node.input[0]], [f"{prefix}.batch"], start=0, end=1),
                          helper.make_node("Shape", [cache], [f"{prefix}.rest"], start=1),
                          helper.make_node("Concat", [f"{prefix}.batch", f"{prefix}.rest"], [f"{prefix}.shape"],
                                           axis=0),
                          helper.make_node("Expand", [cache, f"{prefix}.shape"], [prefix])]
                expanded[cache] = prefix
            node.input[index] = expanded[cache]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(expanded)
