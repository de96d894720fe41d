"""The rectifier rules on GoogLeNet: branches joined by concatenation, every ReLU called as
F.relu(x, inplace=True) inside BasicConv2d (no nn.ReLU module at all, so captum's module hooks
never fire there)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.models import LoadedModel, Preprocessing

from helpers import sample_image

tv_googlenet = sys.modules["torchvision.models.googlenet"]  # the attribute is shadowed by the builder


class _GuidedRelu(torch.autograd.Function):
    """Reference guided-backprop ReLU, written independently of cnnviz.engines.attribution.rules."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype) * (g > 0).to(g.dtype)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    pre = Preprocessing(crop=(112, 112), resize=128)
    lm = LoadedModel(model, "googlenet", "random", pre, [str(i) for i in range(1000)])
    paths = [sample_image(0), sample_image(2)]
    x = torch.cat([lm.prepare(p)[1] for p in paths])
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    return lm, paths, x


def _reference(model, x, target, monkeypatch):
    fake_f = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    fake_f.relu = lambda t, inplace=False: _GuidedRelu.apply(t)
    with monkeypatch.context() as m:
        m.setattr(tv_googlenet, "F", fake_f)
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (g,) = torch.autograd.grad(out[:, target].sum(), xi)
    return g


def test_guided_backprop_reaches_functional_relus_across_concatenations(setup, monkeypatch):
    lm, paths, x = setup
    ours = torch.from_numpy(attribute(lm, x, "guided", normalized=True, target=7, device="cpu").attribution)
    ref = _reference(lm.model, x, 7, monkeypatch)
    plain = torch.from_numpy(attribute(lm, x, "saliency", normalized=True, target=7, device="cpu").attribution)
    scale = ref.abs().max()
    torch.testing.assert_close(ours, ref, atol=1e-5 * float(scale), rtol=1e-4)
    assert (ours - plain).abs().max() > 0.1 * scale, "guided should differ from the plain gradient"


def test_captum_guided_backprop_misses_them(setup):
    from captum.attr import GuidedBackprop

    lm, _, x = setup
    theirs = GuidedBackprop(lm.model).attribute(x.clone().requires_grad_(True), target=7).detach()
    plain = torch.from_numpy(attribute(lm, x, "saliency", normalized=True, target=7, device="cpu").attribution)
    torch.testing.assert_close(theirs, plain)  # captum silently computes the plain gradient here
