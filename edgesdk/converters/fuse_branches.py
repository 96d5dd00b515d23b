"""Fuse parallel conv branches summed over one input into a single conv (RepVGG, MobileOne, ACNet).

Found by pattern on the traced graph, not by class name: an add tree (``+``, ``torch.add``,
``Tensor.add``, ``sum(...)``) whose leaves are each a Conv2d, a Conv2d followed by
BatchNorm2d, a BatchNorm2d alone (identity branch) or the input itself, all over the same
input, with one stride and groups and kernels that centre-pad to a common size. Anything
else (a nonlinearity inside a branch, mixed strides, misaligned padding) is left untouched
and listed under ``skipped`` with the reason. Exact up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from .base import PASSES
from .fx_graph import (
    GraphPass,
    bn_scale_shift,
    fold_bn,
    identity_kernel,
    is_add,
    module_of,
    pad_kernel,
    replace_with_module,
    uses_running_stats,
)

__all__ = ["FuseBranches"]


@dataclass
class _Branch:
    """One leaf of the sum: a conv kernel (None for identity), bias, and the BatchNorm of an identity."""

    x: fx.Node
    conv: nn.Conv2d | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    bn: nn.BatchNorm2d | None = None


def _leaves(node: fx.Node) -> list:
    out = []
    for arg in node.args[:2]:
        if isinstance(arg, fx.Node) and is_add(arg) and len(arg.users) == 1:
            out.extend(_leaves(arg))
        else:
            out.append(arg)
    return out


def _branch(gm: fx.GraphModule, leaf) -> _Branch | None:
    m = module_of(gm, leaf) if isinstance(leaf, fx.Node) else None
    if isinstance(m, nn.Conv2d):
        return _Branch(leaf.args[0], m, m.weight, m.bias)
    if isinstance(m, nn.BatchNorm2d) and uses_running_stats(m):
        inner = leaf.args[0]
        conv = module_of(gm, inner)
        if isinstance(conv, nn.Conv2d) and len(inner.users) == 1:
            w, b = fold_bn(conv.weight, conv.bias, m)
            return _Branch(inner.args[0], conv, w, b)
        return _Branch(inner, bn=m)
    return None


def _offsets(conv: nn.Conv2d) -> tuple[int, int]:
    return (conv.kernel_size[0] // 2 - conv.padding[0], conv.kernel_size[1] // 2 - conv.padding[1])


def _check(leaves: list, branches: list) -> str | None:
    convs = [b.conv for b in branches if b and b.conv is not None]
    if not convs:
        return "no convolution among the branches"
    x = next(b.x for b in branches if b and b.conv is not None)
    for leaf, b in zip(leaves, branches):
        if b is None and leaf is not x:
            what = leaf.target if isinstance(leaf, fx.Node) else leaf
            return f"branch {what!r} is not a Conv/BatchNorm of the shared input"
        if b is not None and b.x is not x:
            return "the branches read different inputs"
    first = convs[0]
    for c in convs:
        if isinstance(c.padding, str) or c.padding_mode != "zeros":
            return "padding given as a string or not zeros"
        if c.stride != first.stride or c.groups != first.groups or c.dilation != (1, 1):
            return "the branches differ in stride or groups, or are dilated"
        if (c.in_channels, c.out_channels) != (first.in_channels, first.out_channels):
            return "the branches differ in channels"
        if c.kernel_size[0] % 2 == 0 or c.kernel_size[1] % 2 == 0 or _offsets(c) != _offsets(first):
            return "kernels are even or their padding does not align"
    if len(convs) < len(branches):  # identity branches
        if first.stride != (1, 1) or first.in_channels != first.out_channels or _offsets(first) != (0, 0):
            return "an identity branch needs stride 1, equal channels and 'same' padding"
    return None


def _fuse(branches: list[_Branch]) -> nn.Conv2d:
    convs = [b.conv for b in branches if b.conv is not None]
    first = convs[0]
    kernel = (max(c.kernel_size[0] for c in convs), max(c.kernel_size[1] for c in convs))
    off = _offsets(first)
    fused = nn.Conv2d(first.in_channels, first.out_channels, kernel, first.stride,
                      (kernel[0] // 2 - off[0], kernel[1] // 2 - off[1]), groups=first.groups, bias=True)
    weight = torch.zeros_like(fused.weight)
    bias = torch.zeros(first.out_channels)
    for b in branches:
        if b.conv is not None:
            weight += pad_kernel(b.weight, kernel)
            bias += b.bias if b.bias is not None else 0
        else:
            ident = identity_kernel(first.out_channels, first.groups, kernel)
            if b.bn is None:
                weight += ident
            else:
                scale, shift = bn_scale_shift(b.bn)
                weight += ident * scale.reshape(-1, 1, 1, 1)
                bias += shift
    fused.weight = nn.Parameter(weight)
    fused.bias = nn.Parameter(bias)
    return fused


def _where(leaves: list, node: fx.Node) -> str:
    """Where a sum is, as the model names it: the module path its branches share (else the
    graph's name for the sum)."""
    paths = [leaf.target.split(".") for leaf in leaves if isinstance(leaf, fx.Node) and leaf.op == "call_module"]
    shared = []
    for parts in zip(*paths) if paths else ():
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    return ".".join(shared) if shared else node.name


def fuse_branches(gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
    """Fuse in place; returns (fused, skipped) records."""
    fused, skipped = [], []
    for node in list(gm.graph.nodes):
        if not is_add(node) or (len(node.users) == 1 and is_add(next(iter(node.users)))):
            continue
        leaves = [leaf for leaf in _leaves(node) if not (isinstance(leaf, (int, float)) and leaf == 0)]
        branches = [_branch(gm, leaf) for leaf in leaves]
        inputs = [b.x for b in branches if b is not None]
        if not any(inputs.count(x) > 1 for x in inputs):
            continue  # no two linear branches over one input (a residual add around a block): not a candidate
        reason = _check(leaves, branches)
        if reason:
            skipped.append({"at": _where(leaves, node), "reason": reason})
            continue
        x = next(b.x for b in branches if b is not None)
        branches = [b if b is not None else _Branch(x) for b in branches]
        with torch.no_grad():
            conv = _fuse(branches)
        where = _where(leaves, node)
        replace_with_module(gm, node, conv, (x,), f"{where}.fused" if where != node.name else f"fused_{node.name}")
        gm.graph.eliminate_dead_code()
        fused.append({"pattern": f"{len(branches)} branches", "at": where,
                      "kernel": list(conv.kernel_size), "groups": conv.groups, "stride": list(conv.stride)})
    return fused, skipped


@PASSES.register("fuse_branches")
class FuseBranches(GraphPass):
    """Sums of parallel Conv(+BN) / BN / identity branches become one Conv2d."""

    name = "fuse_branches"

    def rewrite(self, gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
        return fuse_branches(gm)
