"""Folding eval-mode batch norm and symmetric padding into convolutions: the copy computes what the
model computes, the user's model is untouched, and occlusion gives the same maps either way."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cnnviz.engines.occlusion.engine import occlusion
from cnnviz.fold import folded
from cnnviz.layers import resolve_layer
from cnnviz.models import load_model

from helpers import assert_untouched, sample_image, snapshot


def _randomize_bn(model, seed):
    """Batch-norm statistics and affine parameters far from identity, so folding is not trivial."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(c, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def _cases(lite0):
    torch.manual_seed(0)
    return {
        "efficientnet_lite0": (_randomize_bn(copy.deepcopy(lite0.model), 1), 224),
        "resnet18": (_randomize_bn(torchvision.models.resnet18(), 2), 96),
        "vgg11_bn": (_randomize_bn(torchvision.models.vgg11_bn(), 3), 64),
    }


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "vgg11_bn"])
def test_folded_copy_computes_what_the_model_computes(lite0, name):
    model, size = _cases(lite0)[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    model.train()  # the user's mode must come back
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = snapshot(model, x)
    fast, info = folded(model, x[:1])
    assert info["folded"] and info["folded_batch_norms"] > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "a batch norm was left unfolded"
    if name == "efficientnet_lite0":
        assert info["folded_paddings"] > 0
        assert not any(isinstance(m, nn.ZeroPad2d) and any(m.padding) and m.padding[0] == m.padding[1]
                       for m in fast.modules()), "a symmetric padding was left"
    with torch.no_grad():
        ref = before["out"] if x.shape[0] == 1 else _eval_out(model, x)
        got = fast(x)
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) <= 2e-5 * scale
    assert_untouched(model, x, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training


def _eval_out(model, x):
    flags = {n: m.training for n, m in model.named_modules()}
    model.eval()
    out = model(x)
    for n, m in model.named_modules():
        m.training = flags[n]
    return out


def test_a_followed_batch_norm_and_a_followed_convolution_keep_their_meaning():
    model = _randomize_bn(torchvision.models.resnet18(), 5)
    x = torch.randn(1, 3, 64, 64)
    bn = resolve_layer(model, "layer2.0.bn1", x)
    conv = resolve_layer(model, "layer3.0.conv1", x)
    fast, info = folded(model, x, keep=[bn, conv])
    assert info["folded"]
    modules = dict(fast.named_modules())
    assert isinstance(modules["layer2.0.bn1"], nn.Identity)  # folded, output = the norm's output
    assert isinstance(modules["layer3.0.bn1"], nn.BatchNorm2d)  # its conv is followed: not folded
    with torch.no_grad():
        h = model.layer2[0].bn1(model.layer2[0].conv1(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
        seen = {}
        handles = [fast.layer2[0].bn1.register_forward_hook(lambda m, i, o: seen.__setitem__("bn", o.clone())),
                   fast.layer3[0].conv1.register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o.clone()))]
        fast(x)
        for hd in handles:
            hd.remove()
        l2 = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))
        conv_ref = model.layer3[0].conv1(l2)
    # folding upstream changes float32 rounding: equal to a few 1e-6 of the map's scale
    torch.testing.assert_close(seen["bn"], h, rtol=0, atol=1e-5 * float(h.abs().max()))
    torch.testing.assert_close(seen["conv"], conv_ref, rtol=0, atol=1e-5 * float(conv_ref.abs().max()))


class _SharedConvOutput(nn.Module):
    """The convolution's own output is used twice: before and after its batch norm. Folding the
    norm would change the skip path, so the check must catch it and run the model unfolded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.head((self.bn(h) + h).mean((2, 3)))


def test_a_convolution_output_used_elsewhere_too_is_not_folded():
    model = _randomize_bn(_SharedConvOutput(), 6)
    x = torch.randn(1, 3, 16, 16)
    fast, info = folded(model, x)
    assert fast is model and not info["folded"] and "did not match" in info["fold_reason"]


def test_occlusion_with_and_without_folding_agree(lite0):
    pixels = np.asarray(lite0.prepare(sample_image(10))[0])
    kw = dict(window=56, stride=28, batch_size=8, device="cpu", progress=False)  # float32: no autocast
    a = occlusion(lite0, pixels, **kw)
    b = occlusion(lite0, pixels, fold=False, **kw)
    assert a.params["folded"] and a.params["folded_batch_norms"] > 40 and not b.params["folded"]
    np.testing.assert_allclose(a.true_class_prob, b.true_class_prob, atol=1e-5)
    np.testing.assert_allclose(a.top_class_prob, b.top_class_prob, atol=1e-5)
    np.testing.assert_array_equal(a.top_class, b.top_class)
    np.testing.assert_allclose(a.feature_activation, b.feature_activation, rtol=1e-5,
                               atol=1e-5 * float(np.abs(b.feature_activation).max()))
