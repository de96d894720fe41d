"""The backprop engines (saliency, guided backprop, deconvnet, Grad-CAM, Integrated Gradients,
SmoothGrad, unit targets) against captum and against references computed independently: the
rectifier rules written as custom autograd Functions swapped into the model, Grad-CAM and unit
projections by hand."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.errors import CnnvizError, ParameterError
from cnnviz.models import LoadedModel, Preprocessing, load_model

from helpers import SAMPLE, assert_untouched, paste, sample_image, sample_rows, snapshot

IMAGES = [sample_image(10), sample_image(388)]  # a brambling, a giant panda
CLASSES = [str(i) for i in range(1000)]


def _lm(model, name, pre=None, classes=CLASSES):
    return LoadedModel(model.eval(), name, "random", pre or Preprocessing(), list(classes))


def _inputs(lm, images=IMAGES):
    return torch.cat([lm.prepare(p)[1] for p in images])


def _close(actual, expected, rtol=1e-4):
    """Equal up to float error, relative to the largest value (backprop sums many terms)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    assert scale > 0, "the comparison is vacuous: the expected signal is zero"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _plain_gradient(model, x, target):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out[:, target].sum(), x)
    return g.detach()


# --------------------------------------------------------------------------------------------------
# An independent reference for the rules: each activation replaced by a custom autograd Function.

