"""The general deconvnet (autograd with the deconvnet rectifier rule) against an explicit,
layer-by-layer Zeiler-Fergus deconvnet (switches, relu of the signal, transposed filters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cnnviz.engines.attribution.deconvnet import features_of, project_sequential
from cnnviz.engines.attribution.gradients import Unit, attribute, input_signal
from cnnviz.errors import ParameterError
from cnnviz.layers import resolve_layer
from cnnviz.models import LoadedModel, Preprocessing

from helpers import sample_image


def _photos(size: int) -> torch.Tensor:
    pre = Preprocessing(crop=(size, size), resize=round(size * 256 / 224))
    return torch.cat([pre(Image.open(sample_image(i)).convert("RGB")) for i in (0, 2)])


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval(), _photos(224)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval(), _photos(64)


def _units(stack: nn.Sequential, x: torch.Tensor, index: int) -> list[Unit]:
    """The channel with the largest activation (random weights leave some channels dead), as its
    strongest activation, its whole map, and the position where it is positive in both images."""
    with torch.no_grad():
        act = stack[: index + 1](x.clone())
    channel = int(act.amax(dim=(0, 2, 3)).argmax())
    both = act[:, channel].amin(0)
    assert both.max() > 0, "no position active in both images"
    k = int(both.flatten().argmax())
    w = act.shape[-1]
    return [Unit(channel, "max"), Unit(channel, "map"), Unit(channel, (k // w, k % w))]


def _agree(model, x, index: int) -> None:
    stack = features_of(model)
    info = resolve_layer(model, f"features.{index}", x[:1])
    x_before = x.clone()
    for unit in _units(stack, x, index):
        mine = project_sequential(stack, x, index, unit)
        ref = input_signal(model, x, "deconv", layer=info, unit=unit)
        assert mine.shape == ref.shape == x.shape
        for i in range(len(x)):  # not vacuous: each image's projection carries signal
            scale = float(ref[i].abs().max())
            assert scale > 0 and float(mine[i].abs().max()) > 0, (index, unit, i)
            torch.testing.assert_close(mine[i], ref[i], rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m: f"features.{index} {unit}: {m}")
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("index", [1, 4, 11, 12])  # conv1's relu, after overlapping pool, top relu, top pool
def test_alexnet_explicit_deconvnet_matches_general(alexnet, index):
    _agree(*alexnet, index)


@pytest.mark.parametrize("index", [15, 30])  # block 3's last relu; the top conv block, through its relu and pool
def test_vgg16_explicit_deconvnet_matches_general(vgg16, index):
    _agree(*vgg16, index)


def test_overlapping_pooling_sums_what_shared_switches_send_back(alexnet, monkeypatch):
    """AlexNet's 3x3 stride 2 pools overlap: one input position can be the switch of several
    windows. Unpooling must add what they send back (as max pooling's backward does); keeping only
    one of them (max_unpool2d's overwrite) loses signal and gives a different picture."""
    import cnnviz.engines.attribution.deconvnet as D
    import torch.nn.functional as F

    model, x = alexnet
    stack = features_of(model)
    unit = _units(stack, x, 4)[1]
    summed = project_sequential(stack, x, 4, unit)
    monkeypatch.setattr(D, "_unpool", lambda s, sw, size: F.max_unpool2d(s, sw, 3, 2, output_size=size[-2:]))
    overwritten = project_sequential(stack, x, 4, unit)
    assert (summed - overwritten).abs().max() > 0.1 * summed.abs().max()


def test_deconv_differs_from_gradient(alexnet):
    model, x = alexnet
    info = resolve_layer(model, "features.11", x[:1])
    unit = _units(features_of(model), x, 11)[0]
    deconv = input_signal(model, x, "deconv", layer=info, unit=unit)
    grad = input_signal(model, x, "gradient", layer=info, unit=unit)
    assert grad.abs().max() > 0
    assert (deconv - grad).abs().max() > 0.1 * deconv.abs().max()


def test_strided_dilated_grouped_ceil_mode_stack():
    """Sizes that need output_padding going down, padded/dilated/ceil_mode pooling, groups."""
    torch.manual_seed(1)
    stack = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(), nn.Dropout(),
        nn.MaxPool2d(2, stride=1, dilation=2), nn.Conv2d(8, 6, 2, stride=2), nn.ReLU(inplace=True))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = stack

        def forward(self, x):
            return self.features(x)

    model = Net().eval()
    x = torch.randn(2, 3, 37, 41)
    _agree(model, x, len(stack) - 1)
    _agree(model, x, 6)


def test_unsupported_module_is_a_one_line_parameter_error():
    stack = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ParameterError) as e:
        project_sequential(stack, x, 2, Unit(0))
    assert "BatchNorm2d" in str(e.value) and "\n" not in str(e.value)
    project_sequential(stack, x, 0, Unit(0))  # below the unsupported module: fine
    with pytest.raises(ParameterError, match="out of range"):
        project_sequential(stack, x, 3, Unit(0))
    with pytest.raises(ParameterError, match="has no `features`"):
        features_of(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------
# Does the deconvnet map depend on the image? Only the max-pool switches carry the image into it.

def _pearson(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def _gray_and_noise(size: int):
    gray = Image.new("RGB", (size, size), (124, 116, 104))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    return gray, noise


@pytest.fixture(scope="module")
def lite0():
    import cnnviz

    return cnnviz.load_model()


def test_lite0_deconv_is_flagged_uninformative_and_really_is_the_same_map_for_every_image(lite0):
    photos = [sample_image(10), sample_image(388)]
    r = attribute(lite0, photos, "deconv", target=11)
    assert r.params["uninformative"] is True
    assert r.params["max_pool_switches"] == 0
    assert "does not depend on the image" in r.params["uninformative_reason"]
    # the oracle: the maps of two photos, a gray image and noise, computed separately, are one map
    others = [attribute(lite0, im, "deconv", target=11).map[0] for im in _gray_and_noise(224)]
    for m in [r.map[1]] + others:
        assert _pearson(r.map[0], m) > 0.999
    # a unit of a layer: also flagged (the same pattern, wherever the unit's maximum falls)
    u = attribute(lite0, photos, "deconv", layer="_blocks.10", unit="5:max")
    assert u.params["uninformative"] is True
    # guided backprop on the same model is not a deconvnet: no flag
    assert "uninformative" not in attribute(lite0, photos[0], "guided").params


def _random_lm(name: str, size: int):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    pre = Preprocessing(crop=(size, size), resize=round(size * 256 / 224))
    return LoadedModel(model, name, "random", pre, [str(i) for i in range(1000)])


@pytest.mark.parametrize("name, size, layer", [("alexnet", 160, "features.7"), ("vgg11", 64, "features.10")])
def test_max_pool_switches_make_the_deconvnet_depend_on_the_image_and_it_is_not_flagged(name, size, layer):
    lm = _random_lm(name, size)
    photos = [sample_image(10), sample_image(388)]
    r = attribute(lm, photos, "deconv", target=7)
    assert r.params["uninformative"] is False and r.params["uninformative_reason"] is None
    assert r.params["max_pool_switches"] > 0
    # the oracle: the maps really differ between photos, and from a gray image's and noise's maps
    gray, noise = (attribute(lm, im, "deconv", target=7).map[0] for im in _gray_and_noise(size))
    assert _pearson(r.map[0], r.map[1]) < 0.9
    for m in r.map:
        assert _pearson(m, gray) < 0.95 and _pearson(m, noise) < 0.95
    # the correlation stored per image is the one with the map of the dataset-mean image
    mean = lm.preprocessing.fill_value("mean").expand(1, 3, size, size).clone()
    exact_gray = attribute(lm, mean, "deconv", target=7, normalized=True).map[0]
    np.testing.assert_allclose(r.params["gray_image_r"], [_pearson(m, exact_gray) for m in r.map], atol=1e-4)
    u = attribute(lm, photos, "deconv", layer=layer, unit="3:map")
    assert u.params["uninformative"] is False
