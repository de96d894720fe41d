"""Unit semantics (Zhou et al. 2015, Bau et al. 2017): the selectivity index against a hand loop,
the colour terms against colorsys, the colour IoU against a direct pixel computation on maps from a
plain forward hook, the top images against the top-k scan, the purity p-values against an exact
count, resuming, bad input and the command. The real-data property is in
test_dataset_experiments_lite0.py."""

import colorsys
import itertools
import math

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.engines.units.semantics import (COLOURS, colour_names, purity_p_values, selectivity_index, semantics)
from cnnviz.engines.units.topk import scan
from cnnviz.errors import ImageError, LayerError, ParameterError

from helpers import SAMPLE, assert_untouched, layer_outputs, random_model, snapshot, twelve_photos

_, FILES, LABELS = twelve_photos()


@pytest.fixture(scope="module")
def small():
    return random_model(torchvision.models.resnet18, 7, crop=64, resize=73)


@pytest.fixture(scope="module")
def result(small):
    return semantics(small, FILES, "layer2", units="0:6", k=4, labels=LABELS, batch_size=4, device="cpu",
                     progress=False)


def test_selectivity_index_equals_a_hand_loop():
    rng = np.random.default_rng(0)
    acts = rng.gamma(2.0, size=(30, 5))
    acts[:, 4] = 0  # a dead unit: 0
    groups = [["a", "b", "c"][i % 3] for i in range(30)]
    groups[7] = None
    si = selectivity_index(acts, groups)
    for u in range(5):
        means = {}
        for g in ("a", "b", "c"):
            vals = [acts[i, u] for i in range(30) if groups[i] == g]
            means[g] = sum(vals) / len(vals)
        top = max(means.values())
        rest = (sum(means.values()) - top) / 2
        assert si[u] == pytest.approx((top - rest) / (top + rest) if top + rest else 0.0, rel=1e-5, abs=1e-7)


def _colour_by_colorsys(r, g, b):
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    h *= 360
    if v < 0.2:
        return "black"
    if s < 0.15:
        return "white" if v > 0.8 else "grey"
    if 15 <= h < 45 and v < 0.6:
        return "brown"
    for edge, name in ((15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (260, "blue"), (300, "purple"),
                       (345, "pink")):
        if h < edge:
            return name
    return "red"


def test_colour_terms_follow_the_rules_and_name_plain_colours():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(3000, 3), dtype=np.uint8)
    got = colour_names(px)
    want = [COLOURS.index(_colour_by_colorsys(*map(int, p))) for p in px]
    assert np.mean(got == np.array(want)) > 0.998  # float edges aside
    plain = {"red": (220, 20, 30), "orange": (255, 140, 0), "yellow": (240, 220, 30), "green": (30, 160, 40),
             "blue": (20, 60, 220), "purple": (120, 30, 160), "pink": (255, 105, 180), "brown": (120, 70, 20),
             "black": (10, 10, 10), "white": (250, 250, 250), "grey": (128, 128, 128)}
    for name, rgb in plain.items():
        assert COLOURS[int(colour_names(np.array([rgb], np.uint8))[0])] == name, name


@pytest.mark.slow
def test_top_images_and_purity_agree_with_the_topk_scan(small, result):
    top = scan(small, FILES, "layer2", units="0:6", k=4, batch_size=4, device="cpu", progress=False)
    np.testing.assert_array_equal(result.top_index, top.image_index)
    np.testing.assert_array_equal(result.top_value, top.values)
    for u in range(6):
        groups = [LABELS[FILES[i].rsplit("/", 1)[-1]] for i in top.image_index[u]]
        best = max(set(groups), key=lambda g: (groups.count(g), g == sorted(set(groups))[0]))
        assert result.params["top_count"][u] == groups.count(best)
        assert result.purity[u] == pytest.approx(groups.count(best) / 4)


@pytest.mark.slow
def test_selectivity_and_colour_iou_equal_a_direct_computation(small, result):
    before = snapshot(small.model, torch.zeros(1, 3, 64, 64))
    maps = layer_outputs(small, FILES, "layer2")
    acts = np.stack([m.clamp_min(0).mean((1, 2)).numpy() for m in maps])[:, :6]
    groups = [LABELS[f.rsplit("/", 1)[-1]] for f in FILES]
    for u in range(6):  # selectivity over the two groups, by hand
        mu = [acts[[g == name for g in groups], u].mean() for name in ("artifact", "natural")]
        assert result.selectivity[u] == pytest.approx((max(mu) - min(mu)) / (max(mu) + min(mu)), rel=1e-4)
    for u in (0, 3):
        peak = float(result.top_value[u, 0])
        inter, union = np.zeros(len(COLOURS)), np.zeros(len(COLOURS))
        for i in result.top_index[u]:
            up = torch.nn.functional.interpolate(maps[i][None, u:u + 1], size=(64, 64), mode="bilinear",
                                                 align_corners=False)[0, 0].numpy()
            mask = up > 0.5 * peak
            pixels = small.prepare(FILES[i])[0]
            names = np.array([[_colour_by_colorsys(*map(int, pixels[y, x])) for x in range(64)] for y in range(64)])
            for c, name in enumerate(COLOURS):
                inter[c] += np.sum(mask & (names == name))
                union[c] += np.sum(mask | (names == name))
        np.testing.assert_allclose(result.colour_iou[u], inter / np.maximum(union, 1), atol=2e-3)
        assert mask.any() and not mask.all(), "a real segmentation, not all or nothing"
    assert_untouched(small.model, torch.zeros(1, 3, 64, 64), before)


