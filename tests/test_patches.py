"""Receptive-field patches and deconvnet projections of top-k units (Zeiler & Fergus Fig. 2): each
patch alone drives its unit to the recorded activation; projections live inside the patch."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.engines.units.patches import PatchesResult, crop_box, deconv_projections, unit_patches
from cnnviz.engines.units.topk import scan
from cnnviz.errors import CnnvizError
from cnnviz.models import load_model
from cnnviz.results import load_result

from helpers import SAMPLE, assert_untouched, snapshot

LAYER, UNITS, K = "_blocks.3", "0:8", 9  # RF 35 px, stride 8: many fields lie inside a 112 px crop
SIZE = dict(crop=(112, 112), resize=128)


@pytest.fixture(scope="module")
def lm():
    m = load_model("efficientnet_lite0")
    m.preprocessing = dataclasses.replace(m.preprocessing, **SIZE)
    return m


@pytest.fixture(scope="module")
def topk(lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("patch_images")
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[:16]:
        shutil.copy(p, d / p.name)
    return scan(lm, d, LAYER, units=UNITS, k=K, batch_size=16, device="cpu", progress=False)


@pytest.fixture(scope="module")
def result(lm, topk):
    return unit_patches(lm, topk, device="cpu")


def _layer_acts(lm, x: torch.Tensor) -> torch.Tensor:
    module = dict(lm.model.named_modules())[LAYER]
    acts = []
    h = module.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone()))
    try:
        with torch.no_grad():
            lm.model(x)
    finally:
        h.remove()
    return acts[0]


def test_shapes_and_boxes(result, topk):
    r = result
    assert isinstance(r, PatchesResult) and r.kind == "patches"
    assert r.patches.shape == (8, K, 35, 35, 3) and r.patches.dtype == np.uint8
    assert r.projections.shape == r.patches.shape and r.inside.shape == (8, K)
    np.testing.assert_array_equal(r.values, topk.values)
    assert 0 < r.inside.sum() < r.inside.size  # some fields inside, some at the border
    y0, y1, x0, x1 = np.moveaxis(r.boxes, -1, 0)
    assert np.all(y1 - y0 + 1 == 35) and np.all(x1 - x0 + 1 == 35)
    assert np.all(y0 == r.position[..., 0] * 8 - 10) and np.all(x0 == r.position[..., 1] * 8 - 10)
    # a field crossing the border shows the fill colour there, a field inside shows none of it
    u, j = np.argwhere(~r.inside)[0]
    by0, by1, bx0, bx1 = r.boxes[u, j]
    outside = np.ones((35, 35), bool)
    outside[max(0, -by0):35 - max(0, by1 - 111), max(0, -bx0):35 - max(0, bx1 - 111)] = False
    assert outside.any() and np.all(r.patches[u, j][outside] == r.params["fill"])


def test_patch_alone_drives_unit_to_recorded_activation(lm, result):
    """Everything outside a unit's receptive field cannot change it: the patch pasted into a gray
    canvas at its place (and nothing else of the image) gives the recorded activation."""
    r = result
    h, w = lm.input_size
    entries = np.argwhere(r.inside)
    assert len(entries) >= 10
    canvases, where = [], []
    for u, j in entries:
        y0, y1, x0, x1 = r.boxes[u, j]
        canvas = np.full((h, w, 3), 128, np.uint8)
        canvas[y0:y1 + 1, x0:x1 + 1] = r.patches[u, j]
        canvases.append(canvas)
        where.append((int(r.units[u]), *r.position[u, j]))
    acts = _layer_acts(lm, lm.preprocessing.normalize(np.stack(canvases)))
    got = np.array([float(acts[n, c, y, x]) for n, (c, y, x) in enumerate(where)])
    want = r.values[entries[:, 0], entries[:, 1]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * float(np.abs(want).max()))
    # control: the same patch one stride to the side no longer gives the same number at that position
    u, j = entries[0]
    y0, y1, x0, x1 = r.boxes[u, j]
    shifted = np.full((h, w, 3), 128, np.uint8)
    dx = 8 if x1 + 8 < w else -8
    shifted[y0:y1 + 1, x0 + dx:x1 + 1 + dx] = r.patches[u, j]
    c, y, x = where[0]
    moved = float(_layer_acts(lm, lm.preprocessing.normalize(shifted))[0, c, y, x])
    assert abs(moved - want[0]) > 1e-3 * abs(want[0])


def test_projections_match_attribute_and_stay_inside(lm, result, topk):
    r = result
    u, j = np.argwhere(r.inside)[0]
    c, (y, x) = int(r.units[u]), r.position[u, j]
    x_in = lm.prepare(topk.params["root"] + "/" + str(r.files[r.image_index[u, j]]))[1]
    ours = deconv_projections(lm, x_in, LAYER, c, torch.tensor([[y, x]]), "cpu")[0]
    ref = attribute(lm, x_in, "deconv", normalized=True, layer=LAYER, unit=f"{c}:{y},{x}", device="cpu").attribution[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    energy = np.abs(ours).sum(0)
    y0, y1, x0, x1 = r.boxes[u, j]
    inside = energy[y0:y1 + 1, x0:x1 + 1].sum()
    assert inside > 0 and energy.sum() - inside <= 1e-6 * inside  # nothing outside the field
    # the stored projections are nonzero (not all mid-gray) and reach full scale
    present = r.image_index >= 0
    for a, b in np.argwhere(present):
        tile = r.projections[a, b].astype(int)
        assert np.abs(tile - 128).max() >= 120


def test_crop_box_pads():
    img = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    out = crop_box(img, (-1, 3, 2, 6), (9, 9, 9))
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out[1:, :3], img[0:4, 2:5])
    assert np.all(out[0] == 9) and np.all(out[:, 3:] == 9)


def test_model_untouched_units_subset_no_projection_and_save(lm, topk, tmp_path):
    x = lm.prepare(topk.params["root"] + "/" + str(topk.files[0]))[1]
    before = snapshot(lm.model, x)
    r = unit_patches(lm, topk, units=[5, 2], project=False, device="cpu")
    assert_untouched(lm.model, x, before)
    assert list(r.units) == [5, 2] and not r.projected and r.patches.shape[:2] == (2, K)
    r.save(tmp_path / "p.npz")
    back = load_result(tmp_path / "p.npz")
    assert isinstance(back, PatchesResult) and not back.projected
    np.testing.assert_array_equal(back.patches, r.patches)
    with pytest.raises(CnnvizError, match="not scanned"):
        unit_patches(lm, topk, units=[50], project=False, device="cpu")


def test_figures(result, tmp_path):
    from cnnviz.render.units.patches import figure
    from cnnviz.render.style import save_figure

    fig = figure(result, columns=4)
    assert len(fig.axes) == 8
    for name in ("fig.png", "fig.pdf"):
        save_figure(fig, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 10_000
    only = dataclasses.replace(result, projections=np.zeros((0,), np.uint8))
    fig2 = figure(only, columns=3, units=[1, 2, 3])
    assert len(fig2.axes) == 3
    save_figure(fig2, tmp_path / "patches_only.png")
    assert fig2.get_size_inches()[0] == fig.get_size_inches()[0] == 7.0  # both laid out for a 7 in page
    assert fig2.axes[0].get_position().width < fig.axes[0].get_position().width  # a patch block, no projection


def test_contrast_keeps_zero_and_fill(result):
    from cnnviz.render.units.patches import _outside, stretch

    tiles = result.projections[0]
    same = stretch(tiles, 1.0)
    assert same is tiles
    auto = stretch(tiles, "auto")
    assert auto.dtype == np.uint8 and np.all(auto[tiles == 128] == 128)
    assert np.abs(auto.astype(int) - 128).mean() >= np.abs(tiles.astype(int) - 128).mean()
    out = _outside(result.boxes[0], result.params)
    fill = np.asarray(result.params["fill"], np.uint8)
    assert np.all(result.patches[0][out] == fill) and np.all(result.projections[0][out] == fill)
