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


def _darkened_data(folder, count=48, dark_count=16):
    """`count` photos of different classes with their labels in a CSV; `dark_count` of them darkened
    to a quarter and blurred (Lite0 fails on most of those)."""
    import csv

    from PIL import Image, ImageFilter

    folder.mkdir()
    rows = sample_rows()[::8][:count]
    dark = set(np.random.default_rng(0).choice(count, dark_count, replace=False).tolist())
    with open(folder / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_index"])
        for i, r in enumerate(rows):
            im = Image.open(SAMPLE / "images" / r["file"]).convert("RGB")
            name = r["file"]
            if i in dark:
                im = Image.fromarray((np.asarray(im) * 0.25).astype(np.uint8)).filter(ImageFilter.GaussianBlur(4))
                name = "dark_" + name
            im.save(folder / name)
            w.writerow([name, r["class_index"]])
    return folder / "data.csv"


@pytest.mark.slow
def test_the_audit_finds_the_darkened_photos_as_a_failure_slice(lite0, tmp_path):
    """48 photos of different classes, 16 darkened and blurred. Through the audit (its own hook on
    Lite0's last linear layer, the projection of the features, the colours it gathers): the slices
    grouped by features that are findings are made of darkened photos only, at least 10 of them in
    all, each described as darker; no intact photo is in a finding; the report shows the section, its
    figure and the finding; the model keeps no hook."""
    import cnnviz

    data = _darkened_data(tmp_path / "data")
    r = cnnviz.audit(lite0, str(data), "gradcam", steps=1, sanity_images=0, show=0, wrong=0, progress=False)
    files = [str(f) for f in r.files]
    dark = np.array([f.startswith("dark_") for f in files])
    right = r.top5[:, 0] == r.labels
    assert right[~dark].mean() > 0.75 and right[dark].mean() < 0.35  # the premise
    found = [(j, s) for j, s in enumerate(r.params["slices_by_features"]) if s["finding"]]
    assert found, r.params["slices_by_features"]
    members = np.concatenate([np.flatnonzero(r.slice_by_features == j) for j, _ in found])
    assert dark[members].all() and len(members) >= 10, (dark[members], len(members))
    assert all(any(t.startswith("darker") for t in s["shares"]) for _, s in found)
    # the thumbnails are the members' input crops, the least confident first
    j, s = found[0]
    shown = r.slice_thumb_index[j][r.slice_thumb_index[j] >= 0]
    assert set(shown) <= set(np.flatnonzero(r.slice_by_features == j))
    conf = r.top5_prob[shown, 0]
    assert np.all(np.diff(conf) >= 0)
    pixels, _ = lite0.prepare(data.parent / files[shown[0]])
    thumb = r.slice_thumbs[j, 0].astype(float)
    small = torch.nn.functional.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None].float(), size=64,
                                            mode="area")[0].permute(1, 2, 0).numpy()
    assert np.abs(thumb - small).max() <= 1.0
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in lite0.model.modules())
    r.write_html(tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="reliance"' in page and 'id="slices"' in page and "figures/slices-features.png" in page
    assert "Failure slice 1 (grouped by features)" in page.split('id="predictions"')[0]  # among the findings
