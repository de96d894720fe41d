"""Backprop methods as values (cnnviz.engines.attribution.methods): the registry is what `attribute`, the
figures and the CLI read; a method registered from outside works end to end; the one Target type
seeds every backward pass (the top-k patches' projections too); SmoothGrad wraps any method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.engines.attribution import methods as M
from cnnviz.engines.attribution.gradients import CAM, METHODS, SIGNED, attribute
from cnnviz.engines.attribution.targets import Target, Unit, seed
from cnnviz.models import LoadedModel, Preprocessing

CLASSES = [str(i) for i in range(10)]


class _CamNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def _lm():
    torch.manual_seed(7)
    return LoadedModel(_CamNet().eval(), "camnet", "random", Preprocessing(), CLASSES)


def test_the_tables_are_read_from_the_registry():
    from cnnviz.render.attribution.gradients import NAMES, SCALE_UNITS, _map_label
    from cnnviz_cli.attribution.methods import CAM_LAYER, METHOD_FLAGS

    assert METHODS == tuple(M.REGISTRY)
    assert set(CAM) == {n for n, m in M.REGISTRY.items() if m.needs_layer}
    assert SIGNED == {n for n, m in M.REGISTRY.items() if m.signed}
    # the CLI writes its flags out (no torch at start-up): they must say what the registry says
    assert METHOD_FLAGS == {n: (m.units, m.needs_layer, m.smoothable) for n, m in M.REGISTRY.items()}
    assert set(CAM_LAYER) == set(CAM)
    for name, m in M.REGISTRY.items():
        assert NAMES[name] == m.label and SCALE_UNITS[name] == m.scale_unit
        assert _map_label({"method": name}) == m.map_label.replace("{of}", "score")


def test_a_registered_method_works_end_to_end():
    """Gradient x input, registered from outside: attribute computes it, the figure names it."""
    from cnnviz.render.attribution.gradients import NAMES, figure, scale_groups

    def grad_x_input(model, x, target, layer=None):
        g, top1 = M.signal_at_input(model, x, target)
        return {"input": g * x, "top1": top1}

    M.register(M.Method("gxi", "Gradient × input", grad_x_input, "input × gradient", "sum over RGB", signed=True,
                        one_pass=True))
    try:
        lm = _lm()
        x = torch.randn(2, 3, 12, 12)
        r = attribute(lm, x, "gxi", normalized=True, target=4)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(lm.model(xx)[:, 4].sum(), xx)
        np.testing.assert_allclose(r.attribution, (g * x).numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.map, (g * x).sum(1).numpy(), rtol=1e-5, atol=1e-7)
        assert r.params["signed"] and NAMES["gxi"] == "Gradient × input"
        ig = attribute(lm, x, "ig", normalized=True, target=4, ig_steps=2)
        assert scale_groups([r, ig]) == [0, 0]  # the same unit: one scale
        figure(r)
    finally:
        M.REGISTRY.pop("gxi", None)
    with pytest.raises(Exception, match="unknown method 'gxi'"):
        attribute(_lm(), torch.randn(1, 3, 12, 12), "gxi")


def test_seeds_of_every_target_kind():
    out = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) - 10
    s = seed(out, Target.of_unit(Unit(1, "map")))
    assert torch.equal(s[:, 1], out[:, 1]) and s[:, [0, 2]].abs().sum() == 0
    s = seed(out, Target.of_unit(Unit(2, "max")))
    assert s.abs().sum(dim=(1, 2, 3)).tolist() == out[:, 2].flatten(1).amax(1).abs().tolist()
    assert s[0, 2, 1, 1] == out[0, 2, 1, 1]
    s = seed(out, Target.of_unit(Unit(0, (1, 0))))
    assert s[:, 0, 1, 0].tolist() == out[:, 0, 1, 0].tolist() and torch.count_nonzero(s) == 2
    s = seed(out, Target.at_positions(2, torch.tensor([[0, 1], [1, 0]])))
    assert s[0, 2, 0, 1] == out[0, 2, 0, 1] and s[1, 2, 1, 0] == out[1, 2, 1, 0] and torch.count_nonzero(s) == 2
    logits = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    assert seed(logits, Target.of_class(torch.tensor([2, 0]))).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert seed(logits, Target.of_class(torch.tensor([1, 1]), value="score")).tolist() == [[0, -2, 0], [0, 4, 0]]
    with pytest.raises(Exception, match="unknown target kind 'pixel'"):
        Target("pixel")


def test_smoothgrad_by_name_equals_the_smooth_option():
    lm = _lm()
    x = torch.randn(2, 3, 12, 12)
    a = attribute(lm, x, "smoothgrad", normalized=True, base="guided", smooth=3, noise=0.2, seed=2)
    b = attribute(lm, x, "guided", normalized=True, smooth=3, noise=0.2, seed=2)
    np.testing.assert_array_equal(a.attribution, b.attribution)
    assert a.params["method"] == "guided" and a.params["smooth"] == 3
    assert attribute(lm, x[:1], "smoothgrad", normalized=True).params["smooth"] == 25  # the default number of copies
    with pytest.raises(Exception, match="base='guided' is used only with method='smoothgrad'"):
        attribute(lm, x, "saliency", normalized=True, base="guided")


def test_smoothgrad_wraps_a_cam_too():
    """SmoothGrad over Grad-CAM (programmatically): the mean of the CAMs of the noisy copies, the
    noise drawn as for every method (per image, `samples` copies, std noise x the image's range)."""
    lm = _lm()
    model = lm.model
    x = torch.randn(2, 3, 12, 12)
    from cnnviz.layers import resolve_layer

    layer = resolve_layer(model, "act", x[:1])
    t = Target.of_class(torch.tensor([1, 1]))
    out = M.smooth("gradcam", samples=4, noise=0.1).compute(model, x, t, layer,
                                                           gen=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    expected = []
    for i in range(2):
        xi = x[i:i + 1]
        noisy = xi + 0.1 * float(xi.max() - xi.min()) * torch.randn((4, 3, 12, 12), generator=gen)
        with torch.enable_grad():
            cams = []
            for c in noisy:
                c = c[None].clone().requires_grad_(True)
                acts = []
                h = model.act.register_forward_hook(lambda m, i, o: acts.append(o))
                try:
                    score = model(c)[0, 1]
                finally:
                    h.remove()
                (g,) = torch.autograd.grad(score, acts[0])
                cams.append(F.relu((g.mean((2, 3), keepdim=True) * acts[0]).sum(1))[0].detach())
        expected.append(torch.stack(cams).mean(0))
    np.testing.assert_allclose(out["cam"].numpy(), torch.stack(expected).numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="SmoothGrad mode 'median'"):
        M.smooth("saliency", mode="median")


def test_patches_projection_uses_the_same_seed_as_attribute():
    from cnnviz.engines.units.patches import deconv_projections

    lm = _lm()
    x = torch.randn(2, 3, 12, 12)
    pos = torch.tensor([[1, 2], [3, 0]])
    ours = deconv_projections(lm, x, "act", 4, pos, "cpu")
    for i in range(2):
        ref = attribute(lm, x[i:i + 1], "deconv", normalized=True, layer="act", unit=f"4:{pos[i, 0]},{pos[i, 1]}").attribution[0]
        np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-7)