class _RefRectifier(torch.autograd.Function):
    """y = clip(x, lo, hi) with slope `a` below lo; backward by `rule`, written from the rules'
    definitions (guided: g * phi'(x) * 1[g > 0]; deconv: the rectifier applied to g)."""

    @staticmethod
    def forward(ctx, x, lo, hi, a, rule):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi, ctx.a, ctx.rule = lo, hi, a, rule
        y = torch.minimum(torch.maximum(x, torch.full_like(x, lo)), torch.full_like(x, hi))
        return y + a * torch.minimum(x - lo, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        lo, hi, a, rule = ctx.lo, ctx.hi, ctx.a, ctx.rule
        if rule == "deconv":
            pos = (g > 0).to(g.dtype)
            return g * pos + a * g * (1 - pos), None, None, None, None
        slope = ((x > lo) & (x < hi)).to(g.dtype) + a * (x <= lo).to(g.dtype)
        out = g * slope
        if rule == "guided":
            out = out * (g > 0).to(g.dtype)
        return out, None, None, None, None


class _RefAct(nn.Module):
    def __init__(self, lo, hi, a, rule):
        super().__init__()
        self.args = (float(lo), float(hi), float(a), rule)

    def forward(self, x):
        return _RefRectifier.apply(x, *self.args)


def _ref_fn(lo, hi, a, rule):
    return lambda x: _RefRectifier.apply(x, float(lo), float(hi), float(a), rule)


INF = float("inf")


class _FunctionalNet(nn.Module):
    """Rectifiers called as functions inside forward (F.relu, torch.relu, Tensor.relu, in place),
    the way many user models are written; `act` replaces all of them for the reference."""

    def __init__(self, act=None):
        super().__init__()
        self.act = act
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.c3 = nn.Conv2d(12, 12, 3, padding=1)
        self.c4 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.act
        x = (a or F.relu)(self.c1(x))
        x = (a or torch.relu)(self.c2(x))
        x = a(self.c3(x)) if a else self.c3(x).relu()
        x = self.c4(x)
        x = a(x) if a else F.relu(x, inplace=True)
        x = F.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


class _ModuleNet(nn.Module):
    """The same shape of network with one activation module reused at every position."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.c3 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.c1(x))
        x = self.act(self.c2(x))
        x = self.act(self.c3(x))
        return self.fc(x.mean((2, 3)))


SMALL = Preprocessing(crop=(64, 64), resize=64)
TEN = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_x(lite0):
    return _inputs(lite0)


# --------------------------------------------------------------------------------------------------
# 1. Models built from nn.ReLU modules: captum's module-hook implementations are a valid oracle.

def _tv(name, seed, pre):
    torch.manual_seed(seed)
    return _lm(getattr(torchvision.models, name)(), name, pre)


@pytest.mark.parametrize("name, seed, pre, target", [
    ("alexnet", 0, Preprocessing(crop=(112, 112), resize=128), 7),  # small inputs: adaptive pooling
    ("vgg11", 1, Preprocessing(crop=(64, 64), resize=64), 3),
    ("resnet18", 2, Preprocessing(crop=(112, 112), resize=128), 11),
])
def test_saliency_guided_and_deconv_equal_captum_on_relu_module_models(name, seed, pre, target):
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    lm = _tv(name, seed, pre)
    x = _inputs(lm)
    # captum's backward hooks do not go with in-place ReLUs: its reference runs on a copy without them
    ref_model = copy.deepcopy(lm.model)
    for m in ref_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    oracles = {"saliency": lambda: Saliency(ref_model).attribute(x, target=target, abs=False),
               "guided": lambda: GuidedBackprop(ref_model).attribute(x, target=target),
               "deconv": lambda: Deconvolution(ref_model).attribute(x, target=target)}
    results = {}
    for method, oracle in oracles.items():
        r = attribute(lm, IMAGES, method, target=target)
        expected = oracle().detach().numpy()
        assert r.attribution.shape == expected.shape == (2, 3, *pre.crop)
        _close(r.attribution, expected)
        # the map is the maximum of |signal| over colour channels (Simonyan et al.)
        np.testing.assert_array_equal(r.map, np.abs(r.attribution).max(1))
        assert list(r.targets) == [target, target]
        results[method] = r.attribution
    # the three rules are really different computations on these models
    assert _rel_diff(results["guided"], results["saliency"]) > 0.1
    assert _rel_diff(results["deconv"], results["saliency"]) > 0.1
    assert _rel_diff(results["deconv"], results["guided"]) > 0.1


# --------------------------------------------------------------------------------------------------
# 2. Rectifiers that are not nn.ReLU modules: ReLU6 reused, functional calls, LeakyReLU, Hardtanh.

def _lite0_with(lite0_model, rule):
    ref = copy.deepcopy(lite0_model)
    n = 0
    for m in ref.modules():
        if isinstance(getattr(m, "_swish", None), nn.ReLU6):
            m._swish = _RefAct(0.0, 6.0, 0.0, rule)
            n += 1
    assert n == 17, n  # the stem/head activation and one per MBConv block
    return ref


def test_guided_and_deconv_on_efficientnet_lite0_equal_relu6_rules_swapped_in(lite0, lite0_x):
    target = 13  # junco: near the brambling, so the signal is not tiny
    plain = _plain_gradient(lite0.model, lite0_x, target).numpy()
    # the reference itself: its "gradient" rule reproduces autograd's ReLU6 derivative
    _close(_plain_gradient(_lite0_with(lite0.model, "gradient"), lite0_x, target), plain, rtol=1e-5)
    sal = attribute(lite0, IMAGES, "saliency", target=target)
    _close(sal.attribution, plain, rtol=1e-5)
    for method in ("guided", "deconv"):
        r = attribute(lite0, IMAGES, method, target=target)
        expected = _plain_gradient(_lite0_with(lite0.model, method), lite0_x, target).numpy()
        _close(r.attribution, expected)
        assert _rel_diff(r.attribution, plain) > 0.5, f"{method} looks like the plain gradient"


def test_captum_guided_backprop_silently_returns_the_plain_gradient_on_lite0(lite0, lite0_x):
    """Why cnnviz does not use module hooks: captum only hooks `nn.ReLU` modules, so on a ReLU6
    network its 'guided backprop' is the plain gradient, without a warning."""
    from captum.attr import GuidedBackprop

    target = 13
    captum_guided = GuidedBackprop(lite0.model).attribute(lite0_x, target=target).detach().numpy()
    plain = _plain_gradient(lite0.model, lite0_x, target).numpy()
    _close(captum_guided, plain, rtol=1e-6)
    ours = attribute(lite0, IMAGES, "guided", target=target).attribution
    assert _rel_diff(ours, captum_guided) > 0.5


@pytest.mark.parametrize("kind", ["functional relu", "LeakyReLU", "Hardtanh"])
def test_guided_and_deconv_reach_functional_and_non_relu_rectifiers(kind):
    torch.manual_seed(3)
    if kind == "functional relu":
        model, lo, hi, a = _FunctionalNet(), 0.0, INF, 0.0

        def reference(rule):
            ref = copy.deepcopy(model)
            ref.act = _ref_fn(lo, hi, a, rule)
            return ref
    else:
        act = nn.LeakyReLU(0.2) if kind == "LeakyReLU" else nn.Hardtanh(0.0, 0.5)
        lo, hi, a = (0.0, INF, 0.2) if kind == "LeakyReLU" else (0.0, 0.5, 0.0)
        model = _ModuleNet(act)

        def reference(rule):
            ref = copy.deepcopy(model)
            ref.act = _RefAct(lo, hi, a, rule)
            return ref
    lm = _lm(model, kind, SMALL, TEN)
    x = _inputs(lm)
    target = 4
    plain = _plain_gradient(model, x, target).numpy()
    _close(_plain_gradient(reference("gradient"), x, target), plain, rtol=1e-5)
    _close(attribute(lm, IMAGES, "saliency", target=target).attribution, plain, rtol=1e-5)
    outs = {}
    for method in ("guided", "deconv"):
        r = attribute(lm, IMAGES, method, target=target)
        _close(r.attribution, _plain_gradient(reference(method), x, target), rtol=1e-5)
        assert _rel_diff(r.attribution, plain) > 0.2, f"{method} looks like the plain gradient"
        outs[method] = r.attribution
    assert _rel_diff(outs["guided"], outs["deconv"]) > 0.2
    with torch.no_grad():  # the swapped-in activations compute the same forward values
        np.testing.assert_allclose(reference("guided")(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_hardtanh_with_a_negative_lower_bound_follows_the_guided_rule():
    torch.manual_seed(4)
    model = _ModuleNet(nn.Hardtanh())  # clip to (-1, 1)
    lm = _lm(model, "hardtanh", SMALL, TEN)
    x = _inputs(lm)
    ref = copy.deepcopy(model)
    ref.act = _RefAct(-1.0, 1.0, 0.0, "guided")
    r = attribute(lm, IMAGES, "guided", target=2)
    _close(r.attribution, _plain_gradient(ref, x, 2), rtol=1e-5)
    assert _rel_diff(r.attribution, _plain_gradient(model, x, 2)) > 0.2


def test_a_batch_gives_each_image_the_maps_it_gets_alone():
    torch.manual_seed(14)
    lm = _lm(_FunctionalNet(), "functional", SMALL, TEN)
    for method, kwargs in [("saliency", {}), ("guided", {}), ("deconv", {}), ("gradcam", {}),
                           ("guided_gradcam", {}), ("ig", {"ig_steps": 6}), ("deconv", {"unit": "3:map", "layer": "c2"})]:
        both = attribute(lm, IMAGES, method, **kwargs)
        for i in range(2):
            alone = attribute(lm, IMAGES[i:i + 1], method, **kwargs)
            _close(both.attribution[i], alone.attribution[0], rtol=1e-5)
            assert both.targets[i] == alone.targets[0]


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_attribute_works_inside_a_users_no_grad_block(context):
    """Notebook code often wraps model calls in torch.no_grad() or torch.inference_mode()."""
    torch.manual_seed(15)
    lm = _lm(_FunctionalNet(), "functional", SMALL, TEN)
    kw = {"guided": {}, "gradcam": {}, "ig": {"ig_steps": 4}}
    expected = {m: attribute(lm, IMAGES, m, target=2, **kw[m]).attribution for m in kw}
    with getattr(torch, context)():
        for method, exp in expected.items():
            np.testing.assert_array_equal(attribute(lm, IMAGES, method, target=2, **kw[method]).attribution, exp)
    _no_rule_left()


# --------------------------------------------------------------------------------------------------
# 3. Unit targets: the unit's activation projected down, every other activation zero.

@pytest.fixture(scope="module")
def alexnet_lm():
    return _tv("alexnet", 5, Preprocessing())


def _unit_reference(alexnet_lm, x, channel, positions):
    """sum over `positions` (one list per image) of a_p * d a_p / d x, by autograd on the
    sub-network features[:5] (conv, relu, pool, conv, relu)."""
    sub = copy.deepcopy(alexnet_lm.model.features[:5])
    for m in sub.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = x.detach().clone().requires_grad_(True)
    act = sub(x)[:, channel]
    total = 0
    for i, pos in enumerate(positions):
        for (yy, xx) in pos:
            total = total + act[i, yy, xx].detach() * act[i, yy, xx]
    (g,) = torch.autograd.grad(total, x)
    return g.numpy(), act.detach()


def test_unit_at_a_position_is_its_activation_times_its_gradient(alexnet_lm):
    x = _inputs(alexnet_lm)
    with torch.no_grad():
        act = alexnet_lm.model.features[:5](x)  # 2 x 192 x 27 x 27 at 224
    # a unit active in both images
    score = act[:, :, 3:10, 3:10].amin(0)
    c, y, xx = np.unravel_index(int(score.argmax()), score.shape)
    y, xx = y + 3, xx + 3
    assert float(act[:, c, y, xx].min()) > 0
    r = attribute(alexnet_lm, IMAGES, "saliency", layer="features.4", unit=f"{c}:{y},{xx}")
    expected, _ = _unit_reference(alexnet_lm, x, c, [[(y, xx)], [(y, xx)]])
    _close(r.attribution, expected)
    assert list(r.targets) == [-1, -1]
    # the projection stays inside the unit's receptive field (conv2 sees 51 x 51 pixels)
    sig = np.abs(r.attribution).sum((0, 1))
    ys, xs = np.nonzero(sig)
    assert ys.max() - ys.min() < 80 and xs.max() - xs.min() < 80


def test_unit_max_picks_the_strongest_position_and_map_sums_all_positions(alexnet_lm):
    x = _inputs(alexnet_lm)
    c = 17
    with torch.no_grad():
        act = alexnet_lm.model.features[:5](x)[:, c]
    w = act.shape[-1]
    best = [divmod(int(a.flatten().argmax()), w) for a in act]
    assert best[0] != best[1], "pick a channel whose strongest positions differ between the images"
    r_max = attribute(alexnet_lm, IMAGES, "saliency", layer="features.4", unit=f"{c}:max")
    expected, _ = _unit_reference(alexnet_lm, x, c, [[b] for b in best])
    _close(r_max.attribution, expected)
    assert r_max.target_names[0] == f"channel {c} max"

    everywhere = [[(i, j) for i in range(act.shape[1]) for j in range(w)]] * 2
    r_map = attribute(alexnet_lm, IMAGES, "saliency", layer="features.4", unit=f"{c}:map")
    expected_map, _ = _unit_reference(alexnet_lm, x, c, everywhere)
    _close(r_map.attribution, expected_map)
    assert _rel_diff(r_map.attribution, r_max.attribution) > 0.1


def test_bad_units_are_parameter_errors(alexnet_lm):
    for kwargs in ({"unit": "192", "layer": "features.4"},  # conv2 has 192 channels
                   {"unit": "-1", "layer": "features.4"},
                   {"unit": "3:27,0", "layer": "features.4"},  # 27 x 27 map
                   {"unit": "3:0,-1", "layer": "features.4"},
                   {"unit": "3:2,2", "layer": "classifier.6"},  # no position in a linear layer
                   {"unit": "3:here", "layer": "features.4"},
                   {"unit": "3"},  # saliency with a unit needs a layer
                   {"unit": "3", "layer": "features.4", "method": "gradcam"},
                   {"unit": "3", "layer": "features.4", "method": "ig"}):
        kwargs.setdefault("method", "saliency")
        with pytest.raises(ParameterError):
            attribute(alexnet_lm, IMAGES[:1], **kwargs)


# --------------------------------------------------------------------------------------------------
# 4. Grad-CAM

class _CamNet(nn.Module):
    """conv (stride 4) -> relu -> global average pool -> linear: Grad-CAM can be written down."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=4, padding=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_grad_cam_equals_the_hand_computation_on_a_tiny_model():
    torch.manual_seed(6)
    model = _CamNet()
    lm = _lm(model, "camnet", SMALL, TEN)
    x = _inputs(lm)
    target = 5
    r = attribute(lm, IMAGES, "gradcam", target=target, layer="act")
    with torch.no_grad():
        A = model.act(model.conv(x))  # 2 x 6 x 16 x 16
        # d logit / d A_k(i, j) = w_k / (h w) everywhere: its spatial mean is w_k / (h w)
        alpha = model.fc.weight[target] / (A.shape[2] * A.shape[3])
        cam = torch.relu((alpha[None, :, None, None] * A).sum(1))
        heat = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert r.attribution.shape == (2, 1, 64, 64)
    _close(r.map, heat.numpy(), rtol=1e-5)
    _close(r.attribution[:, 0], heat.numpy(), rtol=1e-5)
    assert (heat == 0).any() and (heat > 0).any(), "the ReLU of the map should matter on this model"


def test_grad_cam_and_guided_grad_cam_equal_captum_on_resnet18():
    from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

    lm = _tv("resnet18", 7, Preprocessing())
    x = _inputs(lm)
    target = 21
    r = attribute(lm, IMAGES, "gradcam", target=target, layer="layer4")
    ref_model = copy.deepcopy(lm.model)
    for m in ref_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    cam = LayerGradCam(ref_model, ref_model.layer4).attribute(x, target=target, relu_attributions=True)
    heat = LayerAttribution.interpolate(cam, (224, 224), interpolate_mode="bilinear").detach()
    _close(r.attribution, heat.numpy())
    g = attribute(lm, IMAGES, "guided", target=target)
    gg = attribute(lm, IMAGES, "guided_gradcam", target=target, layer="layer4")
    _close(gg.attribution, g.attribution * r.attribution)
    np.testing.assert_array_equal(gg.map, np.abs(gg.attribution).max(1))
    expected = GuidedGradCam(ref_model, ref_model.layer4).attribute(x, target=target, interpolate_mode="bilinear")
    _close(gg.attribution, expected.detach().numpy())


# --------------------------------------------------------------------------------------------------
# 5. Integrated Gradients

def test_integrated_gradients_equal_captum_and_are_exact_on_a_linear_model():
    from captum.attr import IntegratedGradients

    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 64, 64))
    lm = _lm(model, "linear", SMALL, TEN)
    x = _inputs(lm)
    r = attribute(lm, IMAGES, "ig", target=3, ig_steps=8, baseline="mean")
    base = torch.zeros_like(x)  # "mean" is 0 after normalization
    expected = IntegratedGradients(model).attribute(x, baselines=base, target=3, n_steps=8).detach()
    _close(r.attribution, expected.numpy(), rtol=1e-5)
    # f linear: IG = (x - baseline) * gradient, whatever the number of steps
    _close(r.attribution, ((x - base) * _plain_gradient(model, x, 3)).numpy(), rtol=1e-4)
    np.testing.assert_allclose(r.map, r.attribution.sum(1), rtol=1e-6)  # signed map


