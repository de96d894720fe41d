"""The way back from the model's crop to the original photo: crop geometry stored in results,
`to_original` / `to_crop`, and figures drawn on the whole photo (`--full-image`).

The oracle is the photo's content: a real object (a square cut from an ImageNet sample photo) is
pasted at a known box into a larger, odd-sized gray canvas; after the real preprocessing the box
is found again in the crop's pixels (where they differ from the gray), without the mapping code."""

import json

import matplotlib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cnnviz.engines.attribution.gradients import attribute
from cnnviz.engines.occlusion.engine import occlusion
from cnnviz.errors import ResultError
from cnnviz.models import LoadedModel, Preprocessing, load_model
from cnnviz.results import load_result
from cnnviz_cli.main import cli

from helpers import one_line_error, sample_image

GRAY = 128
THRESHOLD = 24  # a gray pixel stays exactly 128 after resampling; bicubic ringing stays below 10% of a step


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def _object(size_wh, index=0) -> Image.Image:
    """The centre square of an ImageNet sample photo (a tench, by default) resized to size_wh."""
    p = Image.open(sample_image(index)).convert("RGB")
    w, h = p.size
    s = min(w, h)
    square = p.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return square.resize(size_wh, Image.Resampling.BICUBIC)


def _canvas(canvas_wh, box) -> Image.Image:
    """A gray canvas with the object pasted at box (x0, y0, x1, y1), pixel corners."""
    x0, y0, x1, y1 = box
    obj = _object((x1 - x0, y1 - y0))
    edge = np.abs(np.asarray(obj, dtype=int) - GRAY).max(axis=2)
    # the oracle finds the box by content: each border row and column must stand out from the gray
    assert min(edge[0].max(), edge[-1].max(), edge[:, 0].max(), edge[:, -1].max()) > 3 * THRESHOLD
    canvas = Image.new("RGB", canvas_wh, (GRAY,) * 3)
    canvas.paste(obj, (x0, y0))
    return canvas


def _found_box(pixels: np.ndarray) -> np.ndarray:
    """Box (x0, y0, x1, y1) of the pixels that differ from the gray: an independent oracle."""
    diff = np.abs(pixels.astype(int) - GRAY).max(axis=2)
    rows = np.flatnonzero(diff.max(axis=1) > THRESHOLD)
    cols = np.flatnonzero(diff.max(axis=0) > THRESHOLD)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _preprocessing(kind, lite0) -> Preprocessing:
    if kind == "lite0":  # bicubic, shorter side -> 224 + 32, centre crop 224
        return lite0.preprocessing
    if kind == "torchvision":  # resnet18's own: bilinear, shorter side -> 256, centre crop 224
        return load_model("resnet18", weights="none").preprocessing
    return Preprocessing(resize=None, interpolation="bicubic")  # no resize step: a small photo is scaled up


# canvas (width, height) and pasted box: odd, non-square sizes; landscape, portrait, smaller than the crop
CASES = {"landscape": ((601, 389), (141, 179, 301, 339)), "portrait": ((389, 577), (41, 301, 211, 451)),
         "small": ((201, 173), (40, 31, 121, 141))}


@pytest.mark.parametrize("kind,case", [("lite0", "landscape"), ("lite0", "portrait"), ("torchvision", "landscape"),
                                       ("torchvision", "portrait"), ("upscale", "small")])
def test_to_crop_finds_a_pasted_object_where_the_crop_pixels_show_it(lite0, kind, case):
    canvas_wh, box = CASES[case]
    pre = _preprocessing(kind, lite0)
    lm = LoadedModel(nn.Identity(), "identity", "none", pre, [])
    pixels, _, geo = lm.prepare(_canvas(canvas_wh, box), geometry=True)
    assert geo.original_size == (canvas_wh[1], canvas_wh[0]) and geo.crop_size == pre.crop
    found = _found_box(pixels)
    predicted = geo.to_crop(np.array(box, dtype=np.float64))
    assert np.abs(found - predicted).max() <= 1.0, (found, predicted)
    # round trip, and the found box carried back lands on the pasted one (1 crop pixel = 1/scale photo pixels)
    np.testing.assert_allclose(geo.to_original(predicted), box, atol=1e-9)
    back = geo.to_original(found)
    assert np.abs(back - box).max() <= 1.0 / min(geo.scale) + 1e-9, (back, box)
    # points too: the box's centre
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    found_centre = np.array([(found[0] + found[2]) / 2, (found[1] + found[3]) / 2])
    assert np.abs(geo.to_crop(centre) - found_centre).max() <= 1.0


