"""Fuse parallel linear branches over one input into a single conv (RepVGG, MobileOne, ACNet,
FastViT's RepMixer).

Found by pattern on the traced graph, not by class name: a tree of sums and differences (``+``,
``-``, ``torch.add``, ``Tensor.sub``, ``sum(...)``), scaled per channel anywhere by constants
(layer scale γ), whose leaves are each a Conv2d, a Conv2d followed by BatchNorm2d, an
AvgPool2d with or without a BatchNorm, a BatchNorm2d alone (identity branch) or the input
itself, all over the same input, with one stride and kernels that centre-pad to a common size
(groups may differ: the fused conv takes their greatest common divisor). Anything else (a
nonlinearity inside a branch, mixed strides, misaligned padding) is left untouched and listed
under ``skipped`` with the reason. Exact up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from .base import PASSES
from .fx_graph import (
    GraphPass,
    bn_scale_shift,
    channel_scale,
    fold_bn,
    identity_kernel,
    is_add,
    is_sub,
    module_of,
    pad_kernel,
    regroup,
    replace_with_module,
    uses_running_stats,
)

__all__ = ["FuseBranches"]


@dataclass
class _Branch:
    """One leaf of the sum: a conv kernel over ``x`` (None for identity) with the conv that gives
    its geometry, its bias, the BatchNorm of an identity, and its coefficient per output channel."""

    x: fx.Node
    conv: nn.Conv2d | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    bn: nn.BatchNorm2d | None = None
    coef: torch.Tensor | None = None


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return meta.shape[1] if meta is not None and len(meta.shape) == 4 else None


def _scaling(gm: fx.GraphModule, node) -> tuple[torch.Tensor, fx.Node] | None:
    channels = _channels(node) if isinstance(node, fx.Node) else None
    return channel_scale(gm, node, channels) if channels else None


def _times(coef: torch.Tensor | None, factor: torch.Tensor) -> torch.Tensor:
    return factor if coef is None else coef * factor


def _terms(gm: fx.GraphModule, node: fx.Node, coef: torch.Tensor | None = None,
           inner: set | None = None) -> list[tuple]:
    """(coefficient per channel or None, leaf) of each leaf of a sum/difference/scaling tree;
    the tree's own nodes are added to ``inner``."""
    if inner is not None:
        inner.add(node)
    scaled = _scaling(gm, node)
    if scaled is not None:
        factor, below = scaled
        return _terms(gm, below, _times(coef, factor), inner) if _inner(gm, below) else [(_times(coef, factor), below)]
    out = []
    for k, arg in enumerate(node.args[:2]):
        sign = coef if k == 0 or is_add(node) else _times(coef, torch.tensor(-1.0))
        out += _terms(gm, arg, sign, inner) if _inner(gm, arg) else [(sign, arg)]
    return out


def _inner(gm: fx.GraphModule, node) -> bool:
    return isinstance(node, fx.Node) and len(node.users) == 1 and (
        is_add(node) or is_sub(node) or _scaling(gm, node) is not None)


def _avg_conv(pool: nn.AvgPool2d, channels: int) -> nn.Conv2d | None:
    """The depthwise conv an AvgPool2d computes (zero padding counted), or None when it is not one."""
    if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override is not None:
        return None
    conv = nn.Conv2d(channels, channels, pool.kernel_size, pool.stride or pool.kernel_size, pool.padding,
                     groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (conv.kernel_size[0] * conv.kernel_size[1]))
    return conv


