"""Reparameterization passes on blocks written in styles the passes were not written for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgesdk import ImageClassifier, ImagePreprocessing
from edgesdk.converters import run_passes
from edgesdk.converters.fx_graph import bn_scale_shift, identity_kernel
from edgesdk.errors import PassError

PASSES = ["fold_batchnorm", "fuse_branches"]


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, then eval()."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def convbn(cin, cout, k, stride=1, groups=1, padding=None, bias=False, affine=True):
    pad = tuple(x // 2 for x in k) if isinstance(k, tuple) else k // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad if padding is None else padding, groups=groups,
                                   bias=bias), nn.BatchNorm2d(cout, affine=affine))


class RepVGGish(nn.Module):
    """RepVGG written with other names, branch order and torch.add."""

    def __init__(self, c, stride=1, groups=1):
        super().__init__()
        self.skip = nn.BatchNorm2d(c) if stride == 1 else None
        self.pointwise = convbn(c, c, 1, stride, groups, padding=0)
        self.dense = convbn(c, c, 3, stride, groups)
        self.act = nn.ReLU()

    def forward(self, x):
        y = torch.add(self.pointwise(x), self.dense(x))
        if self.skip is not None:
            y = y + self.skip(x)
        return self.act(y)


class MobileOneish(nn.Module):
    """k over-parameterized branches summed with sum(), a 1x1 scale branch and identity BN."""

    def __init__(self, c, k=3, kernel=3, groups=1):
        super().__init__()
        self.branches = nn.ModuleList(convbn(c, c, kernel, 1, groups) for _ in range(k))
        self.scale = convbn(c, c, 1, 1, groups, padding=0)
        self.idbn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.idbn(x) + self.scale(x) + sum(b(x) for b in self.branches))


class ACBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.square, self.hor, self.ver = convbn(c, c, 3), convbn(c, c, (1, 3)), convbn(c, c, (3, 1))

    def forward(self, x):
        return self.ver(x).add(self.square(x) + self.hor(x))


class Net(nn.Module):
    def __init__(self, *blocks, c=8, classes=5):
        super().__init__()
        self.stem = convbn(3, c, 3, 1, bias=True)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 16), nn.BatchNorm1d(16),
                                  nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def classifier(net: nn.Module) -> ImageClassifier:
    pre = ImagePreprocessing(size=(24, 24), mean=(0.5,) * 3, std=(0.25,) * 3)
    return ImageClassifier.create(randomize_bn(net), [str(i) for i in range(5)], pre)


def check_exact(model: ImageClassifier, names=PASSES):
    fused, records = run_passes(model, names)
    x = torch.randint(0, 256, (4, 31, 27, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref, out = model.graph()(x)[0], fused.graph()(x)[0]
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), (out - ref).abs().max()
    return fused, records


def module_types(model):
    return [type(m).__name__ for m in model.modules()]


@pytest.mark.parametrize("block", [
    lambda: RepVGGish(8), lambda: RepVGGish(8, stride=2), lambda: RepVGGish(8, groups=4),
    lambda: RepVGGish(8, groups=8), lambda: MobileOneish(8), lambda: MobileOneish(8, k=4, groups=8),
    lambda: MobileOneish(8, k=2, kernel=5), lambda: ACBlock(8),
], ids=["repvgg", "repvgg-stride2", "repvgg-grouped", "repvgg-depthwise", "mobileone", "mobileone-dw",
        "mobileone-5x5", "acnet"])
def test_multi_branch_blocks_fuse_to_one_conv(block):
    model = classifier(Net(block(), block() if not isinstance(block(), RepVGGish) or block().skip else RepVGGish(8)))
    fused, records = check_exact(model)
    assert "BatchNorm2d" not in module_types(fused.model)
    assert records[1]["changed"] and len(records[1]["rewrites"]) == 2
    assert records[1]["parameters"][1] < records[1]["parameters"][0]


def test_conv_bn_variants_fold():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=3, dilation=2, bias=True), nn.BatchNorm2d(8, affine=False),
        nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1, bias=False), nn.BatchNorm2d(8),
        nn.Conv2d(8, 16, 1, groups=2), nn.BatchNorm2d(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 5), nn.BatchNorm1d(5))
    fused, records = check_exact(classifier(net), ["fold_batchnorm"])
    assert [r["pattern"] for r in records[0]["rewrites"]] == [
        "Conv2d+BatchNorm2d", "Conv2d+BatchNorm2d", "Conv2d+BatchNorm2d", "Linear+BatchNorm1d"]
    assert not any("BatchNorm" in t for t in module_types(fused.model))


class Unfusable(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.c, self.d, self.k = convbn(c, c, 3), nn.Sequential(convbn(c, c, 3), nn.ReLU()), convbn(c, c, 1, padding=0)
        self.e, self.f = convbn(c, c, 3), convbn(c, c, 3)
        self.g, self.h = convbn(c, c, 1, padding=0), convbn(c, c, 3, stride=2, padding=13)
        self.i, self.j = convbn(c, c, 2, padding=1), convbn(c, c, 4, padding=2)
        self.out = nn.Conv2d(4 * c, c, 1)

    def forward(self, x):
        y = self.c(x) + self.d(x) + self.k(x)  # a nonlinearity inside a branch
        z = self.e(x) + self.f(torch.relu(x))  # layers over different inputs: not a candidate
        w = self.g(x) + self.h(x)  # strides 1 and 2 with outputs of one shape
        v = self.i(x) + self.j(x)  # even kernels
        return self.out(torch.cat([y, z, w, v[:, :, :-1, :-1]], 1))


class Residual(nn.Module):
    """A ResNet basic block: the sum of a nonlinear block and its input is not a branch sum."""

    def __init__(self, c=8):
        super().__init__()
        self.body = nn.Sequential(convbn(c, c, 3), nn.ReLU(), convbn(c, c, 3))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def test_what_cannot_fuse_is_left_and_reported():
    fused, records = check_exact(classifier(Net(Unfusable())))
    reasons = " | ".join(s["reason"] for s in records[1]["skipped"])
    for expected in ("not a Conv/BatchNorm/AvgPool of the shared input", "stride", "even"):
        assert expected in reasons
    assert "different inputs" not in reasons  # two linear layers over two inputs are no branch sum: not listed
    assert not records[1]["changed"]
    assert {s["at"] for s in records[1]["skipped"]} == {"blocks.0"}  # named by module path, not graph node


def test_residual_adds_around_blocks_are_not_reported_as_skips():
    fused, records = check_exact(classifier(Net(Residual(), Residual())))
    assert records[1]["skipped"] == [] and not records[1]["changed"]


def test_training_mode_batchnorm_is_refused():
    model = classifier(Net(RepVGGish(8)))
    model.model.stem[1].train()
    _, records = run_passes(model, ["fold_batchnorm"])
    assert any("training mode" in s["reason"] for s in records[0]["skipped"])


def test_idempotent_and_deterministic():
    model = classifier(Net(MobileOneish(8), ACBlock(8)))
    once, _ = run_passes(model, PASSES)
    twice, records = run_passes(once, PASSES)
    assert not any(r["changed"] for r in records)
    again, _ = run_passes(model, PASSES)
    for (k1, v1), (k2, v2) in zip(once.model.state_dict().items(), again.model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_kernel_maths_against_modules():
    bn = randomize_bn(nn.BatchNorm2d(6))
    x = torch.randn(2, 6, 5, 5)
    scale, shift = bn_scale_shift(bn)
    assert torch.allclose(bn(x), x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), atol=1e-6)
    w = identity_kernel(6, 3, (3, 3))
    assert torch.equal(nn.functional.conv2d(x, w, padding=1, groups=3), x)


def test_demo_cnn_is_fused_and_exported(tmp_path):
    import edgesdk
    from edgesdk.demo import digits_arrays, digits_classifier

    model = digits_classifier()
    randomize_bn(model.model)
    images, labels = digits_arrays()
    np.savez(tmp_path / "d.npz", images=images[:40], labels=labels[:40])
    result = edgesdk.convert(model, tmp_path / "out", verify_on=tmp_path / "d.npz", quiet=True)
    fold, fuse = result.passes
    assert result.ok and len(fold["rewrites"]) == 5 and len(fuse["rewrites"]) == 1
    for record in (fold, fuse):
        assert record["max_abs_diff"] <= 1e-5 * record["max_abs_logit"]
    assert result.bundles[0].parity.max_abs_diff <= 1e-4


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's shape: a BatchNorm2d subclass that calls F.batch_norm itself, with a rank check,
    a drop and the activation inside."""

    def __init__(self, c, apply_act=True):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = nn.ReLU() if apply_act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class PlainSubclassBN(nn.BatchNorm2d):
    """A subclass that keeps BatchNorm's own forward."""