def test_a_map_that_is_one_on_the_object_maps_to_the_pasted_box_and_nan_outside_the_crop(lite0):
    canvas_wh, box = CASES["landscape"]
    lm = LoadedModel(nn.Identity(), "identity", "none", lite0.preprocessing, [])
    pixels, _, geo = lm.prepare(_canvas(canvas_wh, box), geometry=True)
    c0, r0, c1, r1 = _found_box(pixels).astype(int)
    crop_map = np.zeros(pixels.shape[:2])
    crop_map[r0:r1, c0:c1] = 1.0
    on_photo = geo.map_to_original(crop_map)
    assert on_photo.shape == (canvas_wh[1], canvas_wh[0])
    rows = np.flatnonzero(np.nan_to_num(on_photo).max(axis=1) > 0.5)
    cols = np.flatnonzero(np.nan_to_num(on_photo).max(axis=0) > 0.5)
    got = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    assert np.abs(got - np.array(box)).max() <= 1.0 / min(geo.scale) + 1, (got, box)
    # outside the crop: NaN, not zero. The canvas is wider than tall, so the crop spans all rows
    # (up to its rounding) and cuts off the left and right: (601 * 256/389 - 224) / 2 = 86 resized
    # pixels, i.e. 86 * 389/256 = 130.7 photo pixels on each side.
    nan_cols = np.isnan(on_photo).all(axis=0)
    assert nan_cols[:130].all() and not nan_cols[132:470].any() and nan_cols[472:].all()
    assert np.isnan(on_photo[:, :130]).all() and not np.isnan(on_photo[30:360, 132:470]).any()
    zero = geo.map_to_original(crop_map, outside=0.0)
    assert np.isfinite(zero).all() and zero[:, :130].max() == 0.0


# --------------------------------------------------------------------------------------------------
# results: storage, save/load, old results, figures (a tiny model, fast)

def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    return LoadedModel(net, "tiny", "random", Preprocessing(), [f"c{i}" for i in range(10)])


@pytest.fixture(scope="module")
def tiny_results():
    lm = _tiny()
    land, port = (_canvas(*CASES[k]) for k in ("landscape", "portrait"))
    occ = occlusion(lm, land, window=56, stride=56, progress=False)
    sal = attribute(lm, [land, port], "saliency")
    return occ, sal


def test_results_store_one_mapping_per_image_and_a_small_copy_of_each_photo(tiny_results):
    occ, sal = tiny_results
    assert len(occ.params["geometry"]) == 1 and len(sal.params["geometry"]) == 2
    assert occ.original.dtype == np.uint8 and occ.original.shape == (1, 331, 512, 3)  # 601x389 -> longest 512
    g0, g1 = sal.geometry(0), sal.geometry(1)
    assert g0.original_size == (389, 601) and g1.original_size == (577, 389)
    assert g0.thumbnail.shape == (331, 512, 3) and g1.thumbnail.shape == (512, 345, 3)
    # the copy is the photo: the pasted object is where the canvas has it, at the copy's scale
    x0, y0, x1, y1 = CASES["landscape"][1]
    f = 512 / 601
    assert np.abs(g0.thumbnail[int(y0 * f) + 3: int(y1 * f) - 3, int(x0 * f) + 3: int(x1 * f) - 3].astype(int)
                  - GRAY).max() > THRESHOLD
    assert (g0.thumbnail[:int(y0 * f) - 2] == GRAY).all()
    json.dumps(occ.params["geometry"])  # JSON-serializable as is


def test_pixel_arrays_and_tensors_get_the_identity_mapping(tiny_results):
    lm = _tiny()
    occ, _ = tiny_results
    r = attribute(lm, occ.image, "saliency")
    geo = r.geometry()
    assert geo.is_identity and r.original is None
    np.testing.assert_allclose(r.to_original([[3.5, 7.25, 100, 200]]), [[3.5, 7.25, 100, 200]])
    t = attribute(lm, lm.preprocessing.normalize(occ.image), "saliency", normalized=True)
    assert t.geometry().is_identity


