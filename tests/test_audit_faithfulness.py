"""`cnnviz audit` on EfficientNet-Lite0 with its real weights: the faithfulness section separates
real maps from a random one, and the pointing game finds real objects pasted into a gray canvas.

benchmarks/audit_faithfulness.py measures the same separation over more photos (README)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLE

CANVAS, SIDE = 448, 176  # a 176 px object on a 448 px gray canvas: ~100 px of Lite0's 224 px crop
# where the object's top-left corner goes (canvas pixels; Lite0's crop shows 28..420 of each axis)
PLACES = [(40, 40), (232, 40), (40, 232), (232, 232), (136, 136), (60, 150), (200, 90), (110, 236), (236, 130),
          (140, 48)]


@pytest.fixture(scope="module")
def lite0():
    from cnnviz import load_model

    return load_model("efficientnet_lite0")


def _photos(count: int, every: int) -> list:
    return sorted((SAMPLE / "images").glob("*.jpg"))[::every][:count]


@pytest.mark.slow
def test_random_map_is_clearly_less_faithful_than_occlusion_and_gradcam(lite0):
    """16 photos of different classes: the random baseline's deletion area is larger and its
    insertion area smaller than Grad-CAM's and occlusion's, on average by a clear margin (and more
    than 1.75 standard errors of the paired differences). A map read in the wrong order, maps
    shifted against their images, or a baseline run through other pixels breaks it."""
    import cnnviz

    files = [str(p) for p in _photos(16, 31)]
    r = cnnviz.audit(lite0, files, "gradcam,occlusion", steps=4, show=0, wrong=0, sanity_images=0,
                     occlusion_window=56, occlusion_stride=56, chunk=8, progress=False)
    assert len(r.files) == 16
    bd, bi = r.baseline_deletion_auc.astype(float), r.baseline_insertion_auc.astype(float)
    seen = {}
    for j, m in enumerate(r.methods):
        d, i = r.deletion_auc[:, j].astype(float), r.insertion_auc[:, j].astype(float)
        for name, diff in (("deletion", bd - d), ("insertion", i - bi)):
            seen[m, name] = (diff.mean(), diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))), (diff > 0).mean())
    for (m, name), (margin, t, wins) in seen.items():
        # t: the one-sided 5 % level of a paired t-test on 16 images is 1.75
        assert margin > (0.04 if name == "deletion" else 0.08) and t > 1.75 and wins > 0.6, (m, name, margin, t, wins)
    # the page's numbers are these
    assert r.params["baseline_deletion_auc"] == pytest.approx(bd.mean(), rel=1e-5)
    assert r.params["baseline_insertion_auc"] == pytest.approx(bi.mean(), rel=1e-5)


def _canvases(folder, photos):
    """Each photo's central square, resized to SIDE px, pasted at its place on a gray canvas; the
    boxes in canvas pixels."""
    boxes = {}
    for k, (photo, (x, y)) in enumerate(zip(photos, PLACES)):
        with Image.open(photo) as im:
            im = im.convert("RGB")
            s = min(im.size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            obj = im.crop((left, top, left + s, top + s)).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (CANVAS, CANVAS), (128, 128, 128))
        canvas.paste(obj, (x, y))
        name = f"pasted_{k:02d}.png"
        canvas.save(folder / name)
        boxes[name] = [[x, y, x + SIDE, y + SIDE]]
    return boxes


@pytest.mark.slow
def test_pointing_game_finds_objects_pasted_into_a_gray_canvas(lite0, tmp_path):
    """10 photos' central squares pasted at known, varied places: Grad-CAM's and occlusion's maps
    peak inside the object's box in >= 80 % of the cases (a box covers ~20 % of the crop), and the
    audit's hits equal an argmax-in-box computed by hand from the paste position (Lite0: shorter side
    to 256 px, centre crop 224: crop pixel = canvas pixel * 256 / 448 - 16) on Grad-CAM maps made
    directly, image by image."""
    import cnnviz

    (tmp_path / "data").mkdir()
    boxes = _canvases(tmp_path / "data", _photos(len(PLACES), 50))
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    r = cnnviz.audit(lite0, tmp_path / "data", "gradcam,occlusion", boxes=tmp_path / "boxes.json", steps=1, show=0,
                     wrong=0, sanity_images=0, occlusion_window=64, occlusion_stride=32, chunk=10, progress=False)
    assert list(r.files) == sorted(boxes)
    assert r.pointing_hit.shape == (len(PLACES), 2) and np.isfinite(r.pointing_hit).all()
    rate = r.pointing_hit.mean(0)
    assert rate[0] >= 0.8 and rate[1] >= 0.8, dict(zip(r.methods, rate))
    assert r.params["pointing_game"] == {"gradcam": pytest.approx(rate[0]), "occlusion": pytest.approx(rate[1])}
    # by hand: Grad-CAM of each image on its own, its argmax, the box mapped into the crop
    scale, off = 256 / CANVAS, (256 - 224) / 2
    for case in (0, 3, 5):
        name = str(r.files[case])
        amap = cnnviz.attribute(lite0, tmp_path / "data" / name, "gradcam").map[0]
        assert (amap == amap.max()).sum() == 1  # one maximum: no plateau rule involved
        y, x = np.unravel_index(np.argmax(amap), amap.shape)
        x0, y0, x1, y1 = (v * scale - off for v in boxes[name][0])
        inside = x + 1 > x0 and x < x1 and y + 1 > y0 and y < y1  # pixel [x, x+1) x [y, y+1) meets the box
        assert r.pointing_hit[case, 0] == float(inside), (name, (x, y), (x0, y0, x1, y1))
    # and the energy inside the box is well above the box's share of the crop
    share = (SIDE * scale) ** 2 / 224 ** 2
    assert np.nanmean(r.box_energy[:, 0]) > 1.5 * share
