"""Fold BatchNorm and per-channel scales into a neighbouring Conv or Linear, found by pattern
on the traced graph.

After a layer: a BatchNorm (Conv->BN, Linear->BatchNorm1d) or a constant per-channel scale
(layer scale, ``x * gamma``). Before a conv: a BatchNorm whose shift the conv's zero padding
would not see (padding 0, or no shift). Exact up to float rounding. A BatchNorm in training
mode, without running statistics, after a layer with other users, or a BatchNorm1d after a
Linear whose output is not (N, C) is left as it is and listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .base import PASSES
from .fx_graph import (
    GraphPass,
    bn_scale_shift,
    channel_scale,
    fold_bn,
    module_of,
    replace_with_module,
    uses_running_stats,
)

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


def _replace_pair(gm: fx.GraphModule, first: fx.Node, last: fx.Node, layer: nn.Module, weight: torch.Tensor,
                  bias: torch.Tensor, name: str) -> None:
    """Replace ``first`` and ``last`` (which reads it) by one copy of ``layer`` with ``weight`` and
    ``bias``, called on ``first``'s inputs."""
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(weight)
    fused.bias = nn.Parameter(bias)
    replace_with_module(gm, last, fused, first.args, name)
    gm.graph.erase_node(last)
    gm.graph.erase_node(first)


def _scaled_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, fx.Node] | None:
    """(scale, layer node) for ``layer(x) * gamma`` with a per-channel constant gamma."""
    meta = node.meta.get("tensor_meta")
    scaled = channel_scale(gm, node, meta.shape[1]) if meta is not None and len(meta.shape) == 4 else None
    if scaled is None or not isinstance(module_of(gm, scaled[1]), _CONVS):
        return None
    return scaled


def _fold_before(gm: fx.GraphModule, conv_node: fx.Node, conv: nn.Module, bn: nn.Module) -> tuple | None:
    """Weight and bias of ``conv(bn(x))`` when the conv's zero padding sees no BN shift; else None."""
    scale, shift = bn_scale_shift(bn)
    padded = any(p != 0 for p in conv.padding) if not isinstance(conv.padding, str) else conv.padding != "valid"
    if (padded and shift.abs().max() > 0) or conv.padding_mode != "zeros" or conv.in_channels != bn.num_features:
        return None
    per_in = conv.in_channels // conv.groups
    index = (torch.arange(conv.out_channels)[:, None] // (conv.out_channels // conv.groups)) * per_in + torch.arange(
        per_in)[None, :]  # the input channel each (output, input slot) of the kernel reads
    shape = (conv.out_channels, per_in) + (1,) * (conv.weight.dim() - 2)
    weight = conv.weight * scale[index].reshape(shape)
    bias = (conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)) + (
        conv.weight * shift[index].reshape(shape)).flatten(1).sum(1)
    return weight, bias


def fold_batchnorm(gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
    """Fold in place; returns (folded, skipped) records."""
    folded, skipped = [], []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        scaled = _scaled_layer(gm, node) if bn is None else None
        if scaled is not None and len(scaled[1].users) == 1:
            layer_node = scaled[1]
            layer = module_of(gm, layer_node)
            with torch.no_grad():
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
                _replace_pair(gm, layer_node, node, layer, layer.weight * scaled[0].reshape(shape),
                              bias * scaled[0], f"{layer_node.target}_scaled")
            folded.append({"pattern": f"{type(layer).__name__}*scale", "at": layer_node.target})
            continue
        if isinstance(bn, _CONVS) and isinstance(node.args[0], fx.Node) and len(node.args[0].users) == 1:
            before = module_of(gm, node.args[0])
            if isinstance(before, _BNS) and uses_running_stats(before):
                with torch.no_grad():
                    weights = _fold_before(gm, node, bn, before)
                if weights is not None:
                    _replace_pair(gm, node.args[0], node, bn, *weights, f"{node.target}_pre_bn")
                    folded.append({"pattern": f"{type(before).__name__}+{type(bn).__name__}", "at": node.target})
            continue
        if not isinstance(bn, _BNS) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        layer_node = node.args[0]
        layer = module_of(gm, layer_node)
        if not isinstance(layer, (*_CONVS, nn.Linear)):
            continue
        reason = _why_not(gm, layer_node, bn)
        if reason:
            skipped.append({"at": node.target, "reason": reason})
            continue
        with torch.no_grad():
            weight, bias = fold_bn(layer.weight, layer.bias, bn)
        _replace_pair(gm, layer_node, node, layer, weight, bias, f"{layer_node.target}_bn")
        folded.append({"pattern": f"{type(layer).__name__}+{type(bn).__name__}", "at": node.target})
    gm.graph.eliminate_dead_code()
    return folded, skipped


@PASSES.register("fold_batchnorm")
class FoldBatchNorm(GraphPass):
    """Conv->BatchNorm, Linear->BatchNorm1d, Conv->per-channel scale and BatchNorm->Conv (where
    exact) become one layer."""

    name = "fold_batchnorm"

    def rewrite(self, gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
        return fold_batchnorm(gm)
