"""Rank layers by how much int8 hurts each one alone, in a single pass over a few samples.

Beside every quantizable layer the probe model holds a twin that reads the quantized
(Q -> DQ) version of the layer's *float* input and its dequantized int8 weight, exactly as the
QDQ model stores them; nothing downstream reads the twin. Comparing the two outputs gives each
layer's own signal-to-noise ratio, free of the errors of the layers before it, at the cost of
about two forward passes, whatever the number of layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_run import run_outputs

__all__ = ["local_snr"]


def _probe_model(fp32: Any, qdq: Any, names: list[str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """The float model plus a quantized twin of each of ``names``; returns it and node -> (float
    output, twin output)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    graph = probe.graph
    producer = {o: n for n in qdq.graph.node for o in n.output}
    qdq_nodes = {n.name: n for n in qdq.graph.node}
    qdq_constants = {i.name: i for i in qdq.graph.initializer}
    present = {i.name for i in graph.initializer}
    float_nodes = {n.name: n for n in graph.node}
    pairs: dict[str, tuple[str, str]] = {}
    for name in names:
        node = qdq_nodes.get(name)
        dq = producer.get(node.input[0]) if node is not None else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue  # onnxruntime left this layer float
        twin_inputs = []
        for k, tensor in enumerate(node.input):
            source = producer.get(tensor)
            if k == 0:
                twin_inputs.append(f"{name}.probe.dq")
            elif source is not None and source.op_type == "DequantizeLinear":
                twin_inputs.append(f"{name}.probe.w{k}")
                graph.node.append(onnx.helper.make_node("DequantizeLinear", list(source.input),
                                                        [f"{name}.probe.w{k}"], name=f"{name}.probe.dqw{k}",
                                                        **{a.name: a.i for a in source.attribute}))
            else:
                twin_inputs.append(tensor)
        for tensor in [*q.input[1:], *dq.input[1:], *(i for k, i in enumerate(node.input) if k)]:
            dq_source = producer.get(tensor)
            for t in [tensor, *(dq_source.input if dq_source is not None else [])]:
                if t in qdq_constants and t not in present:
                    graph.initializer.append(qdq_constants[t])
                    present.add(t)
        original = float_nodes[name]
        graph.node.extend([
            onnx.helper.make_node("QuantizeLinear", [original.input[0], *q.input[1:]], [f"{name}.probe.q"],
                                  name=f"{name}.probe.q"),
            onnx.helper.make_node("DequantizeLinear", [f"{name}.probe.q", *dq.input[1:]], [f"{name}.probe.dq"],
                                  name=f"{name}.probe.dqx"),
        ])
        twin = onnx.helper.make_node(node.op_type, twin_inputs, [f"{name}.probe.out"], name=f"{name}.probe",
                                     domain=node.domain)
        twin.attribute.extend(node.attribute)
        graph.node.append(twin)
        pairs[name] = (original.output[0], f"{name}.probe.out")
    return probe, pairs


def local_snr(fp32: Any, qdq: Any, nodes: list, rows: list, encoder) -> dict[str, float]:
    """Per node name: the SNR (dB) of the layer's output with int8 input and weight against float,
    each layer measured alone. Layers onnxruntime did not quantize get +inf."""
    probe, pairs = _probe_model(fp32, qdq, [n.node for n in nodes])
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    names = sorted({t for pair in pairs.values() for t in pair})
    if pairs and rows:
        # one sample at a time: no padded positions in the figures
        for _, outputs in run_outputs(probe, names, rows, encoder, batch_size=1):
            for node, (reference, twin) in pairs.items():
                a = outputs[reference].astype(np.float64)
                signal[node] += float(np.sum(a ** 2))
                noise[node] += float(np.sum((a - outputs[twin]) ** 2))
    return {n.node: (10 * float(np.log10(max(signal[n.node], 1e-30) / noise[n.node]))
                     if n.node in pairs and noise[n.node] > 0 else float("inf")) for n in nodes}