class ConvNormAct(nn.Module):
    def __init__(self, cin, cout, k, apply_act=False, norm=BatchNormAct2d):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = norm(cout, apply_act=apply_act) if norm is BatchNormAct2d else norm(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class TimmRepVggBlock(nn.Module):
    """timm's RepVggBlock shape: identity BatchNormAct2d without act, 3x3 and 1x1 ConvNormAct
    branches, drop_path as Identity, activation after the sum."""

    def __init__(self, c):
        super().__init__()
        self.identity = BatchNormAct2d(c, apply_act=False)
        self.conv_kxk = ConvNormAct(c, c, 3)
        self.conv_1x1 = ConvNormAct(c, c, 1)
        self.drop_path = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        identity = self.identity(x)
        x = self.conv_1x1(x) + self.conv_kxk(x)
        x = self.drop_path(x) + identity
        return self.act(x)


def test_batchnorm_is_matched_by_what_it_computes_not_by_class():
    net = nn.Sequential(ConvNormAct(3, 8, 3, apply_act=True), ConvNormAct(8, 8, 3, norm=PlainSubclassBN),
                        nn.Dropout(0.3), TimmRepVggBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    fused, records = check_exact(classifier(net))
    canonical = records[0]["canonicalized"]
    assert canonical["functional_batchnorms"] == 4 and canonical["shape_checks"] == 4
    assert canonical["identities"] >= 3  # Dropout in eval, drop and drop_path as Identity
    assert sorted(r["pattern"] for r in records[0]["rewrites"]) == ["Conv2d+BatchNorm2d"] * 3 + [
        "Conv2d+PlainSubclassBN"]
    assert len(records[1]["rewrites"]) == 1  # the three branches of the RepVGG block: one conv
    assert not any("BatchNorm" in t for t in module_types(fused.model))
    assert sum(isinstance(m, nn.Conv2d) for m in fused.model.modules()) == 3


class MobileOneLinear(nn.Module):
    """timm's MobileOneBlock without its activation: depthwise kxk and 1x1 conv+BN and an identity BN."""

    def __init__(self, c, kernel):
        super().__init__()
        self.conv_kxk, self.conv_scale = convbn(c, c, kernel, 1, c), convbn(c, c, 1, 1, c, padding=0)
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.conv_scale(x) + self.identity(x) + self.conv_kxk(x)


class RepMixer(nn.Module):
    """FastViT's RepMixer: x + γ·(mixer(x) − norm(x)), the mixer a depthwise MobileOne block
    (kxk and 1x1 conv+BN branches and an identity BN), the norm a BatchNorm alone."""

    def __init__(self, c, kernel=3):
        super().__init__()
        self.mixer = MobileOneLinear(c, kernel)
        self.norm = nn.BatchNorm2d(c)
        self.layer_scale = nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))


