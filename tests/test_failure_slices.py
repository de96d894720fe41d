"""Failure slices (cnnviz/engines/concepts/slices.py): groups of images where the model fails, found
among its failures and described by what they share. Checked on a planted slice in synthetic
features, on real photos of which a third were darkened and blurred (Lite0 fails on them), and the
per-image statistics against independent computations."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from helpers import SAMPLE, sample_rows


@pytest.fixture(scope="module")
def lite0():
    from cnnviz import load_model

    return load_model("efficientnet_lite0")


def test_a_planted_slice_is_found_and_scattered_failures_are_not_a_finding():
    from cnnviz.engines.concepts.slices import failure_slices

    rng = np.random.default_rng(0)
    d = 16
    centres = rng.normal(0, 1, (4, d)) * 4
    group = np.repeat(np.arange(4), 50)                    # 200 images in 4 groups of features
    emb = centres[group] + rng.normal(0, 1, (200, d))
    correct = (rng.random(200) > 0.1).astype(float)        # 90 % right, failures scattered everywhere...
    planted = np.flatnonzero(group == 3)[:20]              # ...but 20 images of group 3 always fail
    correct[planted] = 0.0
    confidence = np.where(correct == 1, 0.9, 0.7)
    slices = failure_slices(emb, correct, confidence, neighbours=10)
    found = [s for s in slices if s.finding]
    assert len(found) >= 1
    best = max(found, key=lambda s: len(set(s.members) & set(planted)))
    inter = len(set(best.members) & set(planted))
    assert inter >= 18 and inter / best.size >= 0.6, (inter, best.size)
    # its neighbourhood is as bad as the planted rate says, random neighbourhoods are not
    assert best.neighbour_accuracy < 0.5 < best.random_accuracy
    # every slice that is not mostly planted images is not a finding: scattered failures
    for s in slices:
        if len(set(s.members) & set(planted)) < s.size / 2:
            assert not s.finding, (s.size, s.neighbour_accuracy, s.random_accuracy_low)


def test_unlabelled_images_fail_by_low_confidence_only():
    from cnnviz.engines.concepts.slices import failure_slices

    rng = np.random.default_rng(1)
    emb = rng.normal(0, 1, (30, 4))
    emb[:8] += 10
    conf = np.full(30, 0.9)
    conf[:8] = 0.2
    slices = failure_slices(emb, np.full(30, np.nan), conf)
    assert [sorted(s.members) for s in slices] == [list(range(8))]
    assert slices[0].unsure == 8 and slices[0].wrong == 0
    assert np.isnan(slices[0].neighbour_accuracy) and not slices[0].finding  # no labels: no accuracy claimed


def test_colour_stats_equal_colorsys_pixel_by_pixel():
    from cnnviz.engines.concepts.slices import colour_stats

    rng = np.random.default_rng(2)
    px = rng.integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    px[2] = 128  # a gray image: no hue
    got = colour_stats(px)
    for i in range(3):
        hsv = np.array([colorsys.rgb_to_hsv(*(px[i].reshape(-1, 3)[j] / 255.0)) for j in range(30)])
        h, s, v = hsv.T
        assert got[i, 0] == pytest.approx(v.mean(), abs=1e-5)
        assert got[i, 1] == pytest.approx(s.mean(), abs=1e-5)
        assert got[i, 2] == pytest.approx((s * np.cos(2 * np.pi * h)).mean(), abs=1e-5)
        assert got[i, 3] == pytest.approx((s * np.sin(2 * np.pi * h)).mean(), abs=1e-5)
    assert np.all(got[2, 1:] == 0)


def test_map_stats_of_known_maps():
    from cnnviz.engines.concepts.slices import map_stats

    m = np.zeros((3, 8, 8))
    m[0, 0, 7] = 1.0                 # top right pixel
    m[1, 2:6, 2:6] = 1.0             # the central box exactly
    got = map_stats(m)
    np.testing.assert_allclose(got[0], [7.5 / 8, 0.5 / 8, 0.0], atol=1e-6)
    np.testing.assert_allclose(got[1], [0.5, 0.5, 1.0], atol=1e-6)
    assert np.all(np.isnan(got[2]))  # an all-zero map has no centroid


@pytest.mark.parametrize("kw, match", [
    (dict(embedding=np.zeros((5, 2)), correct=np.zeros(4), confidence=np.zeros(5)), "one row per image"),
    (dict(embedding=np.zeros((5, 2)), correct=np.zeros(5), confidence=np.zeros(5), low_confidence=0), "low_confidence"),
])
def test_bad_input_is_one_line(kw, match):
    from cnnviz.engines.concepts.slices import failure_slices
    from cnnviz.errors import ParameterError

    emb, c, p = kw.pop("embedding"), kw.pop("correct"), kw.pop("confidence")
    with pytest.raises(ParameterError, match=match) as e:
        failure_slices(emb, c, p, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_darkened_photos_form_the_slice_and_are_called_darker(lite0):
    """60 photos of different classes, 20 of them darkened to a quarter and blurred: Lite0 fails on
    most of those. Grouped by Lite0's penultimate features, the failures give a slice made of the
    darkened photos, whose neighbourhood accuracy is below every random set's, described as darker;
    no slice of the intact photos is a finding."""
    from PIL import Image, ImageFilter

    from cnnviz.engines.concepts.slices import colour_stats, failure_slices
    from cnnviz.taxonomy import families, family_index

    rows = sample_rows()[::8][:60]
    dark = set(np.random.default_rng(0).choice(60, 20, replace=False).tolist())
    xs, pixels, labels = [], [], []
    for i, r in enumerate(rows):
        im = Image.open(SAMPLE / "images" / r["file"]).convert("RGB")
        if i in dark:
            im = Image.fromarray((np.asarray(im) * 0.25).astype(np.uint8)).filter(ImageFilter.GaussianBlur(4))
        p, x = lite0.prepare(im)
        xs.append(x)
        pixels.append(p)
        labels.append(int(r["class_index"]))
    feats = []
    handle = lite0.model._fc.register_forward_pre_hook(lambda m, a: feats.append(a[0].detach()))
    try:
        with torch.no_grad():
            prob = lite0.model(torch.cat(xs)).softmax(1)
    finally:
        handle.remove()
    conf, pred = prob.max(1)
    correct = (pred.numpy() == np.array(labels)).astype(float)
    intact = [i for i in range(60) if i not in dark]
    assert correct[intact].mean() > 0.75 and correct[sorted(dark)].mean() < 0.35  # the premise
    fam = np.array([family_index(c) for c in labels])
    slices = failure_slices(feats[0].numpy(), correct, conf.numpy(), colours=colour_stats(np.stack(pixels)),
                            families=fam, family_names=families())
    found = [s for s in slices if s.finding]
    assert found, [(s.size, s.neighbour_accuracy, s.random_accuracy_low) for s in slices]
    top = found[0]
    share_dark = np.mean([m in dark for m in top.members])
    assert share_dark >= 0.9 and top.size >= 12, (share_dark, top.size)
    assert any(t.startswith("darker") for t in top.shares), top.shares
    for s in found[1:]:
        assert np.mean([m in dark for m in s.members]) >= 0.5  # no finding among the intact photos
