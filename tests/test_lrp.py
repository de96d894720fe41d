"""LRP (cnnviz.engines.attribution.lrp) through `attribute`: against zennit's composites on VGG and ResNet with
random weights (batch norms with random statistics, so that folding matters), against the rules'
definitions written out by hand on a small dense network, the user's model left as it was (also
after a failure), one-line errors, and the `cnnviz lrp` command."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.engines.attribution.lrp import AlphaBeta, Epsilon, RelevanceLeakWarning
from cnnviz.errors import ParameterError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import ASSETS, assert_untouched, one_line_error, snapshot

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlus, LayerMapComposite  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import AlphaBeta as ZAlphaBeta, Epsilon as ZEpsilon, Norm, Pass  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Activation, AvgPool, Convolution  # noqa: E402

CLASSES = [str(i) for i in range(1000)]


def _lm(model, name="toy", classes=CLASSES):
    return LoadedModel(model.eval(), name, "random", Preprocessing(), list(classes))


def _randomize_batch_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


def _composite(method, canonizer):
    base = [(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm())]
    canonizers = [canonizer()] if canonizer else []
    if method == "lrp-zplus":
        return EpsilonPlus(canonizers=canonizers)
    if method == "lrp-alphabeta":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    conv = ZEpsilon() if method == "lrp-epsilon" else ZAlphaBeta(alpha=1, beta=0)
    return LayerMapComposite(base + [(Convolution, conv), (nn.Linear, ZEpsilon())], canonizers=canonizers)


def _zennit(model, x, targets, method, canonizer):
    """zennit's relevance at the input, from the class score (relevance = score at the output)."""
    model = copy.deepcopy(model).eval()
    with Gradient(model=model, composite=_composite(method, canonizer)) as attributor:
        with torch.no_grad():
            out = model(x)
        seed = torch.zeros_like(out)
        rows = torch.arange(len(x))
        seed[rows, targets] = out[rows, targets]
        _, relevance = attributor(x, seed)
    return relevance.detach().numpy()


_MODELS: dict = {}


def _model(arch):
    if arch not in _MODELS:
        torch.manual_seed(3)
        _MODELS[arch] = _randomize_batch_norms(getattr(torchvision.models, arch)(weights=None).eval(), 4)
    return _MODELS[arch]


