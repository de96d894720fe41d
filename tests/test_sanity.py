"""The model-randomization sanity check (Adebayo et al. 2018) on a real model and image."""

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz
from cnnviz.engines.attribution.sanity import cascade_steps, rankdata, sanity, spearman
from cnnviz.errors import ParameterError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import ASSETS, assert_untouched, snapshot

ROCKET = ASSETS / "rocket.jpg"


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model()


def _tiny():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    pre = Preprocessing(crop=(48, 48), resize=56)
    return LoadedModel(net.eval(), "tiny", "random", pre, [f"c{i}" for i in range(5)])


@pytest.mark.parametrize("n", [1, 2, 7, 500])
def test_spearman_equals_scipy_with_ties(n):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(n)
    a = rng.integers(0, 4, size=n * 3).astype(np.float32)  # many ties
    b = a + rng.integers(0, 3, size=a.size)
    expected = spearmanr(a, b).statistic
    got = spearman(a, b)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)
    from scipy.stats import rankdata as sp_rank
    np.testing.assert_array_equal(rankdata(a), sp_rank(a))


def test_spearman_of_a_constant_map_is_nan_and_of_a_copy_is_one():
    x = np.random.default_rng(0).random((5, 5))
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.zeros(25), x))


def test_steps_are_contiguous_chunks_from_the_top():
    layers = [f"l{i}" for i in range(10)]  # bottom to top
    plan = cascade_steps(layers, 3)
    assert [name for chunk in plan for name in chunk] == layers[::-1]
    assert len(plan) == 3 and all(plan)
    assert cascade_steps(layers[:4], None) == [["l3"], ["l2"], ["l1"], ["l0"]]


@pytest.mark.slow
def test_saliency_loses_the_original_map_once_all_layers_are_random(lite0):
    x = lite0.prepare(ROCKET)[1]
    before = snapshot(lite0.model, x)
    rng_before = torch.get_rng_state()
    r = sanity(lite0, ROCKET, methods=("saliency",), steps=2)
    assert list(r.methods) == ["saliency"]
    assert r.steps[0] == "original" and r.steps[-1] == "_conv_stem" and len(r.steps) == 3
    assert r.spearman.shape == (1, 3) and r.maps.shape == (1, 3, 224, 224)
    assert r.spearman[0, 0] == pytest.approx(1.0)
    assert r.spearman[0, -1] < 0.5
    assert r.params["target_name"] == "missile" and r.params["num_layers"] == 99
    assert sorted(n for chunk in r.params["step_layers"] for n in chunk) == sorted(
        n for n, m in lite0.model.named_modules() if n and any(True for _ in m.parameters(recurse=False)))
    assert_untouched(lite0.model, x, before)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_deterministic_under_the_seed_and_the_target_stays_fixed():
    lm = _tiny()
    img = ROCKET
    x = lm.prepare(img)[1]
    before = snapshot(lm.model, x)
    a = sanity(lm, img, methods=("saliency", "guided", "gradcam"), seed=3)
    b = sanity(lm, img, methods=("saliency", "guided", "gradcam"), seed=3)
    c = sanity(lm, img, methods=("saliency", "guided", "gradcam"), seed=4)
    assert list(a.steps) == ["original", "7", "3", "1", "0"]  # Linear, conv, BN, conv: top first
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.spearman, b.spearman)
    np.testing.assert_array_equal(a.maps[:, 0], c.maps[:, 0])  # the original is the original
    assert not np.array_equal(a.maps[:, 1:], c.maps[:, 1:])
    assert a.params["target"] == int(lm.model(x).argmax())
    assert_untouched(lm.model, x, before)


def test_a_layer_gets_the_same_values_however_the_steps_are_grouped():
    lm = _tiny()
    full = sanity(lm, ROCKET, methods=("saliency",), seed=5)
    one = sanity(lm, ROCKET, methods=("saliency",), seed=5, steps=1)
    np.testing.assert_array_equal(full.maps[:, -1], one.maps[:, -1])