def test_integrated_gradients_equal_captum_on_a_relu_network():
    from captum.attr import IntegratedGradients

    torch.manual_seed(13)
    model = _FunctionalNet()
    lm = _lm(model, "functional", SMALL, TEN)
    x = _inputs(lm)
    r = attribute(lm, IMAGES, "ig", target=6, ig_steps=20, baseline="black")
    base = SMALL.fill_value("black").expand_as(x).contiguous()
    expected = IntegratedGradients(model).attribute(x, baselines=base, target=6, n_steps=20).detach()
    _close(r.attribution, expected.numpy(), rtol=1e-5)
    assert _rel_diff(r.attribution, ((x - base) * _plain_gradient(model, x, 6)).numpy()) > 0.05


def test_integrated_gradients_on_lite0_are_complete(lite0, lite0_x):
    """Completeness (Sundararajan et al.): the attributions sum to f(x) - f(baseline). With 32
    steps (captum's Gauss-Legendre rule) the sum is within 6 % of the difference on this photo
    (3 % measured; 16 steps are 17 % off)."""
    x = lite0_x[:1]
    steps, target = 32, 10  # the brambling's own class
    r = attribute(lite0, IMAGES[:1], "ig", target=target, ig_steps=steps, baseline="black")
    base = lite0.preprocessing.fill_value("black").expand_as(x).contiguous()
    with torch.no_grad():
        delta = float(lite0.model(x)[0, target] - lite0.model(base)[0, target])
    assert abs(delta) > 5, "a small difference would make the check vacuous"
    assert float(r.attribution.sum()) == pytest.approx(delta, rel=0.06)
    np.testing.assert_allclose(r.map, r.attribution.sum(1), rtol=1e-5, atol=1e-7)  # signed map


