"""Guided backprop and the deconvnet through the smooth activations of today's CNNs (SiLU, GELU,
Mish, Hardswish, ELU, SELU, CELU, Softplus, PReLU), against a second implementation by another
mechanism: module backward hooks that apply the documented rule with each activation's derivative
written out by hand (no autograd for phi'). Plus: gates keep their gradient, in-place and positional
calls are caught, an activation without a rule warns once, and timm's EfficientNet-B0 (SiLU) and
MobileNetV3 (Hardswish) give guided maps that differ from the gradient and equal the reference."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.engines.attribution.rules import BackwardRule


def _phi_prime(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each activation's derivative, from its formula."""
    s = torch.sigmoid(x)
    if isinstance(module, nn.SiLU):
        return s * (1 + x * (1 - s))
    if isinstance(module, nn.GELU):
        return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    if isinstance(module, nn.Mish):
        sp = F.softplus(x)
        return torch.tanh(sp) + x * (1 - torch.tanh(sp) ** 2) * s
    if isinstance(module, nn.Hardswish):
        return torch.where(x < -3, torch.zeros_like(x), torch.where(x > 3, torch.ones_like(x), (2 * x + 3) / 6))
    if isinstance(module, nn.ELU):
        return torch.where(x > 0, torch.ones_like(x), module.alpha * torch.exp(x))
    if isinstance(module, nn.SELU):
        alpha, scale = 1.6732632423543772, 1.0507009873554805
        return scale * torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x))
    if isinstance(module, nn.CELU):
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x / module.alpha))
    if isinstance(module, nn.Softplus):
        return torch.sigmoid(module.beta * x)
    if isinstance(module, nn.ReLU):
        return (x > 0).to(x.dtype)
    if isinstance(module, nn.PReLU):
        w = module.weight.detach().view(1, -1, *([1] * (x.ndim - 2)))
        return torch.where(x > 0, torch.ones_like(x), w.expand_as(x))
    raise TypeError(type(module))


SMOOTH = (nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.PReLU)
RECTIFIERS = (*SMOOTH, nn.ReLU)  # the reference's rule covers ReLU too (MobileNetV3 mixes them)


def _reference(model: nn.Module, x: torch.Tensor, cls: int, rule: str) -> torch.Tensor:
    """The input signal with the rule applied at every smooth activation module by hooks."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # full backward hooks refuse in-place modules; values are the same
    saved, handles = {}, []
    for m in model.modules():
        if isinstance(m, RECTIFIERS):
            handles.append(m.register_forward_hook(lambda mod, inp, out: saved.__setitem__(mod, inp[0].detach())))
            if rule == "guided":
                handles.append(m.register_full_backward_hook(
                    lambda mod, gin, gout: (_phi_prime(mod, saved[mod]) * gout[0].clamp(min=0),)))
            else:
                handles.append(m.register_full_backward_hook(lambda mod, gin, gout: (gout[0].clamp(min=0),)))
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out[:, cls].sum(), x)
    for h in handles:
        h.remove()
    return g


def _ours(model, x, cls, rule):
    x = x.clone().requires_grad_(True)
    with BackwardRule(rule) as mode:
        out = model(x)
        (g,) = torch.autograd.grad(out[:, cls].sum(), x)
    return g, mode


class _SE(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate, as MobileNetV3."""

    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


def _net(act: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    second = copy.deepcopy(act)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act, _SE(6), nn.Conv2d(6, 6, 3, padding=1), second,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


@pytest.mark.parametrize("rule", ["guided", "deconv"])
@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.Mish(), nn.Hardswish(), nn.ELU(0.7), nn.SELU(),
                                 nn.CELU(1.3), nn.Softplus(), nn.PReLU(6, 0.2), nn.SiLU(inplace=True),
                                 nn.Hardswish(inplace=True)], ids=lambda a: repr(a))
def test_smooth_activations_follow_the_documented_rule(act, rule):
    model = _net(act)
    x = torch.randn(2, 3, 10, 10) * 2
    ours, mode = _ours(model, x, 1, rule)
    torch.testing.assert_close(ours, _reference(model, x, 1, rule), rtol=1e-4, atol=1e-6)
    assert mode.replaced == 2, "both activations, once each (the gate keeps its gradient)"
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert not torch.allclose(ours, plain, rtol=1e-3, atol=1e-5), f"{rule} equals the plain gradient"


class _Functional(nn.Module):
    """The same network with functional calls: positional in-place Hardswish, keyword in-place SiLU."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.hardswish(self.a(x), True)
        x = F.silu(self.b(x), inplace=True)
        return self.fc(x.mean(dim=(2, 3)))


def test_functional_and_in_place_calls_are_caught():
    torch.manual_seed(1)
    func = _Functional().eval()
    mods = nn.Sequential(func.a, nn.Hardswish(), func.b, nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), func.fc)
    x = torch.randn(1, 3, 8, 8) * 2
    ours, mode = _ours(func, x, 2, "guided")
    assert mode.replaced == 2
    torch.testing.assert_close(ours, _reference(mods, x, 2, "guided"), rtol=1e-4, atol=1e-6)


def test_an_activation_without_a_rule_warns_once_naming_it():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softsign(), nn.Conv2d(4, 4, 3), nn.Softsign(), nn.Flatten()).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="softsign has no guided rule") as record:
        _ours(model, x, 0, "guided")
    assert len([w for w in record if "softsign" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ours(model, x, 0, "gradient")  # the plain gradient needs no rule: no warning


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenetv3_small_050"])
def test_guided_backprop_on_timm_models_with_silu_and_hardswish(arch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    x = torch.randn(1, 3, 96, 96)
    ours, mode = _ours(model, x, 5, "guided")
    assert mode.replaced > 10
    torch.testing.assert_close(ours, _reference(model, x, 5, "guided"), rtol=1e-3, atol=1e-7)
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xg)[:, 5].sum(), xg)
    r = torch.corrcoef(torch.stack([ours.flatten(), plain.flatten()]))[0, 1]
    assert float(r) < 0.99, f"guided backprop on {arch} is the plain gradient (r = {float(r):.3f})"