def test_bad_arguments():
    lm = _tiny()
    with pytest.raises(ParameterError, match="unknown method"):
        sanity(lm, ROCKET, methods=("nope",))
    with pytest.raises(ParameterError, match="steps"):
        sanity(lm, ROCKET, steps=0)
    with pytest.raises(ParameterError, match="target"):
        sanity(lm, ROCKET, target=1)


def test_result_saves_and_renders(tmp_path):
    from cnnviz.render.attribution.sanity import figure
    from cnnviz.results import load_result

    r = sanity(_tiny(), ROCKET, methods=("saliency", "gradcam"), steps=2)
    back = load_result(r.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.spearman, r.spearman)
    fig = figure(back)
    for ext in ("png", "pdf", "svg"):
        fig.savefig(tmp_path / f"s.{ext}")
    maps = [im for axis in fig.axes for im in axis.images if im.get_gid() == "map"]
    assert len(maps) == 2 * 3


# --------------------------------------------------------------------------------------------------
# Class randomization: the top-1 map against the maps for other classes

@pytest.mark.slow
def test_guided_backprop_is_class_insensitive_on_lite0_and_saliency_is_not(lite0):
    from scipy.stats import spearmanr

    from cnnviz.engines.attribution.gradients import attribute

    photo = ROCKET
    r = sanity(lite0, photo, methods=("guided", "saliency"), steps=1, classes=3, seed=2)
    x = lite0.prepare(photo)[1]
    with torch.no_grad():
        logits = lite0.model.eval()(x)[0]
    top2 = [int(c) for c in logits.argsort(descending=True)[:2]]
    assert r.params["target"] == top2[0]
    assert int(r.class_targets[0]) == top2[1]  # the runner-up first
    assert len(set(int(c) for c in r.class_targets) | {top2[0]}) == 4  # distinct, none the top-1
    for i, method in enumerate(("guided", "saliency")):
        for k, c in enumerate(r.class_targets):
            # the oracle: the engine called directly for that class, and scipy / numpy correlations
            direct = attribute(lite0, photo, method, target=int(c)).map[0]
            np.testing.assert_allclose(r.class_maps[i, k], direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())
            a, b = np.abs(r.maps[i, 0]).ravel(), np.abs(direct).ravel()
            assert r.class_spearman[i, k] == pytest.approx(spearmanr(a, b)[0], abs=1e-5)
            assert r.class_pearson[i, k] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)
    assert (r.class_pearson[0] > 0.99).all(), r.class_pearson  # guided: the same map for every class
    assert (r.class_pearson[1] < 0.95).all(), r.class_pearson  # saliency changes with the class


def test_class_test_is_seeded_can_be_turned_off_and_options_reach_only_their_methods(tmp_path):
    from cnnviz.render.attribution.sanity import figure

    lm = _tiny()
    a = sanity(lm, ROCKET, methods=("saliency", "ig"), steps=1, classes=3, seed=1, ig_steps=3)
    b = sanity(lm, ROCKET, methods=("saliency", "ig"), steps=1, classes=3, seed=1, ig_steps=3)
    np.testing.assert_array_equal(a.class_targets, b.class_targets)
    np.testing.assert_array_equal(a.class_maps, b.class_maps)
    assert a.class_maps.shape == (2, 3, 48, 48) and a.params["target"] not in a.class_targets
    fig = figure(a)
    assert len([im for ax in fig.axes for im in ax.images if im.get_gid() == "class-map"]) == 2 * 4
    off = sanity(lm, ROCKET, methods=("saliency",), steps=1, classes=0)
    assert off.class_targets.shape == (0,) and off.class_spearman.shape == (1, 0)
    figure(off).savefig(tmp_path / "off.png")
    with pytest.raises(ParameterError, match="classes"):
        sanity(lm, ROCKET, classes=-1)
    with pytest.raises(ParameterError, match="Grad-CAM"):
        sanity(lm, ROCKET, methods=("saliency",), layer="0")
    with pytest.raises(ParameterError, match="ig_steps"):
        sanity(lm, ROCKET, methods=("saliency",), ig_steps=3)