CASES = [("vgg11_bn", VGGCanonizer, m) for m in ("lrp-epsilon", "lrp-zplus", "lrp-alphabeta", "lrp-alpha1beta0")]
CASES += [("resnet18", ResNetCanonizer, m) for m in ("lrp-epsilon", "lrp-zplus", "lrp-alphabeta", "lrp-alpha1beta0")]
CASES += [pytest.param("vgg16", VGGCanonizer, "lrp-zplus", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch, canonizer, method", CASES)
def test_lrp_equals_zennit(arch, canonizer, method):
    model = _model(arch)
    lm = _lm(model, arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    before = snapshot(model, x)
    r = attribute(lm, x, method, normalized=True, target=7)
    expected = _zennit(model, x, torch.tensor([7, 7]), method, canonizer)
    scale = np.abs(expected).max()
    assert scale > 0
    # batch norms are folded in float64 here, in float32 by zennit; the epsilon rule (eps 1e-6, almost
    # LRP-0) amplifies that difference where a denominator is near zero: there, the error as a whole
    rel_l2 = np.linalg.norm(r.attribution - expected) / np.linalg.norm(expected)
    assert rel_l2 < 5e-3, rel_l2
    if method != "lrp-epsilon":
        np.testing.assert_allclose(r.attribution, expected, rtol=0, atol=1e-3 * scale)
    elif arch.startswith("vgg"):  # zennit on the copy folded here: equal up to float32 rounding
        from cnnviz.engines.attribution.lrp import prepare

        same_fold = _zennit(prepare(model, x[:1])[0], x, torch.tensor([7, 7]), method, None)
        np.testing.assert_allclose(r.attribution, same_fold, rtol=0, atol=1e-4 * scale)
    assert r.params["signed"] and r.params["rule"] == method
    assert r.params["folded"] == any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    np.testing.assert_allclose(r.map, r.attribution.sum(1), rtol=1e-6, atol=1e-6 * scale)
    # a second oracle: in a ReLU network LRP-epsilon with epsilon -> 0 is gradient x input (Ancona et
    # al. 2018), with the relevance sent back the score, and its gradient 1; the other rules differ
    plain = attribute(lm, x, "saliency", normalized=True, target=7)
    gxi = (plain.attribution * x.numpy()).sum(1)
    if method == "lrp-epsilon":
        assert np.linalg.norm(gxi - r.map) < 5e-3 * np.linalg.norm(r.map)
    else:
        assert np.abs(gxi - r.map).max() > 0.05 * np.abs(r.map).max()
    assert_untouched(model, x, before)


# --------------------------------------------------------------------------------------------------
# The definitions, by hand, on Flatten -> Linear -> ReLU -> Linear

def _dense():
    torch.manual_seed(11)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))


def _stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _by_hand(model, x, target, first_rule):
    """R at the input: the score at the output; epsilon (1e-6) on the top layer, `first_rule` on the
    first ("epsilon" or (alpha, beta)); the ReLU passes relevance."""
    W1, b1 = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    W2, b2 = model[3].weight.detach().double().numpy(), model[3].bias.detach().double().numpy()
    a0 = x.double().flatten().numpy()
    z1 = W1 @ a0 + b1
    a1 = np.maximum(z1, 0)
    z2 = W2 @ a1 + b2
    R2 = np.zeros(4)
    R2[target] = z2[target]
    R1 = a1 * (W2.T @ (R2 / _stab(z2)))  # epsilon: a_j w_jk R_k / z_k, summed over k
    if first_rule == "epsilon":
        return (a0 * (W1.T @ (R1 / _stab(z1)))).reshape(x.shape)
    alpha, beta = first_rule
    xp, xn = np.maximum(a0, 0), np.minimum(a0, 0)
    Wp, Wn = np.maximum(W1, 0), np.minimum(W1, 0)
    zp = Wp @ xp + Wn @ xn + np.maximum(b1, 0)
    zn = Wn @ xp + Wp @ xn + np.minimum(b1, 0)
    pos = xp * (Wp.T @ (R1 / _stab(zp))) + xn * (Wn.T @ (R1 / _stab(zp)))
    neg = xp * (Wn.T @ (R1 / _stab(zn))) + xn * (Wp.T @ (R1 / _stab(zn)))
    return (alpha * pos - beta * neg).reshape(x.shape)


@pytest.mark.parametrize("first_rule", ["epsilon", (2.0, 1.0), (1.0, 0.0)])
def test_lrp_rules_follow_their_definitions(first_rule):
    from cnnviz.engines.attribution.lrp import LRP

    model = _dense()
    lm = _lm(model, classes=["a", "b", "c", "d"])
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    first = Epsilon() if first_rule == "epsilon" else AlphaBeta(*first_rule)
    # rules per layer: the first linear layer's rule by its name, epsilon on the rest
    rules = {"": LRP("top", Epsilon(), Epsilon()), "1": LRP("first", first, first)}
    r = attribute(lm, x, "lrp-epsilon", normalized=True, target=2, rules=rules)
    expected = _by_hand(model, x[0], 2, first_rule)
    np.testing.assert_allclose(r.attribution[0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    if first_rule == "epsilon":  # no bias would mean conservation; with biases, the score minus their share
        plain = attribute(lm, x, "lrp-epsilon", normalized=True, target=2)
        np.testing.assert_allclose(plain.attribution, r.attribution, rtol=1e-5, atol=1e-7)


def test_relevance_is_conserved_without_biases():
    """z+ with zero biases: the input's relevance sums to the score (every layer conserves it)."""
    model = _dense()
    with torch.no_grad():
        model[1].bias.zero_()
        model[3].bias.zero_()
    lm = _lm(model, classes=["a", "b", "c", "d"])
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        out = model(x)
    for method in ("lrp-epsilon", "lrp-zplus", "lrp-alpha1beta0"):
        r = attribute(lm, x, method, normalized=True, target=1)
        np.testing.assert_allclose(r.attribution.reshape(3, -1).sum(1), out[:, 1].numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# How much relevance reaches the input (params["relevance_share"], ["relevance_layers"])

class _Residual(nn.Module):
    """conv -> ReLU -> (conv -> ReLU) + skip -> avg pool -> linear: every kind of layer the rules
    act on but batch norm, with or without biases."""

    def __init__(self, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=bias)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y)) + y
        return self.fc(self.pool(y).flatten(1))


@pytest.mark.parametrize("method", ["lrp-epsilon", "lrp-zplus", "lrp-alpha1beta0"])
def test_relevance_share_is_one_without_biases(method):
    """No bias, no batch norm: every rule here conserves relevance (up to eps), so the recorded
    share is 1 and so is every layer's in and out; with biases the same net loses some, and the
    record says exactly attribution.sum() / score, computed here from the model's own output."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    for bias in (False, True):
        torch.manual_seed(4)
        model = _Residual(bias).eval()
        if bias:
            with torch.no_grad():
                for m in (model.conv1, model.conv2, model.fc):
                    m.bias.copy_(torch.rand(m.bias.shape) + 0.5)  # positive biases: they take a share
        lm = _lm(model, classes=list("abcde"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = attribute(lm, x, method, normalized=True, target=3)
        with torch.no_grad():
            score = model(x)[:, 3].double().numpy()
        share = np.asarray(r.params["relevance_share"])
        np.testing.assert_allclose(share, r.attribution.reshape(2, -1).astype(np.float64).sum(1) / score, rtol=1e-5)
        np.testing.assert_allclose(r.params["relevance_score"], score, rtol=1e-6)
        rows = r.params["relevance_layers"]
        assert [q["kind"] for q in rows] == ["linear", "avgpool", "add", "conv", "conv"]
        assert rows[0]["in"] == pytest.approx(1.0)  # the score itself goes in at the top
        assert rows[-1]["out"] == pytest.approx(share.mean(), rel=1e-5)  # and what leaves the first conv arrives
        assert rows[1]["in"] == pytest.approx(rows[0]["out"], rel=1e-5)  # the flatten passes it to the pool
        leak = [w for w in caught if issubclass(w.category, RelevanceLeakWarning)]
        assert bool(leak) == bool(share.min() < 0.5)
        if not bias:
            np.testing.assert_allclose(share, 1.0, atol=1e-4)
            assert all(abs(q["lost"]) < 1e-4 for q in rows)
        else:
            assert share.max() < 0.97  # the biases took their part
            assert max(q["lost"] for q in rows) > 0.01


@pytest.fixture(scope="module")
def lite0():
    from cnnviz import load_model

    return load_model("efficientnet_lite0")


def _photos(k):
    from helpers import SAMPLE, sample_rows

    return [str(SAMPLE / "images" / r["file"]) for r in sample_rows()[:k]]


def test_lite0_relevance_share_equals_a_hand_computation(lite0):
    """On the real model (its batch norms folded) z+ keeps a tiny share; the recorded value is
    attribution.sum() / target logit, the logit taken here from the user's model itself, and a
    warning says it is below MIN_SHARE."""
    files = _photos(2)
    with pytest.warns(RelevanceLeakWarning, match=r"lrp-zplus: relevance reaching the input: .*below 50 %"):
        r = attribute(lite0, files, "lrp-zplus")
    x = torch.cat([lite0.prepare(f, geometry=True)[1] for f in files])
    with torch.no_grad():
        logits = lite0.model(x).double()
    hand = r.attribution.reshape(2, -1).astype(np.float64).sum(1) / logits[[0, 1], r.targets].numpy()
    np.testing.assert_allclose(r.params["relevance_share"], hand, rtol=1e-4)
    assert max(hand) < 0.01  # the finding: almost all relevance goes into the folded biases
    rows = r.params["relevance_layers"]
    assert rows[0]["layer"] == "_fc" and rows[-1]["layer"] == "_conv_stem"
    assert rows[-1]["out"] == pytest.approx(np.mean(hand), rel=1e-3)
    assert sum(q["lost"] for q in rows) == pytest.approx(1 - np.mean(hand), rel=1e-3)


# --------------------------------------------------------------------------------------------------
# LRP-alpha2beta1 and z+ against zennit's published composites on real photos

def _spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(np.ravel(a), np.ravel(b))[0]


def _lite_sum_canonizer():
    """zennit's Norm rule acts on additions only where they are `zennit.layer.Sum` modules: this
    canonizer makes Lite0's skip connection (`x = x + inputs` in MBConvBlock.forward) one, as
    zennit's own ResNetCanonizer does for torchvision's BasicBlock."""
    from efficientnet_lite_pytorch.model import MBConvBlock
    from zennit.canonizers import AttributeCanonizer

    def forward(self, inputs, drop_connect_rate=None):
        x = inputs
        if self._block_args.expand_ratio != 1:
            x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        args = self._block_args
        if self.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
            x = self.canonizer_sum(torch.stack([x, inputs], dim=-1))
        return x

    def attributes(name, module):
        if isinstance(module, MBConvBlock):
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lrp-alphabeta", "lrp-zplus"])
def test_lite0_equals_zennits_composite_with_its_additions_as_sum(lite0, method):
    """zennit's composite on Lite0 (batch norms folded as here, the skip connections made Sum
    modules): Spearman >= 0.99 per photo. Without the Sum canonizer zennit sends the whole relevance
    into both branches of every addition (its plain gradient) and LRP-α2β1 agrees only at ~0.4: the
    cause of the disagreement the issue measured."""
    from cnnviz.engines.attribution.lrp import prepare

    files = _photos(3)
    with pytest.warns(RelevanceLeakWarning):
        r = attribute(lite0, files, method)
    x = torch.cat([lite0.prepare(f, geometry=True)[1] for f in files])
    folded = prepare(lite0.model, x[:1])[0]
    comp = EpsilonAlpha2Beta1 if method == "lrp-alphabeta" else EpsilonPlus
    targets = torch.as_tensor(r.targets, dtype=torch.long)
    with_sum = _zennit_with(folded, x, targets, comp(canonizers=[_lite_sum_canonizer()]))
    for i in range(len(files)):
        assert _spearman(r.map[i], with_sum[i].sum(0)) >= 0.99
        np.testing.assert_allclose(r.attribution[i].sum(), with_sum[i].sum(), rtol=1e-3)
    if method == "lrp-alphabeta":
        plain = _zennit_with(folded, x, targets, comp())
        assert min(_spearman(r.map[i], plain[i].sum(0)) for i in range(len(files))) < 0.8


def _zennit_with(model, x, targets, composite):
    model = copy.deepcopy(model).eval()
    with Gradient(model=model, composite=composite) as attributor:
        with torch.no_grad():
            out = model(x)
        seed = torch.zeros_like(out)
        rows = torch.arange(len(x))
        seed[rows, targets] = out[rows, targets]
        _, relevance = attributor(x, seed)
    return relevance.detach().numpy()


def test_resnet18_alphabeta_equals_zennit_on_real_photos():
    """ResNet-18 (random weights, batch norms with random statistics) on two real photos at 224:
    LRP-α2β1 against zennit's EpsilonAlpha2Beta1 with its ResNetCanonizer, Spearman >= 0.99 per
    image."""
    files = _photos(2)
    model = _model("resnet18")
    lm = _lm(model, "resnet18")  # ImageNet preprocessing, 224 crop
    x = torch.cat([lm.prepare(f, geometry=True)[1] for f in files])
    r = attribute(lm, x, "lrp-alphabeta", normalized=True, target=7)
    expected = _zennit(model, x, torch.tensor([7, 7]), "lrp-alphabeta", ResNetCanonizer)
    for i in range(len(files)):
        assert _spearman(r.map[i], expected[i].sum(0)) >= 0.99


# --------------------------------------------------------------------------------------------------
# The user's model, after a call and after a failure

class _Fail(torch.autograd.Function):
    when = None  # "forward" or "backward": class-wide, so that the folded copy fails too

    @staticmethod
    def forward(ctx, x):
        if _Fail.when == "forward":
            raise RuntimeError("simulated failure")
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if _Fail.when == "backward":
            raise RuntimeError("simulated failure")
        return g


class _FailNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(_Fail.apply(self.pool(y)).flatten(1))


@pytest.mark.parametrize("failure", [None, "forward", "backward"])
def test_model_is_untouched_after_lrp_even_after_a_failure(failure):
    torch.manual_seed(1)
    model = _randomize_batch_norms(_FailNet(), 2)
    model.train()  # the user's mode comes back
    lm = LoadedModel(model, "failnet", "random", Preprocessing(), [str(i) for i in range(10)])
    x = torch.randn(2, 3, 16, 16)
    before = snapshot(model, x)
    _Fail.when = failure
    try:
        if failure:
            with pytest.raises(RuntimeError, match="simulated failure"):
                attribute(lm, x, "lrp-zplus", normalized=True, target=1)
        else:
            r = attribute(lm, x, "lrp-zplus", normalized=True, target=1)
            assert r.params["folded"] and np.abs(r.attribution).max() > 0
    finally:
        _Fail.when = None
    assert_untouched(model, x, before)
    assert torch._C._len_torch_function_stack() == 0
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Errors, warnings, the command line

def test_bad_lrp_input_is_one_line_naming_the_value():
    lm = _lm(_dense(), classes=["a", "b", "c", "d"])
    x = torch.randn(1, 3, 2, 2)
    for kwargs, fragment in (({"rules": {"nosuch": "lrp-zplus"}}, "'nosuch'"),
                             ({"rules": {"": "lrp-nope"}}, "'lrp-nope'"),
                             ({"layer": "1"}, "--layer '1'")):
        with pytest.raises(ParameterError) as e:
            attribute(lm, x, "lrp-epsilon", normalized=True, **kwargs)
        assert fragment in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ParameterError, match=r"alpha 3.*alpha - beta = 1"):
        AlphaBeta(3.0, 1.0)


def test_a_gate_without_an_lrp_rule_is_named_in_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    lm = _lm(model, classes=["a", "b", "c"])
    with pytest.warns(UserWarning, match="sigmoid has no lrp-epsilon rule"):
        attribute(lm, torch.randn(1, 3, 8, 8), "lrp-epsilon", normalized=True, target=0)


def test_cli_lrp_draws_a_signed_figure(tmp_path):
    from cnnviz_cli.main import cli

    fig = tmp_path / "lrp.png"
    res = CliRunner().invoke(cli, ["lrp", str(ASSETS / "rocket.jpg"), "--rule", "alphabeta", "--model", "resnet18",
                                   "--weights", "none", "--device", "cpu", "--out", str(fig), "--save",
                                   str(tmp_path / "r.npz")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert fig.stat().st_size > 10_000 and "lrp for" in res.output
    from cnnviz.results import load_result

    r = load_result(tmp_path / "r.npz")
    assert r.params["method"] == "lrp-alphabeta" and r.params["signed"] and r.map.min() < 0 < r.map.max()
    # the summary line says how much of the score reached the input, as the saved result records it
    share = r.params["relevance_share"][0]
    assert f"relevance reaching the input: {100 * share:.3g} % of the target score" in res.output
    assert ("warning: relevance reaching the input" in res.output) == (share < 0.5)
    assert "RelevanceLeakWarning" not in res.output
    one_line_error(CliRunner().invoke(cli, ["lrp", str(ASSETS / "rocket.jpg"), "--rule", "gamma"]), "gamma")
    one_line_error(CliRunner().invoke(cli, ["lrp", str(ASSETS / "rocket.jpg"), "--unit", "3"]), "--unit")