def _linear(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    """The Conv2d a node computes from its input: a Conv2d, or an AvgPool2d as a depthwise conv."""
    m = module_of(gm, node)
    if isinstance(m, nn.Conv2d):
        return m
    if isinstance(m, nn.AvgPool2d) and _channels(node):
        return _avg_conv(m, _channels(node))
    return None


def _branch(gm: fx.GraphModule, leaf) -> _Branch | None:
    """The leaf as a linear branch over its input; None for anything else, and for a layer whose
    output is also used elsewhere (the input of the sum itself, for one)."""
    if not isinstance(leaf, fx.Node) or len(leaf.users) != 1:
        return None
    m = module_of(gm, leaf)
    conv = _linear(gm, leaf)
    if conv is not None:
        return _Branch(leaf.args[0], conv, conv.weight, conv.bias)
    if isinstance(m, nn.BatchNorm2d) and uses_running_stats(m):
        inner = leaf.args[0]
        conv = _linear(gm, inner)
        if conv is not None and len(inner.users) == 1:
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
            return f"branch {what!r} is not a Conv/BatchNorm/AvgPool of the shared input"
        if b is not None and b.x is not x:
            return "the branches read different inputs"
    first = convs[0]
    for c in convs:
        if isinstance(c.padding, str) or c.padding_mode != "zeros":
            return "padding given as a string or not zeros"
        if c.stride != first.stride or c.dilation != (1, 1):
            return "the branches differ in stride, or are dilated"
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
    groups = math.gcd(*(c.groups for c in convs))
    kernel = (max(c.kernel_size[0] for c in convs), max(c.kernel_size[1] for c in convs))
    off = _offsets(first)
    fused = nn.Conv2d(first.in_channels, first.out_channels, kernel, first.stride,
                      (kernel[0] // 2 - off[0], kernel[1] // 2 - off[1]), groups=groups, bias=True)
    weight = torch.zeros_like(fused.weight)
    bias = torch.zeros(first.out_channels)
    for b in branches:
        if b.conv is not None:
            w = regroup(pad_kernel(b.weight, kernel), b.conv.groups, groups)
            shift = b.bias if b.bias is not None else torch.zeros(first.out_channels)
        else:
            w = identity_kernel(first.out_channels, groups, kernel)
            scale, shift = bn_scale_shift(b.bn) if b.bn is not None else (None, torch.zeros(first.out_channels))
            w = w if scale is None else w * scale.reshape(-1, 1, 1, 1)
        coef = torch.ones(first.out_channels) if b.coef is None else b.coef.expand(first.out_channels)
        weight += w * coef.reshape(-1, 1, 1, 1)
        bias += shift * coef
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


def _composed(inner: nn.Conv2d, outer: nn.Conv2d) -> nn.Conv2d | str | None:
    """The conv computing ``outer(inner(x))`` for a 1x1 ``inner`` (DBB's 1x1 -> kxk), the reason it
    is not exact or not cheaper, or None when the pair is no such chain."""
    if inner.kernel_size != (1, 1) or inner.stride != (1, 1) or inner.padding != (0, 0) or inner.groups != 1 \
            or outer.groups != 1 or outer.dilation != (1, 1) or isinstance(outer.padding, str):
        return None
    if outer.padding != (0, 0) and inner.bias is not None and inner.bias.abs().max() > 0:
        return "a 1x1 conv's bias would meet the next conv's zero padding"
    k = outer.kernel_size[0] * outer.kernel_size[1]
    if outer.out_channels * inner.in_channels * k > inner.in_channels * inner.out_channels + outer.in_channels * \
            outer.out_channels * k:
        return "one conv for the 1x1 -> kxk chain would cost more than the two"
    conv = nn.Conv2d(inner.in_channels, outer.out_channels, outer.kernel_size, outer.stride, outer.padding, bias=True)
    w1 = inner.weight[:, :, 0, 0]
    conv.weight = nn.Parameter(torch.einsum("omhw,mi->oihw", outer.weight, w1))
    b1 = inner.bias if inner.bias is not None else torch.zeros(inner.out_channels)
    b2 = outer.bias if outer.bias is not None else torch.zeros(outer.out_channels)
    conv.bias = nn.Parameter(b2 + torch.einsum("omhw,m->o", outer.weight, b1))
    return conv


def compose_chains(gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
    """Replace 1x1 conv -> conv chains (no nonlinearity between) by one conv where exact and cheaper."""
    done, skipped = [], []
    for node in list(gm.graph.nodes):
        outer, inner_node = module_of(gm, node), node.args[0] if node.args else None
        if not isinstance(outer, nn.Conv2d) or not isinstance(inner_node, fx.Node) or len(inner_node.users) != 1:
            continue
        inner = module_of(gm, inner_node)
        with torch.no_grad():
            conv = _composed(inner, outer) if isinstance(inner, nn.Conv2d) else None
        if isinstance(conv, str):
            skipped.append({"at": node.target, "reason": conv})
        elif conv is not None:
            replace_with_module(gm, node, conv, inner_node.args, f"{node.target}_chain")
            gm.graph.erase_node(node)
            gm.graph.erase_node(inner_node)
            done.append({"pattern": "Conv2d 1x1 -> Conv2d", "at": node.target, "kernel": list(conv.kernel_size),
                         "groups": 1, "stride": list(conv.stride)})
    return done, skipped


def fuse_branches(gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
    """Compose 1x1 -> kxk chains, then fuse branch sums, in place; returns (fused, skipped) records.

    Sums are tried outermost first; when a whole tree cannot fuse (a residual add around a
    RepGhost module, say), the sums inside it are tried on their own. A tree that fails is
    reported once, at its outermost sum, unless a sum inside it fused.
    """
    chains, skipped = compose_chains(gm)
    fused: list[dict] = []
    handled: set = set()
    failures: list[tuple[set, dict]] = []
    fused_roots = set()
    for node in reversed(list(gm.graph.nodes)):
        if node in handled or not (is_add(node) or is_sub(node)):
            continue
        inner: set = set()
        terms = [(c, leaf) for c, leaf in _terms(gm, node, inner=inner)
                 if not (isinstance(leaf, (int, float)) and leaf == 0)]
        leaves = [leaf for _, leaf in terms]
        branches = [_branch(gm, leaf) for leaf in leaves]
        inputs = [b.x for b in branches if b is not None]
        if not any(inputs.count(x) > 1 for x in inputs):
            continue  # no two linear branches over one input (a residual add around a block): not a candidate
        reason = _check(leaves, branches)
        if reason:
            if not any(node in tree for tree, _ in failures):
                failures.append((inner, {"at": _where(leaves, node), "reason": reason}))
            continue
        handled |= inner
        fused_roots.add(node)
        x = next(b.x for b in branches if b is not None)
        branches = [b if b is not None else _Branch(x) for b in branches]
        for (coef, _), b in zip(terms, branches):
            b.coef = coef
        with torch.no_grad():
            conv = _fuse(branches)
        where = _where(leaves, node)
        replace_with_module(gm, node, conv, (x,), f"{where}.fused" if where != node.name else f"fused_{node.name}")
        fused.append({"pattern": f"{len(branches)} branches" + (", scaled" if any(c is not None for c, _ in terms)
                                                                 else ""),
                      "at": where, "kernel": list(conv.kernel_size), "groups": conv.groups,
                      "stride": list(conv.stride)})
    gm.graph.eliminate_dead_code()
    skipped += [record for tree, record in reversed(failures) if not tree & fused_roots]
    return chains + fused[::-1], skipped


@PASSES.register("fuse_branches")
class FuseBranches(GraphPass):
    """Sums and differences of parallel Conv(+BN) / AvgPool(+BN) / BN / identity branches, scaled
    per channel or not, become one Conv2d."""

    name = "fuse_branches"

    def rewrite(self, gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
        return fuse_branches(gm)