def test_save_and_load_keep_the_mapping_and_old_results_say_they_predate_it(tiny_results, tmp_path):
    occ, sal = tiny_results
    for r in (occ, sal):
        path = r.save(tmp_path / f"{r.kind}.npz")
        back = load_result(path)
        assert back.params["geometry"] == json.loads(json.dumps(r.params["geometry"]))
        np.testing.assert_array_equal(back.original, r.original)
        for i in range(len(r.params["geometry"])):
            boxes = np.array([[0, 0, 224, 224], [10.5, 20.25, 30, 40]])
            np.testing.assert_array_equal(back.to_original(boxes, index=i), r.to_original(boxes, index=i))
            np.testing.assert_array_equal(back.geometry(i).thumbnail, r.geometry(i).thumbnail)
    # an edited sidecar: a one-line error, not a KeyError
    edited = tmp_path / "edited.npz"
    occ.save(edited)
    meta = json.loads(edited.with_suffix(".json").read_text())
    meta["params"]["geometry"] = [{"original_size": "big"}]
    edited.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ResultError, match=r"params.geometry\[0\] is not a crop geometry"):
        load_result(edited).to_original([1.0, 2.0])
    # an old result: no geometry in params, no original array
    old = tmp_path / "old.npz"
    occ.save(old)
    meta = json.loads(old.with_suffix(".json").read_text())
    del meta["params"]["geometry"], meta["arrays"]["original"]
    old.with_suffix(".json").write_text(json.dumps(meta))
    with np.load(old) as data:
        arrays = {k: data[k] for k in data.files if k != "original"}
    np.savez_compressed(old, **arrays)
    legacy = load_result(old)
    assert legacy.original is None
    with pytest.raises(ResultError, match="predates crop geometry") as e:
        legacy.to_original([1.0, 2.0])
    assert "\n" not in str(e.value)
    legacy.render()  # the ordinary figure still draws
    res = CliRunner().invoke(cli, ["render", str(old), "--full-image", "-o", str(tmp_path / "x.png")])
    one_line_error(res, "predates crop geometry")
    assert not (tmp_path / "x.png").exists()