# --------------------------------------------------------------------------------------------------
# 6. SmoothGrad

def test_smoothgrad_is_seeded_and_is_the_mean_over_the_noisy_copies():
    torch.manual_seed(9)
    model = _FunctionalNet()
    lm = _lm(model, "functional", SMALL, TEN)
    x = _inputs(lm)
    n, noise, seed, target = 6, 0.2, 11, 1
    r = attribute(lm, IMAGES, "guided", target=target, smooth=n, noise=noise, seed=seed)
    again = attribute(lm, IMAGES, "guided", target=target, smooth=n, noise=noise, seed=seed)
    np.testing.assert_array_equal(r.attribution, again.attribution)
    other = attribute(lm, IMAGES, "guided", target=target, smooth=n, noise=noise, seed=seed + 1)
    assert _rel_diff(other.attribution, r.attribution) > 0.05
    # by hand: the same draws, each image's copies in turn, through the reference guided rule
    ref = copy.deepcopy(model)
    ref.act = _ref_fn(0.0, INF, 0.0, "guided")
    gen = torch.Generator().manual_seed(seed)
    expected = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        sigma = noise * float(xi.max() - xi.min())
        noisy = xi + sigma * torch.randn((n, *xi.shape[1:]), generator=gen)
        expected.append(_plain_gradient(ref, noisy, target).mean(0))
    _close(r.attribution, torch.stack(expected).numpy(), rtol=1e-5)
    plain_guided = attribute(lm, IMAGES, "guided", target=target).attribution
    assert _rel_diff(r.attribution, plain_guided) > 0.05


