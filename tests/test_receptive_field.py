"""Theoretical receptive fields (`cnnviz.engines.receptive_field.theory`) against the gradient oracle:
with all weights positive, biases zero, batch norm the identity, rectifiers the identity and max
pooling replaced by average pooling of the same geometry, the gradient of one unit with respect to
the input is non-zero exactly on its receptive field. Its extent must be the computed size r, its
first row i*S - P, and moving the unit by one must move it by the computed stride S."""

from __future__ import annotations

import copy
import math
import socket

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.engines.receptive_field.theory import (RFInfo, ReceptiveFieldResult, UnsupportedOp, format_table,
                                            receptive_fields)
from cnnviz.layers import _hooks


# --------------------------------------------------------------------------------------------------
# the oracle

_RECTIFIERS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_"}


class _Linearize(TorchFunctionMode):
    """Rectifiers become the identity; max pooling becomes average pooling of the same geometry."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "").lstrip("_")
        if name in _RECTIFIERS:
            return args[0]
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            a = list(args) + [None] * 7
            k = kwargs.get("kernel_size", a[1])
            s = kwargs.get("stride", a[2])
            p = kwargs.get("padding", a[3] if a[3] is not None else 0)
            d = kwargs.get("dilation", a[4] if a[4] is not None else 1)
            ceil = kwargs.get("ceil_mode", a[5] if a[5] is not None else False)
            assert d in (1, (1, 1), [1, 1]), "the oracle cannot replace a dilated max pool"
            return F.avg_pool2d(args[0], k, s if s not in (None, [], ()) else k, p, bool(ceil), True)
        if name == "adaptive_max_pool2d":
            return F.adaptive_avg_pool2d(args[0], kwargs.get("output_size", args[1] if len(args) > 1 else None))
        return func(*args, **kwargs)


def positive_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)
            elif getattr(mod, "weight", None) is not None and isinstance(mod.weight, torch.Tensor):
                w = mod.weight
                fan_in = w[0].numel() if w.ndim > 1 else 1
                w.fill_(1.0 / fan_in)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
    return m


class _Stop(Exception):
    pass


def support(model: nn.Module, address: str, size: tuple[int, int], units: list[tuple[int, int]]):
    """For each unit (i, j) of layer `address` (all channels summed), the first and last input row
    and column where the gradient is non-zero."""
    name, _, call = address.partition("@")
    want = int(call) if call else 0
    module = dict(model.named_modules())[name]
    state = {"k": 0, "out": None}

    def hook(mod, inp, out):
        if state["k"] == want:
            state["out"] = out
            raise _Stop
        state["k"] += 1

    x = torch.ones(len(units), 3, *size, dtype=torch.float64, requires_grad=True)
    with _hooks([module.register_forward_hook(hook)]), _Linearize():
        try:
            model(x)
        except _Stop:
            pass
    out = state["out"]
    total = sum(out[b, :, i, j].sum() for b, (i, j) in enumerate(units))
    total.backward()
    spans = []
    for b in range(len(units)):
        g = x.grad[b].abs().sum(0)
        rows = torch.nonzero(g.sum(1) > 0).flatten()
        cols = torch.nonzero(g.sum(0) > 0).flatten()
        spans.append(((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))))
    return spans, tuple(out.shape[-2:])


def check_against_oracle(model: nn.Module, info: RFInfo, margin: int = 4):
    """Pick an input large enough that units (i, j) and (i+1, j+1) see no padding; compare."""
    (rh, rw), (sh, sw), (ph, pw) = info.rf, info.stride, info.padding
    i, j = math.ceil(ph / sh) + 1, math.ceil(pw / sw) + 1
    size = (i * sh - ph + rh + sh + margin, j * sw - pw + rw + sw + margin)
    spans, out_hw = support(positive_copy(model), info.address, size, [(i, j), (i + 1, j + 1)])
    assert out_hw[0] > i + 1 and out_hw[1] > j + 1
    (r0, c0), (r1, c1) = spans
    assert r0 == info.interval(i, j)[0], f"{info.address}: rows {r0}, computed {info.interval(i, j)[0]}"
    assert c0 == info.interval(i, j)[1], f"{info.address}: cols {c0}, computed {info.interval(i, j)[1]}"
    assert r0[1] - r0[0] + 1 == rh and c0[1] - c0[0] + 1 == rw
    assert r1[0] - r0[0] == sh and c1[0] - c0[0] == sw
    assert r1 == info.interval(i + 1, j + 1)[0] and c1 == info.interval(i + 1, j + 1)[1]


def by_address(model, size=(224, 224)) -> dict[str, RFInfo]:
    return {i.address: i for i in receptive_fields(model, size)}


# --------------------------------------------------------------------------------------------------
# hand-made models: dilation, asymmetric and functional padding/pooling, branches

class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, dilation=2, padding=2)
        self.b = nn.Conv2d(4, 4, (3, 5), stride=(2, 1), padding=(0, 1))
        self.c = nn.Conv2d(4, 4, 3, padding="same", dilation=3)
        self.d = nn.Conv2d(4, 4, 2, stride=2, padding=1, padding_mode="reflect")

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.pad(x, (1, 3, 2, 0))  # left 1, right 3, top 2, bottom 0
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.b(x)
        x = F.avg_pool2d(x, (2, 3), stride=(1, 2))
        x = self.c(x)
        x = self.d(x)
        return x


class Branches(nn.Module):
    """Two branches of different size and offset, added; a third concatenated."""

    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(3, 4, 3, padding=1)
        self.big = nn.Conv2d(3, 4, 5)
        self.wide = nn.Conv2d(3, 2, (1, 9), padding=(0, 4))
        self.head = nn.Conv2d(6, 2, 3, stride=2)

    def forward(self, x):
        a = self.small(x)  # [i-1, i+1]
        b = self.big(F.pad(x, (4, 0, 4, 0)))  # [i-4, i]
        s = a + b  # union [i-4, i+1]: size 6, padding 4
        c = self.wide(x)
        return self.head(torch.cat([s, c], dim=1))


def test_sequential_arithmetic_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 3, 7, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                        nn.Conv2d(3, 3, 3, padding=2, dilation=2))
    info = by_address(net, (64, 64))
    assert info["0"].rf == (7, 7) and info["0"].stride == (2, 2) and info["0"].padding == (3, 3)
    assert info["2"].rf == (11, 11) and info["2"].stride == (4, 4) and info["2"].padding == (5, 5)
    assert info["3"].rf == (27, 27) and info["3"].stride == (4, 4) and info["3"].padding == (13, 13)


def test_functional_model_against_oracle():
    model = Functional()
    info = by_address(model, (96, 96))
    for name in ("a", "b", "c", "d"):
        check_against_oracle(model, info[name])
    # asymmetric: rows and columns differ
    assert info["d"].rf[0] != info["d"].rf[1] or info["d"].padding[0] != info["d"].padding[1]


def test_branches_union():
    model = Branches()
    info = by_address(model, (32, 32))
    # the union of [i-1, i+1] and [i-4, i] along each axis; then the 1x9 branch widens columns
    h = info["head"]
    assert h.rf == (6 + 2, 9 + 2) and h.stride == (2, 2) and h.padding == (4, 4)
    check_against_oracle(model, h)


def test_branches_union_model_reused():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(self.conv(x))))

    info = by_address(Reuse(), (16, 16))
    assert info["conv@0"].rf == (3, 3) and info["conv@1"].rf == (5, 5) and info["relu@1"].rf == (5, 5)


def test_unsupported_op_named():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return torch.roll(self.conv(x), 1, dims=2)

    with pytest.raises(UnsupportedOp, match="roll"):
        receptive_fields(Up(), (16, 16))


def test_non_spatial_layers_have_none():
    info = by_address(torchvision.models.alexnet(weights=None))
    assert info["classifier.6"].rf is None
    assert "classifier.6" in format_table(list(info.values()))


# --------------------------------------------------------------------------------------------------
# torchvision models, random weights (never downloaded)

def _model(name):
    kw = {"init_weights": False} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kw)


def test_vgg16_published_values():
    info = by_address(_model("vgg16"))
    # conv5_3 (features.28) 196, pool5 (features.30) 212, strides 16 and 32
    assert info["features.28"].rf == (196, 196) and info["features.28"].stride == (16, 16)
    assert info["features.30"].rf == (212, 212) and info["features.30"].stride == (32, 32)
    assert info["features.4"].rf == (6, 6)


def test_alexnet_published_values():
    info = by_address(_model("alexnet"))
    assert info["features.0"].rf == (11, 11) and info["features.0"].stride == (4, 4)
    assert info["features.12"].rf == (195, 195) and info["features.12"].stride == (32, 32)


FAST = [("alexnet", "features.7"), ("alexnet", "features.12"), ("vgg16", "features.16"),
        ("resnet18", "layer1"), ("resnet18", "layer2.0.relu@1"), ("googlenet", "inception3a"),
        ("googlenet", "maxpool3")]
SLOW = [("vgg16", "features.28"), ("vgg16", "features.30"), ("resnet18", "layer3"), ("resnet18", "layer4.0"),
        ("googlenet", "inception4a"), ("googlenet", "inception4e")]


@pytest.mark.parametrize("name,layer", FAST)
def test_oracle_fast(name, layer):
    model = _model(name)
    check_against_oracle(model, by_address(model)[layer])


@pytest.mark.slow
@pytest.mark.parametrize("name,layer", SLOW)
def test_oracle_slow(name, layer):
    model = _model(name)
    check_against_oracle(model, by_address(model)[layer])


def test_receptive_fields_leaves_model_untouched():
    from helpers import assert_untouched, snapshot

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 12, 12)
    model(x)
    model.train()
    before = snapshot(model, x)
    receptive_fields(model, (12, 12))
    assert_untouched(model, x, before)


# --------------------------------------------------------------------------------------------------
# the command

def _cli():
    from cnnviz_cli.main import cli

    return cli


def test_cli_rf_vgg16_no_weights(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    out = tmp_path / "rf.png"
    save = tmp_path / "rf.npz"
    res = CliRunner().invoke(_cli(), ["rf", "--model", "vgg16", "--out", str(out), "--save", str(save)])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln.split() for ln in res.output.splitlines() if ln and not ln.startswith("#")}
    assert lines["features.28"][2:5] == ["196x196", "16", "90"]
    assert lines["features.30"][2:5] == ["212x212", "32", "90"]
    assert lines["classifier.6"][2] == "-"
    assert out.stat().st_size > 1000
    assert not any(home.rglob("*.pth"))
    from cnnviz.results import load_result

    r = load_result(save)
    assert isinstance(r, ReceptiveFieldResult) and "features.30" in list(r.layers)


def test_cli_rf_errors(tmp_path):
    res = CliRunner().invoke(_cli(), ["rf", "--model", "vgg16", "--out", str(tmp_path / "x.txt")])
    assert res.exit_code != 0 and "extension" in res.output


# --------------------------------------------------------------------------------------------------
# effective receptive field

def test_effective_rf_inside_theoretical(tmp_path):
    from cnnviz.engines.receptive_field.effective import effective_receptive_field
    from cnnviz.render.receptive_field.sizes import effective_figure
    from cnnviz.render.style import plt

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())])
    imgs = torch.randn(4, 3, 41, 41)
    e = effective_receptive_field(model, "6", imgs)
    info = by_address(model, (41, 41))["6"]
    assert info.rf == (9, 9)
    (r0, r1), (c0, c1) = e.box
    assert (r0, r1) == (16, 24) and e.unit == (20, 20)
    outside = e.map.copy()
    outside[r0:r1 + 1, c0:c1 + 1] = 0
    assert outside.max() == 0 and e.map.max() > 0
    assert 1 <= e.size[0] <= 9 and 1 <= e.size[1] <= 9
    assert all(p.grad is None for p in model.parameters())
    fig = effective_figure([e])
    fig.savefig(tmp_path / "erf.png")
    plt.close(fig)