def _patches(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def _check_full_image_axes(ax, geo):
    h0, w0 = geo.original_size
    assert ax.get_xlim() == (0, w0) and ax.get_ylim() == (h0, 0)
    (crop,) = _patches(ax, "crop")
    assert crop.get_linestyle() not in ("-", "solid")
    box = geo.crop_box()
    np.testing.assert_allclose([crop.get_x(), crop.get_y(), crop.get_x() + crop.get_width(),
                                crop.get_y() + crop.get_height()], np.clip(box, 0, [w0, h0, w0, h0]), atol=1e-6)
    outside = _patches(ax, "outside")
    assert outside and all(p.get_hatch() for p in outside)
    area = sum(p.get_width() * p.get_height() for p in outside) + crop.get_width() * crop.get_height()
    assert area == pytest.approx(w0 * h0)
    bb = ax.get_window_extent()
    assert bb.width / bb.height == pytest.approx(w0 / h0, rel=0.03)  # the photo, undistorted


def test_full_image_figures_draw_the_whole_photo_with_the_crop_dashed(tiny_results, tmp_path):
    occ, sal = tiny_results
    # an independent check of the crop box of the landscape canvas: shorter side 389 -> 256, width
    # round(601 * 256 / 389) = 396, centre crop 224 from x = 86; back in photo pixels 86 * 601/396
    expected = [86 * 601 / 396, 16 * 389 / 256, 310 * 601 / 396, 240 * 389 / 256]
    np.testing.assert_allclose(occ.geometry().crop_box(), expected)
    fig = occ.render(tmp_path / "occ.png", full_image=True)
    drawn = [ax for ax in fig.axes if _patches(ax, "crop")]
    assert len(drawn) == 3
    for ax in drawn:
        _check_full_image_axes(ax, occ.geometry())
    (occluder,) = _patches(drawn[0], "occluder")
    iy, ix = np.unravel_index(np.argmin(occ.true_class_prob), occ.true_class_prob.shape)
    y0, x0 = occ.positions_y[iy], occ.positions_x[ix]
    np.testing.assert_allclose([occluder.get_x(), occluder.get_y()],
                               [(x0 + 86) * 601 / 396, (y0 + 16) * 389 / 256])
    with Image.open(tmp_path / "occ.png") as png:
        assert png.size[0] == 7 * 200 and png.size[1] > 500  # a 7 in figure at 200 dpi
    matplotlib.pyplot.close(fig)

    fig = sal.render(tmp_path / "sal.png", full_image=True)
    drawn = [ax for ax in fig.axes if _patches(ax, "crop")]
    assert len(drawn) == 4
    for k, ax in enumerate(drawn):
        _check_full_image_axes(ax, sal.geometry(k // 2))
    overlays = [im for ax in fig.axes for im in ax.images if im.get_gid() == "overlay"]
    assert len(overlays) == 2
    alpha = overlays[0].get_array()[..., 3]
    assert alpha[:, :100].max() == 0.0  # left of the crop (x < 130.7 photo px = 111 copy px): no map
    with Image.open(tmp_path / "sal.png") as png:
        assert png.size[0] == 7 * 200 and png.size[1] > 1000
    matplotlib.pyplot.close(fig)
    # the ordinary figures are unchanged by the option's existence
    assert not [ax for ax in occ.render().axes if _patches(ax, "crop")]
    matplotlib.pyplot.close("all")


def test_cli_full_image_flag_and_render_of_a_saved_result(tiny_results, tmp_path):
    occ, _ = tiny_results
    saved = occ.save(tmp_path / "occ.npz")
    res = CliRunner().invoke(cli, ["render", str(saved), "--full-image", "-o", str(tmp_path / "full.png")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "full.png") as png:
        assert png.size[0] == 7 * 200  # a 7 in figure at 200 dpi
    res = CliRunner().invoke(cli, ["render", str(saved), "--full-image", "-o", str(tmp_path / "no.png")])
    assert res.exit_code == 0
    filters = tmp_path / "f.npz"
    from cnnviz.engines.units.filters import first_layer_filters

    first_layer_filters(_tiny()).save(filters)
    res = CliRunner().invoke(cli, ["render", str(filters), "--full-image", "-o", str(tmp_path / "f.png")])
    one_line_error(res, "full_image", "'filters'")
    assert not (tmp_path / "f.png").exists()


@pytest.mark.slow
def test_cli_occlusion_and_saliency_draw_on_the_whole_photo(cached_model, tmp_path):
    canvas_wh, box = CASES["portrait"]
    photo = tmp_path / "canvas.png"
    _canvas(canvas_wh, box).save(photo)
    # portrait photos make tall panels: the usual figures (square crops) are 0.22 (occlusion) and 0.37
    # (saliency) as high as wide
    for cmd, extra, aspect in (("occlusion", ["--window", "112", "--stride", "112", "-q"], 0.35),
                               ("saliency", [], 0.6)):
        out, save = tmp_path / f"{cmd}.png", tmp_path / f"{cmd}.npz"
        res = CliRunner().invoke(cli, [cmd, str(photo), "--full-image", "-o", str(out), "--save", str(save), *extra])
        assert res.exit_code == 0, res.output
        with Image.open(out) as png:
            w, h = png.size
        assert h > aspect * w, (cmd, w, h)
        back = load_result(save)
        assert back.geometry().original_size == (577, 389) and back.original.shape[1:3] == (512, 345)


# --------------------------------------------------------------------------------------------------
# a real model on a real photo

@pytest.mark.slow
def test_strongest_occlusion_on_lite0_maps_onto_the_pasted_object_near_the_crop_border(lite0, tmp_path):
    canvas_wh, box = CASES["landscape"]  # the tench lies 6..111 crop pixels from the crop's left edge
    canvas = _canvas(canvas_wh, box)
    r = occlusion(lite0, canvas, window=32, stride=24, target=0, progress=False)
    assert r.params["baseline_prob"] > 0.5  # lite0 sees the tench
    iy, ix = np.unravel_index(np.argmin(r.true_class_prob), r.true_class_prob.shape)
    assert r.prob_drop[iy, ix] > 0.2
    bx0, by0, bx1, by1 = r.occluder_boxes(original=True)[iy, ix]
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3], ((cx, cy), box)
    # read naively, the crop position would miss the object
    nx0, ny0, nx1, ny1 = r.occluder_boxes()[iy, ix]
    assert not (box[0] <= (nx0 + nx1) / 2 <= box[2] and box[1] <= (ny0 + ny1) / 2 <= box[3])
    back = load_result(r.save(tmp_path / "tench.npz"))
    fig = back.render(tmp_path / "tench_full.png", full_image=True)
    matplotlib.pyplot.close(fig)


def test_every_engine_that_takes_a_photo_stores_a_mapping_that_finds_the_object_in_its_pixels():
    """Sanity, activations, inversion and DeepDream (a resize without a crop) keep the geometry:
    the object found in the pixels each result keeps lies where to_crop puts the pasted box."""
    from cnnviz.engines import featvis
    from cnnviz.engines.units.filters import feature_maps
    from cnnviz.engines.attribution.sanity import sanity

    lm = _tiny()
    canvas_wh, box = CASES["landscape"]
    canvas = _canvas(canvas_wh, box)
    results = {
        "sanity": (sanity(lm, canvas, methods=("saliency",), steps=1), "image"),
        "activations": (feature_maps(lm, canvas), "image"),
        "invert": (featvis.invert(lm, canvas, ["2"], steps=1, progress=False), "start"),
        "dream": (featvis.deep_dream(lm, canvas, "2", size=100, octaves=1, steps=1, progress=False), "start"),
    }
    for name, (r, field) in results.items():
        back = r.to_original(_found_box(getattr(r, field)))
        assert np.abs(back - box).max() <= 1.0 / min(r.geometry().scale) + 1e-9, (name, back, box)
        assert r.geometry().thumbnail.shape == (331, 512, 3), name
    assert results["dream"][0].geometry().crop_size == (100, 154)  # the whole photo: 601 * 100 / 389 = 154.499
