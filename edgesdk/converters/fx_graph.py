"""torch.fx helpers shared by the reparameterization passes: tracing and kernel maths.

The kernel maths are plain functions of tensors (BatchNorm folding, identity kernels,
centred padding), so tests can check them against an independent computation.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from edgesdk.errors import PassError

from .base import Pass, PassResult

__all__ = [
    "trace",
    "module_of",
    "is_add",
    "uses_running_stats",
    "bn_scale_shift",
    "fold_bn",
    "identity_kernel",
    "pad_kernel",
    "replace_with_module",
    "count_parameters",
    "GraphPass",
]


def trace(model: nn.Module) -> fx.GraphModule:
    """A GraphModule of ``model`` (symbolic tracing), or a PassError saying why not."""
    if isinstance(model, fx.GraphModule):
        return fx.GraphModule(model, model.graph)
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        raise PassError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}); "
            "skip reparameterization with passes=[] or make forward() traceable"
        ) from e


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a call_module node calls, else None."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_add(node: fx.Node) -> bool:
    """``a + b`` written as an operator, ``torch.add`` or ``Tensor.add`` (no alpha)."""
    if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("out") is not None:
        return False
    if node.op == "call_function":
        return node.target in (operator.add, torch.add, operator.iadd)
    return node.op == "call_method" and node.target in ("add", "add_")


def uses_running_stats(bn: nn.Module) -> bool:
    """True for a BatchNorm in eval mode with running statistics: an affine map, foldable."""
    return not bn.training and bn.running_mean is not None


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm: y = x * scale + shift."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean * scale


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Weight and bias of ``bn(layer(x))`` for a conv or linear layer (output channel first)."""
    scale, shift = bn_scale_shift(bn)
    bias = torch.zeros_like(scale) if bias is None else bias
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * scale.reshape(shape), bias * scale + shift


def identity_kernel(channels: int, groups: int, kernel: tuple[int, int]) -> torch.Tensor:
    """The grouped conv kernel (channels, channels/groups, kh, kw) that returns its input."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, *kernel)
    for c in range(channels):
        w[c, c % per_group, kernel[0] // 2, kernel[1] // 2] = 1.0
    return w


def pad_kernel(weight: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Zero-pad an odd kernel to the odd size ``kernel``, keeping it centred."""
    dh, dw = (kernel[0] - weight.shape[2]) // 2, (kernel[1] - weight.shape[3]) // 2
    return nn.functional.pad(weight, (dw, dw, dh, dh))


def replace_with_module(gm: fx.GraphModule, old: fx.Node, module: nn.Module, inputs: tuple,
                        name: str) -> fx.Node:
    """Insert ``module`` called on ``inputs`` before ``old`` and route ``old``'s users to it."""
    target = name
    i = 0
    while hasattr(gm, target):
        i += 1
        target = f"{name}_{i}"
    gm.add_submodule(target, module)
    with gm.graph.inserting_before(old):
        new = gm.graph.call_module(target, inputs)
    old.replace_all_uses_with(new)
    return new


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters and buffers as numbers, their bytes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


class GraphPass(Pass):
    """A pass that rewrites a traced copy of an image network in place.

    Subclasses implement ``rewrite(gm) -> (done, skipped)``; shapes from one example input
    are in each node's ``meta["tensor_meta"]``.
    """

    kinds = ("image",)

    def rewrite(self, gm: fx.GraphModule) -> tuple[list[dict], list[dict]]:
        raise NotImplementedError

    def __call__(self, classifier) -> PassResult:
        from torch.fx.passes.shape_prop import ShapeProp

        gm = trace(copy.deepcopy(classifier.model))
        pre = classifier.spec.preprocessing
        ShapeProp(gm).propagate(torch.zeros(1, pre.channels, *pre.size))
        before = count_parameters(gm)
        done, skipped = self.rewrite(gm)
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        after = count_parameters(gm)
        notes = {"rewrites": done, "skipped": skipped, "parameters": [before[0], after[0]],
                 "bytes": [before[1], after[1]]}
        return PassResult(classifier.with_model(gm) if done else classifier, bool(done), notes)