class AvgPoolBranch(nn.Module):
    """DBB-style: a dense kxk conv+BN, a 1x1 conv+BN and a depthwise average pool + BN, summed."""

    def __init__(self, c):
        super().__init__()
        self.kxk, self.one = convbn(c, c, 3), convbn(c, c, 1, padding=0)
        self.pool, self.pool_bn = nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.kxk(x) + self.one(x) + self.pool_bn(self.pool(x)))


class LayerScaled(nn.Module):
    """A conv+BN scaled per channel by a learned γ (ConvNeXt/FastViT layer scale), after a BN
    that feeds a 1x1 conv (BN before a conv), and a 1x1 -> 3x3 chain with no nonlinearity."""

    def __init__(self, c):
        super().__init__()
        self.conv = convbn(c, c, 3)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.pre_bn, self.pointwise = nn.BatchNorm2d(c), nn.Conv2d(c, c, 1)
        self.expand, self.spatial = nn.Conv2d(c, c, 1, bias=False), convbn(c, c, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x) * self.gamma)
        x = torch.relu(self.pointwise(self.pre_bn(x)))
        return torch.relu(self.spatial(self.expand(x)))


def test_repmixer_with_layer_scale_and_a_difference_fuses_to_one_conv():
    fused, records = check_exact(classifier(Net(RepMixer(8), RepMixer(8, kernel=5))))
    assert [r["pattern"] for r in records[1]["rewrites"]] == ["5 branches, scaled"] * 2
    assert [r["kernel"] for r in records[1]["rewrites"]] == [[3, 3], [5, 5]]
    assert all(r["groups"] == 8 for r in records[1]["rewrites"])  # depthwise stays depthwise
    assert not any("BatchNorm" in t for t in module_types(fused.model))
    assert records[0]["skipped"] == []  # the BNs fold_batchnorm had to leave were fused as branches


