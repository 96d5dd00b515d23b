"""torch.fx helpers shared by the reparameterization passes: tracing and kernel maths.

The kernel maths are plain functions of tensors (BatchNorm folding, identity kernels,
centred padding), so tests can check them against an independent computation.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from edgesdk.errors import UntraceableError

from .base import Pass, PassResult

__all__ = [
    "trace",
    "canonicalize",
    "module_of",
    "is_add",
    "is_sub",
    "constant_of",
    "channel_scale",
    "regroup",
    "uses_running_stats",
    "bn_scale_shift",
    "fold_bn",
    "identity_kernel",
    "pad_kernel",
    "replace_with_module",
    "count_parameters",
    "GraphPass",
]


class _Tracer(fx.Tracer):
    """fx's tracer, with BatchNorm subclasses that keep BatchNorm's forward as leaves (their
    forward checks input ranks in Python, which symbolic tracing cannot follow), and modules of
    the ``opaque`` classes as leaves too. ``failed_in`` is the innermost submodule being traced when
    tracing failed (None when the root's own forward failed)."""

    def __init__(self, opaque: frozenset[type]) -> None:
        super().__init__()
        self.opaque, self.failed_in = opaque, None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        inherits_forward = isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward
        return inherits_forward or type(m) in self.opaque or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the failure first
                self.failed_in = m
            raise


def trace(model: nn.Module) -> fx.GraphModule:
    """A GraphModule of ``model`` (symbolic tracing), or an UntraceableError saying why not.

    A submodule whose forward fx cannot follow (Hugging Face's ResNet embeddings check the
    channel count in Python) is kept whole, with every module of its class, as one opaque call;
    ``gm.meta["opaque"]`` names those classes. Only a root that cannot be traced is an error.
    """
    if isinstance(model, fx.GraphModule):  # an earlier pass's: its opaque calls are still opaque
        gm = fx.GraphModule(model, model.graph)
        gm.meta.update(model.meta)
        return gm
    opaque: frozenset[type] = frozenset()
    while True:
        tracer = _Tracer(opaque)
        try:
            gm = fx.GraphModule(model, tracer.trace(model), type(model).__name__)
        except Exception as e:
            culprit = type(tracer.failed_in) if tracer.failed_in is not None else None
            if culprit is None or culprit in opaque:
                raise UntraceableError(type(model).__name__, f"{type(e).__name__}: {e}") from e
            opaque |= {culprit}
            continue
        gm.meta["opaque"] = sorted(c.__name__ for c in opaque)
        return gm


_BatchNorm = nn.modules.batchnorm._BatchNorm
_BN_FUNCTIONS = (nn.functional.batch_norm, torch.batch_norm)
_CHECKS = (torch._assert,)
_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def canonicalize(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrite ``gm`` in place so the passes match what a layer computes, not how it is written:
    shape checks (``torch._assert``) go, identities in eval (Identity, Dropout) are bypassed, and
    functional batch norms in eval (``F.batch_norm`` inside timm's BatchNormAct2d, for example)
    become BatchNorm modules. Needs shapes in ``meta["tensor_meta"]``; returns counts."""
    counts = {"shape_checks": 0, "identities": 0, "functional_batchnorms": 0}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _CHECKS:
            gm.graph.erase_node(node)
            counts["shape_checks"] += 1
        elif isinstance(module_of(gm, node), _IDENTITIES) and not module_of(gm, node).training and node.args:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            counts["identities"] += 1
        elif node.op == "call_function" and node.target in _BN_FUNCTIONS:
            bn = _batchnorm_module(gm, node)
            if bn is not None:
                replace_with_module(gm, node, bn, (node.args[0],), _owner(node) or f"{node.name}_module")
                gm.graph.erase_node(node)
                counts["functional_batchnorms"] += 1
    gm.graph.eliminate_dead_code()
    return counts


def _batchnorm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The eval BatchNorm module computing a functional batch norm node, or None when it is not
    one in eval with constant statistics."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    args = {**dict(zip(names, node.args)), **node.kwargs}
    if args.get("training", False) is not False:
        return None
    tensors = {}
    for key in ("running_mean", "running_var", "weight", "bias"):
        value = args.get(key)
        if isinstance(value, fx.Node):
            if value.op != "get_attr":
                return None
            value = _attr(gm, value.target)
        tensors[key] = value
    if tensors["running_mean"] is None or tensors["running_var"] is None or (
            tensors["weight"] is None and tensors["bias"] is not None):
        return None
    meta = args["input"].meta.get("tensor_meta") if isinstance(args["input"], fx.Node) else None
    rank = len(meta.shape) if meta is not None else 4
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if kind is None:
        return None
    bn = kind(tensors["running_mean"].numel(), eps=float(args.get("eps", 1e-5)), affine=tensors["weight"] is not None)
    with torch.no_grad():
        bn.running_mean.copy_(tensors["running_mean"])
        bn.running_var.copy_(tensors["running_var"])
        if bn.affine:
            bn.weight.copy_(tensors["weight"])
            bn.bias.copy_(tensors["bias"] if tensors["bias"] is not None else torch.zeros_like(bn.bias))
    return bn.eval()


def _owner(node: fx.Node) -> str | None:
    """The module a functional batch norm belongs to: the owner of its running mean."""
    mean = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
    if isinstance(mean, fx.Node) and mean.op == "get_attr":
        return mean.target.rpartition(".")[0] + ".bn" if "." in mean.target else None
    return None


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name).detach()


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a call_module node calls, else None."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_op(node: fx.Node, functions: tuple, methods: tuple) -> bool:
    if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("out") is not None:
        return False
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def is_add(node: fx.Node) -> bool:
    """``a + b`` written as an operator, ``torch.add`` or ``Tensor.add`` (no alpha)."""
    return _is_op(node, (operator.add, torch.add, operator.iadd), ("add", "add_"))


def is_sub(node: fx.Node) -> bool:
    """``a - b`` written as an operator, ``torch.sub`` or ``Tensor.sub`` (no alpha)."""
    return _is_op(node, (operator.sub, torch.sub, operator.isub), ("sub", "sub_"))


_RESHAPES = ("view", "reshape", "unsqueeze", "expand_as", "flatten", "squeeze")


def constant_of(gm: fx.GraphModule, value) -> torch.Tensor | None:
    """The tensor a node always holds (a parameter or buffer, possibly reshaped), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, fx.Node):
        return None
    if value.op == "get_attr":
        return _attr(gm, value.target)
    if value.op == "call_method" and value.target in _RESHAPES and value.target != "expand_as":
        inner = constant_of(gm, value.args[0])
        if inner is not None and all(isinstance(a, int) or isinstance(a, (tuple, list)) for a in value.args[1:]):
            return getattr(inner, value.target)(*value.args[1:])
    return None


def channel_scale(gm: fx.GraphModule, node: fx.Node, channels: int) -> tuple[torch.Tensor, fx.Node] | None:
    """For ``x * s`` (or ``s * x``, ``Tensor.mul``) with ``s`` a constant per channel of an
    (N, C, H, W) ``x`` (shape (C,1,1), (1,C,1,1) or a scalar): (s as C values, x); else None."""
    if not ((node.op == "call_function" and node.target in (operator.mul, torch.mul, operator.imul))
            or (node.op == "call_method" and node.target in ("mul", "mul_"))) or len(node.args) != 2:
        return None
    for const_arg, x in (node.args, node.args[::-1]):
        s = constant_of(gm, const_arg)
        if s is None or not isinstance(x, fx.Node):
            continue
        if s.numel() == 1:
            return s.reshape(1).expand(channels).clone(), x
        if s.numel() == channels and s.dim() >= 3 and s.shape[-1] == s.shape[-2] == 1 and s.shape[-3] == channels:
            return s.reshape(channels), x
    return None


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


def regroup(weight: torch.Tensor, groups: int, to: int) -> torch.Tensor:
    """The kernel of a conv with ``groups`` written for ``to`` groups (``to`` divides ``groups``):
    zeros where an output's new group reads inputs its old group did not."""
    if to == groups:
        return weight
    out_c, per_in = weight.shape[:2]
    in_c, per_out = per_in * groups, out_c // groups
    new_per_in = in_c // to
    out = weight.new_zeros(out_c, new_per_in, *weight.shape[2:])
    for o in range(out_c):
        first = (o // per_out) * per_in - (o // (out_c // to)) * new_per_in  # old group's first input, new index
        out[o, first:first + per_in] = weight[o]
    return out


def pad_kernel(weight: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Zero-pad an odd kernel to the odd size ``kernel``, keeping it centred."""
    dh, dw = (kernel[0] - weight.shape[2]) // 2, (kernel[1] - weight.shape[3]) // 2
    return nn.functional.pad(weight, (dw, dw, dh, dh))


def replace_with_module(gm: fx.GraphModule, old: fx.Node, module: nn.Module, inputs: tuple,
                        name: str) -> fx.Node:
    """Insert ``module`` called on ``inputs`` before ``old`` and route ``old``'s users to it.

    ``name`` may be a dotted path (``blocks.0.conv_bn``), so rewritten layers keep the place in
    the model the report names; a number is appended when it is taken.
    """
    target, i = name, 0
    while _exists(gm, target):
        i += 1
        target = f"{name}_{i}"
    if not gm.add_submodule(target, module):  # a parent on the path is not a module: keep it flat
        target = name.replace(".", "_")
        while _exists(gm, target):
            target += "_"
        gm.add_submodule(target, module)
    with gm.graph.inserting_before(old):
        new = gm.graph.call_module(target, inputs)
    old.replace_all_uses_with(new)
    return new


def _exists(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_submodule(target)
        return True
    except AttributeError:
        owner, _, attr = target.rpartition(".")
        try:
            return hasattr(gm.get_submodule(owner) if owner else gm, attr)
        except AttributeError:
            return False


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
        canonical = canonicalize(gm)
        done, skipped = self.rewrite(gm)
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        after = count_parameters(gm)
        notes = {"rewrites": done, "skipped": skipped, "canonicalized": canonical,
                 **({"opaque": gm.meta["opaque"]} if gm.meta.get("opaque") else {}),
                 "parameters": [before[0], after[0]], "bytes": [before[1], after[1]]}
        return PassResult(classifier.with_model(gm) if done else classifier, bool(done), notes)
