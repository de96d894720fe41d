"""Rules chosen per layer (`attribute(..., rules={prefix: rule})`, `BackwardRule({...}, model=...)`):
the composed map equals guided backprop (or the deconvnet) where asked and the plain gradient
elsewhere, computed independently with module backward hooks written out here; functional
rectifiers follow the module that calls them; the longest prefix wins; the model is left as it was
(also after a failure); bad keys are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.errors import ParameterError
from cnnviz.models import LoadedModel, Preprocessing
from cnnviz.engines.attribution.rules import GUIDED, BackwardRule, covers, rule_for

from helpers import assert_untouched, snapshot

CLASSES = [str(i) for i in range(10)]


class _Block(nn.Module):
    """A rectifier called as a function inside the block's own forward (no ReLU module)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x)) + x


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.block = _Block(8)
        self.features2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(self.features2(self.block(self.features(x))))


def _lm():
    torch.manual_seed(4)
    return LoadedModel(_Net().eval(), "net", "random", Preprocessing(), CLASSES)


def _by_hooks(model, x, target, guided: set, deconv: set = frozenset()):
    """The input gradient with guided backprop at the ReLU modules in `guided`, the deconvnet rule at
    those in `deconv` (full backward hooks on the modules), the plain gradient elsewhere; the
    block's functional ReLU is guided when "block" is in `guided` (a hook on the block's conv output)."""
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU) and name in guided:
            handles.append(m.register_full_backward_hook(lambda mod, gi, go: (gi[0].clamp(min=0),)))
        if isinstance(m, nn.ReLU) and name in deconv:
            handles.append(m.register_full_backward_hook(lambda mod, gi, go: (go[0].clamp(min=0),)))
    if "block" in guided:  # relu(conv(x)): guided = relu's gradient times [g > 0], hooked on relu's output
        conv = model.block.conv

        def forward(x, conv=conv):
            z = conv(x)
            y = F.relu(z)
            y.register_hook(lambda g: g.clamp(min=0))  # the [g > 0] part; relu's own backward does the rest
            return y + x
        model.block.forward = forward
    try:
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        (g,) = torch.autograd.grad(out[:, target].sum(), xx)
    finally:
        for h in handles:
            h.remove()
        model.block.__dict__.pop("forward", None)
    return g.numpy()


CASES = [
    ({"features": "guided", "": "gradient"}, {"features.1", "features.4"}, set()),
    ({"features": "guided"}, {"features.1", "features.4"}, set()),  # no "" key: the gradient elsewhere
    ({"": "guided", "features": "gradient"}, {"block", "features2.1", "classifier.2"}, set()),
    ({"features": "guided", "features.4": "gradient"}, {"features.1"}, set()),  # longest prefix wins
    ({"classifier": "guided", "block": "guided"}, {"classifier.2", "block"}, set()),
    ({"features2": "deconv", "classifier": "guided"}, {"classifier.2"}, {"features2.1"}),
]


@pytest.mark.parametrize("rules, guided, deconv", CASES)
def test_composed_rules_equal_hooks_written_out(rules, guided, deconv):
    lm = _lm()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = snapshot(lm.model, x)
    r = attribute(lm, x, "saliency", normalized=True, target=3, rules=rules)
    expected = _by_hooks(lm.model, x, 3, guided, deconv)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(r.attribution, expected, rtol=0, atol=1e-5 * scale)
    assert r.params["rule"] == "per-layer" and set(r.params["rules"]) == set(rules)
    # and it is not the plain gradient, nor guided everywhere: the rules act where asked, only there
    plain = attribute(lm, x, "saliency", normalized=True, target=3).attribution
    everywhere = attribute(lm, x, "guided", normalized=True, target=3).attribution
    assert np.abs(plain - r.attribution).max() > 1e-3 * scale
    assert np.abs(everywhere - r.attribution).max() > 1e-3 * scale
    assert_untouched(lm.model, x, before)


def test_guided_everywhere_by_rules_equals_the_guided_method():
    lm = _lm()
    x = torch.randn(2, 3, 16, 16)
    a = attribute(lm, x, "saliency", normalized=True, target=5, rules={"": "guided"}).attribution
    b = attribute(lm, x, "guided", normalized=True, target=5).attribution
    np.testing.assert_array_equal(a, b)


def test_prefixes_end_at_a_dot():
    assert covers("features", "features") and covers("features", "features.3") and covers("", "x")
    assert not covers("features", "features2") and not covers("features.1", "features.10")
    rules = {"": "a", "features": "b", "features.1": "c"}
    assert [rule_for(rules, n) for n in ("classifier", "features.0", "features.1.conv", "features2")] == \
        ["a", "b", "c", "a"]


def test_the_mode_leaves_no_hook_after_a_failure():
    lm = _lm()
    model = lm.model
    x = torch.randn(1, 3, 16, 16)
    before = snapshot(model, x)
    with pytest.raises(RuntimeError, match="boom"):
        with BackwardRule({"features": GUIDED}, model=model):
            model(x.requires_grad_(True))
            raise RuntimeError("boom")
    assert_untouched(model, x, before)
    assert torch._C._len_torch_function_stack() == 0


def test_bad_rules_are_one_line_errors():
    lm = _lm()
    x = torch.randn(1, 3, 16, 16)
    for kwargs, fragments in (
            ({"rules": {"feature": "guided"}}, ["'feature'", "features"]),
            ({"rules": {"features": "smooth"}}, ["'smooth'", "guided"]),
            ({"rules": ["guided"]}, ["rules=", "dict"]),
            ({"rules": {"": "guided"}, "method": "gradcam"}, ["rules=", "gradcam"])):
        with pytest.raises(ParameterError) as e:
            attribute(lm, x, normalized=True, **{"method": "saliency", **kwargs})
        msg = str(e.value)
        assert "\n" not in msg and all(f in msg for f in fragments), msg
    with pytest.raises(ValueError, match="need the model"):
        BackwardRule({"": "guided"})