def test_average_pool_branch_with_batchnorm_fuses_into_the_dense_conv():
    fused, records = check_exact(classifier(Net(AvgPoolBranch(8))))
    (rewrite,) = records[1]["rewrites"]
    assert rewrite["pattern"] == "3 branches" and rewrite["groups"] == 1 and rewrite["kernel"] == [3, 3]
    assert not any(t in ("AvgPool2d", "BatchNorm2d") for t in module_types(fused.model))


def test_layer_scale_batchnorm_before_conv_and_1x1_chains_fold():
    fused, records = check_exact(classifier(Net(LayerScaled(8))))
    patterns = [r["pattern"] for r in records[0]["rewrites"]]
    assert "Conv2d*scale" in patterns and "BatchNorm2d+Conv2d" in patterns
    assert [r["pattern"] for r in records[1]["rewrites"]] == ["Conv2d 1x1 -> Conv2d"]
    assert not any("BatchNorm" in t for t in module_types(fused.model))
    assert sum(isinstance(m, nn.Conv2d) for m in fused.model.modules()) == 4  # stem, conv, pointwise, chain


def test_batchnorm_before_a_padded_conv_is_left_when_its_shift_would_meet_the_padding():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    fused, records = check_exact(classifier(net))
    assert "BatchNorm2d" in module_types(fused.model) and not records[0]["rewrites"]


class RepGhostish(nn.Module):
    """timm's RepGhost bottleneck shape: a ghost module (primary conv+BN, then a depthwise
    conv+BN plus an identity BN over the primary's output) inside a residual add."""

    def __init__(self, c):
        super().__init__()
        self.primary = convbn(c, c, 1, padding=0)
        self.cheap, self.fusion_bn = convbn(c, c, 3, 1, c), nn.BatchNorm2d(c)

    def forward(self, x):
        x1 = self.primary(x)
        return x + (self.cheap(x1) + self.fusion_bn(x1))


def test_a_branch_sum_inside_a_residual_add_fuses_on_its_own():
    fused, records = check_exact(classifier(Net(RepGhostish(8), RepGhostish(8))))
    assert [r["pattern"] for r in records[1]["rewrites"]] == ["2 branches"] * 2 and records[1]["skipped"] == []
    assert not any("BatchNorm" in t for t in module_types(fused.model))


class ShapeCheckingStem(nn.Module):
    """A stem that checks its input's channels in Python, as Hugging Face's ResNet embeddings do:
    torch.fx cannot trace that."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = convbn(3, c, 3)

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return self.conv(x)


class ShapeCheckingNet(Net):
    """The same check in the root's own forward."""

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return super().forward(x)


def test_a_submodule_fx_cannot_trace_is_kept_whole_and_the_rest_is_folded():
    """The stem stays as it is (named under ``opaque``), every other Conv->BatchNorm is folded, exactly;
    a root whose own forward cannot be traced is still an error naming the model."""
    net = Net(RepVGGish(8))
    net.stem = ShapeCheckingStem()
    fused, records = check_exact(classifier(net))
    assert records[0]["opaque"] == ["ShapeCheckingStem"] and records[0]["changed"]
    assert records[1]["opaque"] == ["ShapeCheckingStem"]  # fuse_branches reads fold_batchnorm's graph
    assert isinstance(fused.model.stem, ShapeCheckingStem) and "BatchNorm2d" in module_types(fused.model.stem)
    assert "BatchNorm2d" not in module_types(fused.model.blocks) and "BatchNorm1d" not in module_types(fused.model.head)
    with pytest.raises(PassError, match="cannot trace ShapeCheckingNet with torch.fx"):
        run_passes(classifier(ShapeCheckingNet()), ["fold_batchnorm"])