def test_smoothgrad_leaves_the_global_random_state_alone():
    torch.manual_seed(10)
    model = _CamNet()
    lm = _lm(model, "camnet", SMALL, TEN)
    for method in ("saliency", "ig"):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        attribute(lm, IMAGES[:1], method, smooth=2, seed=5, **({"ig_steps": 4} if method == "ig" else {}))
        assert torch.equal(torch.rand(3), expected), f"{method} with smooth reseeded torch's global generator"
    # and IG's SmoothGrad (captum's NoiseTunnel) is still seeded by `seed`
    a, b, c = (attribute(lm, IMAGES[:1], "ig", smooth=3, ig_steps=4, seed=s).attribution for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert _rel_diff(a, c) > 0.01


# --------------------------------------------------------------------------------------------------
# 7. The model is handed back as it was, also after a failure midway; no rule outlives the call.

class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("simulated failure in the backward pass")


class _Failing(nn.Module):
    """A user model that fails inside the engine: in a forward pass that records a graph, or in
    the backward pass."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.fail = inner, None

    def forward(self, x):
        if self.fail == "forward" and torch.is_grad_enabled():
            raise RuntimeError("simulated failure midway")
        if self.fail == "backward":  # at both ends: Grad-CAM and unit targets stop halfway
            return _Boom.apply(self.inner(_Boom.apply(x)))
        return self.inner(x)


def _no_rule_left():
    assert torch._C._len_torch_function_stack() == 0, "a TorchFunctionMode was left active"
    assert torch.overrides._get_current_function_mode() is None
    # a later plain backward pass through a ReLU lets negative signals through
    x = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    (g,) = torch.autograd.grad(F.relu(x), x, grad_outputs=torch.tensor([-1.0, 1.0, 1.0]))
    assert g.tolist() == [-1.0, 1.0, 0.0]
    (g,) = torch.autograd.grad(nn.ReLU6()(x * 4), x, grad_outputs=torch.tensor([-1.0, 1.0, 1.0]))
    assert g.tolist() == [-4.0, 0.0, 0.0]


ALL_CALLS = [("saliency", {}), ("guided", {}), ("deconv", {}), ("gradcam", {}), ("guided_gradcam", {}),
             ("ig", {"ig_steps": 4}), ("guided", {"smooth": 2}), ("ig", {"smooth": 2, "ig_steps": 2}),
             ("guided", {"unit": "5:max", "layer": "inner.layer3"}),
             ("saliency", {"unit": "25:2,3", "layer": "inner.layer2.0.relu@1"}),  # active in both images
             ("saliency", {"batch_size": 1}), ("guided", {"smooth": 3, "batch_size": 2}),
             ("ig", {"ig_steps": 4, "ig_internal_batch": 3, "baseline": "blur"})]


@pytest.fixture(scope="module")
def failing_lm():
    torch.manual_seed(12)
    model = _Failing(torchvision.models.resnet18())
    return _lm(model, "failing", Preprocessing(crop=(96, 96), resize=96))


def test_model_is_untouched_after_every_method(failing_lm):
    model = failing_lm.model
    model.train()  # the user's mode must come back, not eval
    x = _inputs(failing_lm)
    before = snapshot(model, x)
    for method, kwargs in ALL_CALLS:
        r = attribute(failing_lm, IMAGES, method, **kwargs)
        assert np.isfinite(r.attribution).all() and np.abs(r.attribution).max() > 0, method
        assert_untouched(model, x, before)
        _no_rule_left()
    model.eval()


@pytest.mark.parametrize("failure", ["forward", "backward"])
def test_model_is_untouched_and_no_rule_is_left_after_a_failure_midway(failing_lm, failure):
    from captum.attr import GuidedBackprop

    model = failing_lm.model
    model.train()
    x = _inputs(failing_lm)
    before = snapshot(model, x)
    try:
        for method, kwargs in ALL_CALLS:
            model.fail = failure
            with pytest.raises(RuntimeError, match="simulated failure"):
                attribute(failing_lm, IMAGES, method, **kwargs)
            model.fail = None
            assert_untouched(model, x, before)
            _no_rule_left()
    finally:
        model.fail = None
        model.eval()
    # and the engine still works afterwards
    r = attribute(failing_lm, IMAGES, "guided", target=3)
    ref = copy.deepcopy(model.inner)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    _close(r.attribution, GuidedBackprop(ref).attribute(x, target=3).detach().numpy())


def test_model_is_untouched_after_a_bad_argument(lite0, lite0_x):
    before = snapshot(lite0.model, lite0_x)
    for kwargs in ({"method": "nope"}, {"target": "no such class"}, {"layer": "_blocks.99", "method": "gradcam"},
                   {"unit": "5000", "layer": "_blocks.3"}, {"smooth": -1}, {"noise": 1.5},
                   {"method": "gradcam", "smooth": 2}, {"method": "gradcam", "layer": "_fc"}):
        with pytest.raises(Exception) as e:
            attribute(lite0, IMAGES, **kwargs)
        assert type(e.value).__module__ == "cnnviz.errors", kwargs
    assert_untouched(lite0.model, lite0_x, before)
    _no_rule_left()


# --------------------------------------------------------------------------------------------------
# 8. Localization: Grad-CAM finds a real object pasted into a gray canvas.



@pytest.mark.slow
def test_grad_cam_peak_falls_on_the_pasted_object(lite0):
    rng = np.random.default_rng(1)
    rows = sample_rows()
    picks = rng.choice(len(rows), size=40, replace=False)
    box = 112
    imgs, boxes, labels = [], [], []
    for k in picks:
        row = rows[int(k)]
        top, left = (int(v) for v in rng.integers(0, 224 - box + 1, size=2))
        imgs.append(paste(Image.open(SAMPLE / "images" / row["file"]).convert("RGB"), box, top, left))
        boxes.append((top, left))
        labels.append(int(row["class_index"]))
    x = torch.cat([lite0.prepare(im)[1] for im in imgs])
    with torch.no_grad():
        pred = lite0.model(x).argmax(1).tolist()
    kept = [i for i in range(len(imgs)) if pred[i] == labels[i]][:12]
    assert len(kept) >= 8, f"too few pasted images classified correctly ({len(kept)})"
    r = attribute(lite0, [imgs[i] for i in kept], "gradcam")  # one call: one batch
    assert list(r.targets) == [labels[i] for i in kept]
    hits = 0
    for j, i in enumerate(kept):
        y, xx = np.unravel_index(int(np.argmax(r.map[j])), r.map[j].shape)
        top, left = boxes[i]
        hits += (top <= y < top + box) and (left <= xx < left + box)
    assert hits / len(kept) >= 0.7, f"Grad-CAM peak on the object in only {hits}/{len(kept)} cases"


@pytest.mark.parametrize("mode", ["mean", "mean-abs"])
@pytest.mark.parametrize("method", ["saliency", "deconv"])
def test_smoothgrad_both_ways_equal_a_direct_loop_over_the_same_noise(method, mode):
    """mean: the signed signals averaged, |.| (max over RGB) taken for the map (Smilkov et al.
    2017, Eq. 3); mean-abs: |signal| averaged per channel (captum's NoiseTunnel over Saliency).
    The reference draws the same noise from its own generator and runs one copy at a time
    through the reference rules."""
    torch.manual_seed(21)
    model = _FunctionalNet()
    lm = _lm(model, "functional", SMALL, TEN)
    x = _inputs(lm)
    n, noise, seed, target = 5, 0.1, 4, 3
    kw = {} if mode == "mean" else {"smooth_mode": mode}
    r = attribute(lm, IMAGES, method, target=target, smooth=n, noise=noise, seed=seed, **kw)
    assert r.params["smooth_mode"] == mode
    ref = copy.deepcopy(model)
    ref.act = _ref_fn(0.0, INF, 0.0, "deconv" if method == "deconv" else "gradient")
    gen = torch.Generator().manual_seed(seed)
    expected = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        sigma = noise * float(xi.max() - xi.min())
        copies = xi + sigma * torch.randn((n, *xi.shape[1:]), generator=gen)
        grads = torch.cat([_plain_gradient(ref, copies[j:j + 1], target) for j in range(n)])
        expected.append(grads.mean(0) if mode == "mean" else grads.abs().mean(0))
    expected = torch.stack(expected).numpy()
    _close(r.attribution, expected, rtol=1e-5)
    _close(r.map, np.abs(expected).max(1), rtol=1e-5)
    other = attribute(lm, IMAGES, method, target=target, smooth=n, noise=noise, seed=seed,
                      smooth_mode="mean-abs" if mode == "mean" else "mean")
    assert _rel_diff(other.map, r.map) > 0.05, "the two modes should differ"


@pytest.mark.parametrize("kwargs, fragments", [
    ({"method": "saliency", "layer": "nosuch"}, ["--layer 'nosuch'", "--unit"]),
    ({"method": "guided", "layer": "c2"}, ["--layer 'c2'", "only with --unit"]),
    ({"method": "ig", "layer": "c2"}, ["--layer"]),
    ({"method": "gradcam", "unit": "3"}, ["--unit", "gradcam"]),
    ({"method": "ig", "unit": "3", "layer": "c2"}, ["--unit", "ig"]),
    ({"method": "deconv", "unit": "3", "layer": "c2", "target": 2}, ["--target", "--unit"]),
    ({"method": "gradcam", "smooth": 3}, ["--samples 3", "gradcam"]),
    ({"method": "saliency", "noise": 0.2}, ["--noise", "--samples"]),
    ({"method": "saliency", "seed": 4}, ["--seed", "--samples"]),
    ({"method": "saliency", "smooth_mode": "mean-abs"}, ["--smooth", "--samples"]),
    ({"method": "saliency", "smooth": 2, "smooth_mode": "median"}, ["median", "mean-abs"]),
    ({"method": "ig", "smooth": 2, "smooth_mode": "mean-abs"}, ["mean-abs", "sign"]),
    ({"method": "guided", "ig_steps": 8}, ["ig_steps", "guided"]),
    ({"method": "saliency", "baseline": "mean"}, ["baseline"]),
    ({"method": "saliency", "layer": "nosuch", "unit": "3"}, ["unknown layer 'nosuch'"]),
])
def test_every_option_the_method_does_not_use_is_refused(kwargs, fragments):
    torch.manual_seed(22)
    lm = _lm(_FunctionalNet(), "functional", SMALL, TEN)
    with pytest.raises(CnnvizError) as e:
        attribute(lm, IMAGES[:1], **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


# --------------------------------------------------------------------------------------------------
# 9. Batches: the maps do not depend on the batch size, chosen or given; IG's memory is bounded.

@pytest.mark.parametrize("method, kwargs", [("saliency", {}), ("gradcam", {"layer": "act"}), ("deconv", {}),
                                            ("guided", {"smooth": 3}), ("saliency", {"unit": "2:map", "layer": "act"})])
def test_maps_do_not_depend_on_the_batch_size(method, kwargs):
    torch.manual_seed(9)
    lm = _lm(_CamNet(), "camnet", SMALL, TEN)
    images = [sample_image(i) for i in (0, 2, 4, 6, 8)]
    runs = {b: attribute(lm, images, method, batch_size=b, **kwargs) for b in (1, 2, 3, None)}
    for b, r in runs.items():  # on a CPU, bitwise: every batch is padded to full groups
        np.testing.assert_array_equal(r.attribution, runs[1].attribution, err_msg=f"batch {b}")
        assert r.params["batch_size"] == (b or r.params["batch_size"]) and r.params["batch_size_auto"] == (b is None)
    assert np.abs(runs[1].attribution).max() > 0
    if method == "deconv":
        assert runs[3].params["gray_image_r"] == runs[None].params["gray_image_r"]


def test_ig_runs_its_scaled_copies_in_a_memory_bounded_internal_batch():
    """ig on two images peaked at 5.1 GB (captum's internal batch = 50 steps): now the internal
    batch is as many scaled copies as fit in IG_MEMORY_BUDGET (by an estimate of the memory one
    image needs in a backward pass), recorded in the result, and the maps agree with any other."""
    from cnnviz.engines.attribution import gradients as G

    torch.manual_seed(4)
    lm = _lm(torchvision.models.resnet18(), "resnet18", Preprocessing(crop=(96, 96), resize=96))
    r = attribute(lm, IMAGES, "ig", target=3, ig_steps=40)
    p = r.params
    assert p["ig_internal_batch_auto"] is True and p["ig_memory_budget"] == G.IG_MEMORY_BUDGET
    assert 1 <= p["ig_internal_batch"] <= min(40, G.IG_MEMORY_BUDGET // p["ig_item_bytes"])
    # the estimate is an upper bound of a float32 forward + backward pass: at least every layer output
    assert p["ig_item_bytes"] >= 4 * 2 * 64 * 48 * 48
    small = attribute(lm, IMAGES, "ig", target=3, ig_steps=40, ig_internal_batch=3)
    assert small.params["ig_internal_batch"] == 3 and small.params["ig_internal_batch_auto"] is False
    _close(small.attribution, r.attribution, rtol=1e-5)
    with pytest.raises(ParameterError, match="internal batch"):
        attribute(lm, IMAGES, "ig", ig_internal_batch=0)
    with pytest.raises(ParameterError, match="ig_internal_batch"):
        attribute(lm, IMAGES, "saliency", ig_internal_batch=4)
    with pytest.raises(ParameterError, match="--internal-batch"):
        attribute(lm, IMAGES, "ig", batch_size=4)


@pytest.mark.parametrize("baseline", ["black", "mean", "white", "0.25", "0.1,0.2,0.3", "blur"])
def test_ig_baselines_satisfy_completeness(baseline):
    """Every baseline the CLI offers: the attributions sum to f(x) - f(baseline) (a linear model,
    where IG is exact), the baseline computed independently here."""
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10))
    lm = _lm(model, "linear", SMALL, TEN)
    x = _inputs(lm)
    r = attribute(lm, IMAGES, "ig", target=4, ig_steps=3, baseline=baseline)
    if baseline == "blur":
        base = gaussian_blur(x, [61, 61], [10.0, 10.0])
    else:
        base = lm.preprocessing.fill_value(baseline).expand_as(x)
    with torch.no_grad():
        expected = (model(x) - model(base))[:, 4]
    np.testing.assert_allclose(r.attribution.sum((1, 2, 3)), expected.numpy(), rtol=1e-3, atol=1e-4)
    assert r.params["baseline"] == baseline


def test_bad_ig_baseline_is_one_line_naming_it():
    lm = _lm(_CamNet(), "camnet", SMALL, TEN)
    with pytest.raises(ParameterError, match=r"unknown baseline 'purple'.*blur"):
        attribute(lm, IMAGES, "ig", baseline="purple")
