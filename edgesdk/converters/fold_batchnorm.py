"""Fold BatchNorm into the Conv or Linear before it, found by pattern on the traced graph.

Exact up to float rounding. A BatchNorm in training mode, without running statistics, after
a layer with other users, or a BatchNorm1d after a Linear whose output is not (N, C) is left
as it is and listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .base import PASSES
from .fx_graph import GraphPass, fold_bn, module_of, replace_with_module, uses_running_stats

__all__ = ["FoldBatchNorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _why_not(gm: fx.GraphModule, layer_node: fx.Node, bn: nn.Module) -> str | None:
    layer = module_of(gm, layer_node)
    if not uses_running_stats(bn):
        return "BatchNorm is in training mode or has no running statistics"
    if len(layer_node.users) != 1:
        return "the layer's output has other users"
    if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == layer_node.target) != 1:
        return "the layer module is called more than once"
    if bn.num_features != (layer.out_channels if isinstance(layer, _CONVS) else layer.out_features):
        return "channel counts differ"
    if isinstance(layer, nn.Linear):
        meta = layer_node.meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 2:
            return "BatchNorm1d after a Linear whose output is not (batch, features)"
    return None


def fold_batchnorm(gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
    """Fold in place; returns (folded, skipped) records."""
    folded, skipped = [], []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if not isinstance(bn, _BNS) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        layer_node = node.args[0]
        layer = module_of(gm, layer_node)
        if not isinstance(layer, (*_CONVS, nn.Linear)):
            continue
        reason = _why_not(gm, layer_node, bn)
        if reason:
            skipped.append({"at": node.name, "reason": reason})
            continue
        fused = copy.deepcopy(layer)
        with torch.no_grad():
            weight, bias = fold_bn(layer.weight, layer.bias, bn)
            fused.weight = nn.Parameter(weight)
            fused.bias = nn.Parameter(bias)
        replace_with_module(gm, node, fused, layer_node.args, f"{layer_node.target}_bn")
        gm.graph.erase_node(node)
        gm.graph.erase_node(layer_node)
        folded.append({"pattern": f"{type(layer).__name__}+{type(bn).__name__}", "at": node.name})
    return folded, skipped


@PASSES.register("fold_batchnorm")
class FoldBatchNorm(GraphPass):
    """Conv->BatchNorm and Linear->BatchNorm1d become one layer."""

    name = "fold_batchnorm"

    def rewrite(self, gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
        return fold_batchnorm(gm)
