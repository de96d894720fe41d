"""First-layer filters and feature maps: the engines against the model's own weights and a direct
forward hook, the figures in every format, and `cnnviz filters` / `cnnviz activations` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cnnviz.engines.units.filters import ActivationsResult, FiltersResult, feature_maps, first_layer_filters
from cnnviz.errors import LayerError, ParameterError
from cnnviz.models import load_model
from cnnviz.render.units.filters import filter_tiles
from cnnviz.results import load_result

from helpers import ASSETS, assert_untouched, snapshot

ROCKET = ASSETS / "rocket.jpg"


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def rocket_maps(lite0):
    return feature_maps(lite0, ROCKET, "_blocks.10", device="cpu")


@pytest.fixture(scope="module")
def lite0_filters(lite0):
    return first_layer_filters(lite0)


@pytest.fixture(scope="module")
def cli():
    from cnnviz_cli.main import cli as group

    return group


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- engines ---------------------------------------------------------------------------------------

def test_filters_are_the_first_conv_weights_lite0(lite0):
    r = first_layer_filters(lite0)
    conv = lite0.model._conv_stem
    assert isinstance(conv, torch.nn.Conv2d) and type(conv) is not torch.nn.Conv2d  # a subclass
    assert r.params["layer"] == "_conv_stem"
    assert r.weights.shape == (32, 3, 3, 3) and r.weights.dtype == np.float32
    assert np.array_equal(r.weights, conv.weight.detach().numpy())
    assert r.params["has_bias"] is False and r.params["in_channels"] == 3


def test_filters_are_the_first_conv_weights_alexnet_random():
    torch.manual_seed(0)
    lm = load_model("alexnet", weights="none")
    r = first_layer_filters(lm)
    conv = lm.model.features[0]
    assert r.params["layer"] == "features.0" and r.weights.shape == (64, 3, 11, 11)
    assert np.array_equal(r.weights, conv.weight.detach().numpy())
    assert np.array_equal(r.bias, conv.bias.detach().numpy())


def test_filter_tiles_normalized_each_and_upsampled():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32) * np.arange(1, 6, dtype=np.float32)[:, None, None, None]
    tiles = filter_tiles(w)
    assert tiles.shape == (5, 24, 24, 3)  # 3x3 enlarged 8x by nearest
    for t, f in zip(tiles, w):
        assert t.min() == 0.0 and t.max() == 1.0  # each filter on its own scale
        expect = (f - f.min()) / (f.max() - f.min())
        assert np.allclose(t[::8, ::8], np.transpose(expect, (1, 2, 0)))
    gray = filter_tiles(rng.normal(size=(4, 2, 5, 5)).astype(np.float32))  # non-RGB input: channel 0, gray
    assert gray.shape == (4, 25, 25)


def test_feature_maps_equal_a_direct_hook(lite0, rocket_maps):
    r = rocket_maps
    pixels, x = lite0.prepare(ROCKET)
    seen = []
    h = lite0.model._blocks[10].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        lite0.model.eval()
        with torch.no_grad():
            lite0.model(x)
    finally:
        h.remove()
    direct = seen[0][0].numpy()
    assert r.maps.shape == direct.shape == (112, 14, 14)
    assert np.array_equal(r.image, pixels)
    assert sorted(r.channels.tolist()) == list(range(112))  # a permutation: every channel once
    assert np.allclose(r.maps, direct[r.channels], atol=1e-5)
    assert np.allclose(r.strength, direct.reshape(112, -1).max(1)[r.channels], atol=1e-5)
    assert np.all(np.diff(r.strength) <= 0)  # strongest first
    assert r.params["sort"] == "max" and r.params["layer"] == "_blocks.10"


@pytest.mark.slow
def test_top_keeps_the_strongest(lite0, rocket_maps):
    r = feature_maps(lite0, ROCKET, "_blocks.10", top=5, device="cpu")
    assert r.maps.shape == (5, 14, 14)
    assert np.array_equal(r.channels, rocket_maps.channels[:5])
    assert np.allclose(r.maps, rocket_maps.maps[:5])


def test_default_layer_ties_broken_by_mean_and_model_untouched(lite0):
    _, x = lite0.prepare(ROCKET)
    before = snapshot(lite0.model, x)
    r = feature_maps(lite0, ROCKET, top=40, device="cpu")
    assert_untouched(lite0.model, x, before)
    assert r.params["layer"] == "_swish@1" and r.maps.shape[1:] == (7, 7)
    assert np.all(np.diff(r.strength) <= 0)
    tied = r.strength == r.strength[0]  # ReLU6 saturates at 6: many maxima tie
    if tied.sum() > 1:
        assert np.all(np.diff(r.mean[tied]) <= 0)


@pytest.mark.parametrize("layer, phrase", [("_blocks.99", "unknown layer"), ("_fc", "not CxHxW"),
                                           ("_swish", "say which call")])
def test_bad_layers(lite0, layer, phrase):
    with pytest.raises(LayerError, match=phrase):
        feature_maps(lite0, ROCKET, layer, device="cpu")


@pytest.mark.parametrize("top", [0, -3, 2.5])
def test_bad_top(lite0, top):
    with pytest.raises(ParameterError, match="top"):
        feature_maps(lite0, ROCKET, "_blocks.10", top=top)


# --- figures and saved results ---------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_figures_render_in_every_format(lite0_filters, rocket_maps, tmp_path, suffix):
    import matplotlib.pyplot as plt

    for result, opts in ((lite0_filters, {}), (rocket_maps, {"top": 11})):
        path = tmp_path / f"{result.kind}.{suffix}"
        plt.close(result.render(path, **opts))
        assert path.stat().st_size > 1000


def test_non_rgb_filters_and_signed_maps_render(tmp_path):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    r = FiltersResult(params={"layer": "conv1", "out_channels": 6, "in_channels": 1, "kernel": [5, 5],
                              "has_bias": False}, provenance={"model": "toy"},
                      weights=rng.normal(size=(6, 1, 5, 5)).astype(np.float32), bias=np.zeros(6, np.float32))
    plt.close(r.render(tmp_path / "gray.png"))
    maps = rng.normal(size=(3, 4, 4)).astype(np.float32)
    a = ActivationsResult(params={"layer": "x", "num_channels": 3}, provenance={"model": "toy"},
                          image=np.zeros((8, 8, 3), np.uint8), maps=maps, channels=np.arange(3, dtype=np.int32),
                          strength=maps.reshape(3, -1).max(1), mean=maps.reshape(3, -1).mean(1))
    fig = a.render(tmp_path / "signed.png", top=2)
    assert "centred on 0" in fig._suptitle.get_text()
    plt.close(fig)


def test_results_round_trip(lite0_filters, rocket_maps, tmp_path):
    for result in (lite0_filters, rocket_maps):
        back = load_result(result.save(tmp_path / f"{result.kind}.npz"))
        assert type(back) is type(result)
        for k, v in result.arrays().items():
            assert np.array_equal(getattr(back, k), v)
        assert back.params["layer"] == result.params["layer"]


# --- CLI -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_filters(cli, tmp_path):
    out, save = tmp_path / "f.png", tmp_path / "f.npz"
    res = invoke(cli, "filters", "--model", "efficientnet_lite0", "--out", out, "--save", save)
    assert res.exit_code == 0, res.output
    assert "stem conv: 32 filters of 3x3x3" in res.output
    assert out.stat().st_size > 5000 and save.is_file()
    assert json.loads(save.with_suffix(".json").read_text())["kind"] == "filters"
    res = invoke(cli, "render", save, "--out", tmp_path / "again.svg")
    assert res.exit_code == 0 and (tmp_path / "again.svg").is_file()


@pytest.mark.slow
def test_cli_activations(cli, tmp_path):
    out, save = tmp_path / "a.png", tmp_path / "a.npz"
    res = invoke(cli, "activations", ROCKET, "--layer", "_blocks.10", "--top", "16", "--out", out, "--save", save)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 5000
    r = load_result(save)
    assert isinstance(r, ActivationsResult) and r.maps.shape == (16, 14, 14)


@pytest.mark.parametrize("args, phrase", [
    pytest.param(["--layer", "_blocks.99"], "unknown layer", marks=pytest.mark.slow),
    pytest.param(["--layer", "_fc"], "not CxHxW", marks=pytest.mark.slow),
    (["--layer", "_blocks.10", "--top", "0"], "--top"),
])
def test_cli_activations_bad_input(cli, tmp_path, args, phrase):
    out = tmp_path / "a.png"
    res = invoke(cli, "activations", ROCKET, *args, "--out", out)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and phrase in lines[0], res.stderr
    assert "Traceback" not in res.output and not out.exists()
    assert list(tmp_path.iterdir()) == []