def test_purity_p_values_equal_an_exact_count():
    # 3 groups with shares 1/2, 1/3, 1/6; k = 4: the exact law of the commonest group's count
    shares = np.array([3, 2, 1]) / 6
    law = {}
    for draw in itertools.product(range(3), repeat=4):
        c = max(draw.count(g) for g in range(3))
        law[c] = law.get(c, 0) + math.prod(shares[g] for g in draw)
    p, chance = purity_p_values(np.array([2, 3, 4]), np.array([4, 4, 4]), shares, simulations=40000)
    for got, c in zip(p, (2, 3, 4)):
        assert got == pytest.approx(sum(v for kk, v in law.items() if kk >= c), abs=0.01)
    assert chance == pytest.approx(sum(c * v for c, v in law.items()) / 4, abs=0.01)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_result(small, result, tmp_path):
    ckpt = tmp_path / "s.npz.partial"
    calls = {"n": 0}

    def stop(m, i, o):
        calls["n"] += o.shape[0] == 4  # the scans' batches (traces and layout probes run single images)
        if calls["n"] == 5:  # the top-k scan is done (3 batches), the feature scan has one batch
            raise KeyboardInterrupt

    h = small.model.layer2.register_forward_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            semantics(small, FILES, "layer2", units="0:6", k=4, labels=LABELS, batch_size=4, device="cpu",
                      progress=False, checkpoint=ckpt, checkpoint_every=1)
    finally:
        h.remove()
    features = tmp_path / "s.npz.features.partial"
    assert ckpt.exists() and features.exists()
    again = semantics(small, FILES, "layer2", units="0:6", k=4, labels=LABELS, batch_size=4, device="cpu",
                      progress=False, checkpoint=ckpt, checkpoint_every=1)
    assert not ckpt.exists() and not features.exists() and again.params["resumed_from_batch"] == 1
    for name in ("top_index", "top_value", "selectivity", "colour_iou", "label_type", "example_masks"):
        np.testing.assert_array_equal(getattr(again, name), getattr(result, name))


def test_bad_input_is_a_one_line_error(small, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(small.model, torch.zeros(1, 3, 64, 64))
    for kw, error, fragment in [(dict(k=13), ParameterError, "k=13 is larger than the 12 images"),
                                (dict(layer="layer9"), LayerError, "unknown layer 'layer9'"),
                                (dict(units="0:999"), LayerError, "out of range"),
                                (dict(threshold=1.5), ParameterError, "threshold must lie between 0 and 1"),
                                (dict(source=str(empty)), ImageError, "no images found"),
                                (dict(labels={"x.jpg": "a"}), ImageError, "none of the 12 images")]:
        args = dict(source=FILES, layer="layer2", units="0:4", k=3, labels=LABELS, device="cpu", progress=False)
        args.update(kw)
        with pytest.raises(error, match=fragment) as e:
            semantics(small, args.pop("source"), args.pop("layer"), **args)
        assert "\n" not in str(e.value)
    assert_untouched(small.model, torch.zeros(1, 3, 64, 64), before)


@pytest.mark.slow
def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch, small):
    from helpers import assert_empty, assert_redraws, command_on_photos, one_line_error

    runner, cli, data, out = command_on_photos(monkeypatch, tmp_path, small, FILES)
    res = runner.invoke(cli, ["semantics", str(data), "--layer", "layer3", "--units", "0:8", "-k", "4",
                              "--image-labels", str(SAMPLE / "labels.csv"), "--save", "r.npz", "-q"])
    assert res.exit_code == 0, res.output
    assert "units whose top images share a family" in res.stdout
    assert {p.name for p in out.iterdir()} == {"semantics.png", "r.npz", "r.json"}
    again = cnnviz.load_result(out / "r.npz")
    assert again.units.tolist() == list(range(8)) and again.params["grouping"] == "family"
    assert_redraws(runner, cli, again, "r.npz", "again.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for args, fragment in ((["--layer", "layer9"], "unknown layer 'layer9'"),
                           (["--layer", "layer3", "-k", "30"], "-k 30 is larger than the 12 images"),
                           (["--layer", "layer3", "--units", "5:2"], "empty or negative range"),
                           (["--layer", "layer3", "--image-labels", "nope.csv"], "labels file not found")):
        labels = [] if "--image-labels" in args else ["--image-labels", str(SAMPLE / "labels.csv")]
        one_line_error(runner.invoke(cli, ["semantics", str(data), "-q", *labels, *args]), fragment)
        assert_empty(empty)
