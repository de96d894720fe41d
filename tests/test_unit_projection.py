"""Unit figures on a model without max pooling (EfficientNet-Lite0, real weights, real photos):
the deconvnet's projections carry no image there (cnnviz's own check says so), so `topk --figure`
and `evolution` project with guided backprop and say so; at `_blocks.10` the theoretical receptive
field (339 px) exceeds the 224 px image, so patches are cut where the unit's own map is high;
`compare`'s defaults leave out what the result flags as uninformative; an activation is named by
its type (ReLU6), not by the name the model's code gave it (`_swish`)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import cnnviz
from cnnviz.engines.attribution.gradients import attribute
from cnnviz.engines.units.patches import ACTIVATION_FRACTION, crop_box, unit_patches, zf_scale
from cnnviz.engines.units.topk import TopkResult, scan
from cnnviz.layers import readable_name
from cnnviz.models import load_model

from figure_checks import check, drawn_texts
from helpers import SAMPLE, assert_untouched, snapshot

LAYER = "_blocks.10"  # 112 x 14 x 14 at 224 px; theoretical RF 339 px


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("unit_photos")
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[:8]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def top(lite0, photos):
    return scan(lite0, photos, LAYER, units="0:3", k=3, batch_size=8, device="cpu", progress=False)


@pytest.fixture(scope="module")
def patches(lite0, top):
    return unit_patches(lite0, top, device="cpu")


def _acts(lm, x: torch.Tensor, layer: str = LAYER) -> torch.Tensor:
    module = dict(lm.model.named_modules())[layer]
    out = []
    h = module.register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            lm.model(x)
    finally:
        h.remove()
    return out[0]


def _tile(signal: np.ndarray, box, side: int) -> np.ndarray:
    """A projection (3 x H x W) displayed as the patches show it: ZF scaling, cut at `box`,
    resized to `side` (PIL bilinear)."""
    from PIL import Image

    img = np.round(zf_scale(np.transpose(signal, (1, 2, 0))) * 255).clip(0, 255).astype(np.uint8)
    cut = crop_box(img, box, (0, 0, 0))
    return np.asarray(Image.fromarray(cut).resize((side, side), Image.Resampling.BILINEAR)).astype(int)


def test_the_topk_figure_projects_with_guided_backprop_and_says_so(lite0, top, patches):
    p = patches.params
    # cnnviz's own check of the deconvnet found nothing of the image in it, with no max-pool switch
    assert p["deconv_check"]["uninformative"] and p["deconv_check"]["max_pool_switches"] == 0
    assert p["projection"] == "guided" and p["projection_asked"] == "auto"
    assert "guided backprop in place of the deconvnet" in p["projection_note"]
    # each stored tile is the guided-backprop projection of that activation (computed here through
    # `attribute`, one image at a time), not the deconvnet's
    u, j = 0, 0
    c, (y, x) = int(patches.units[u]), patches.position[u, j]
    x_in = lite0.prepare(top.params["root"] + "/" + str(patches.files[patches.image_index[u, j]]))[1]
    side = patches.projections.shape[2]
    tiles = {m: _tile(attribute(lite0, x_in, m, normalized=True, layer=LAYER, unit=f"{c}:{y},{x}", device="cpu").attribution[0],
                      patches.boxes[u, j], side) for m in ("guided", "deconv")}
    stored = patches.projections[u, j].astype(int)
    assert np.abs(stored - tiles["guided"]).mean() <= 1.0
    assert np.abs(stored - tiles["deconv"]).mean() > 10 * max(1.0, np.abs(stored - tiles["guided"]).mean())
    # the figure's caption names the method and why
    from cnnviz.render.units.patches import figure

    fig = figure(patches, columns=3)
    text = " ".join(t.get_text() for t in drawn_texts(fig)).replace("\n", " ")
    assert "guided-backprop projection" in text and "do not depend on the image" in text
    assert "deconvnet projection" not in text
    check(fig, 7.0)


def test_two_images_at_one_position_give_different_tiles_unless_the_deconvnet_is_asked_for(lite0, photos):
    """Two photos, one unit, the same position: the deconvnet's tiles are the same picture (its
    fixed pattern there, scaled to its own maximum), the default projection's are not."""
    files = sorted(p.name for p in photos.iterdir())[:2]
    x = torch.cat([lite0.prepare(str(photos / f))[1] for f in files])
    a = _acts(lite0, x)
    y, xx = 7, 7
    unit = int(torch.minimum(a[0, :, y, xx], a[1, :, y, xx]).argmax())
    assert float(a[:, unit, y, xx].min()) > 0
    r = TopkResult(params={"layer": LAYER, "layer_shape": list(a.shape[1:]), "root": str(photos)}, provenance={},
                   values=a[:, unit, y, xx].numpy()[None].astype(np.float32), image_index=np.array([[0, 1]]),
                   position=np.array([[[y, xx], [y, xx]]]), units=np.array([unit]), files=np.array(files),
                   skipped=np.zeros(0, str))
    from cnnviz.render.units.patches import _outside

    res = {m: unit_patches(lite0, r, device="cpu", projection=m, crop="rf") for m in ("auto", "deconv")}
    image = ~_outside(res["auto"].boxes[0], res["auto"].params)[0]  # the same box for both: the same position
    tiles = {m: v.projections[0][:, image].astype(int) for m, v in res.items()}
    assert np.abs(tiles["deconv"][0] - tiles["deconv"][1]).max() <= 1  # the same picture for two photos
    dev = (tiles["auto"] - 128.0).reshape(2, -1)  # the default shows each photo's own
    assert np.abs(dev).max() >= 100 and np.corrcoef(dev)[0, 1] < 0.5


def test_patches_are_cut_where_the_units_map_is_high(lite0, top, patches):
    p = patches.params
    h, w = lite0.input_size
    assert p["rf"] == [339, 339] and p["crop"] == "activation" and p["crop_fraction"] == ACTIVATION_FRACTION
    assert patches.inside.all()  # no field crossing the border: no "at border" in the titles
    present = patches.image_index >= 0
    sides = []
    for u, j in np.argwhere(present):
        y0, y1, x0, x1 = (int(v) for v in patches.boxes[u, j])
        assert 0 <= y0 <= y1 < h and 0 <= x0 <= x1 < w
        sides.append(y1 - y0 + 1)
        # the region where the upsampled map is at least half its peak, around the peak, lies in the box
        c, (py, px) = int(patches.units[u]), patches.position[u, j]
        x_in = lite0.prepare(top.params["root"] + "/" + str(patches.files[patches.image_index[u, j]]))[1]
        amap = _acts(lite0, x_in)[0, c]
        assert float(amap.max()) == pytest.approx(float(patches.values[u, j]), rel=1e-4)
        up = F.interpolate(amap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        mask = up >= 0.5 * float(amap[py, px])
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        cy, cx = np.unravel_index(np.argmax(np.where(labels > 0, up, -np.inf)), up.shape)
        rows, cols = np.nonzero(labels == labels[cy, cx])
        assert y0 <= rows.min() and rows.max() <= y1 and x0 <= cols.min() and cols.max() <= x1
        # the crop holds more of the unit's map than the image does on average
        assert up[y0:y1 + 1, x0:x1 + 1].mean() > up.mean()
        # and the patch is the photo there
        from PIL import Image

        img = lite0.prepare(top.params["root"] + "/" + str(patches.files[patches.image_index[u, j]]))[0]
        want = np.asarray(Image.fromarray(img[y0:y1 + 1, x0:x1 + 1]).resize(patches.patches.shape[2:4][::-1],
                                                                             Image.Resampling.BILINEAR))
        assert np.abs(patches.patches[u, j].astype(int) - want.astype(int)).mean() < 1.0
    assert min(sides) < 200  # a region, not the whole image (nor the 339 px field)


def test_the_model_is_untouched(lite0, top):
    x = lite0.prepare(top.params["root"] + "/" + str(top.files[0]))[1]
    before = snapshot(lite0.model, x)
    unit_patches(lite0, top, units=[1], device="cpu")
    assert_untouched(lite0.model, x, before)


@pytest.mark.slow
def test_evolution_on_lite0_projects_with_guided_backprop_and_says_so(lite0, photos, tmp_path):
    from cnnviz.engines.experiments.evolution import evolution

    ckpts = []
    for c in range(2):
        ckpts.append(tmp_path / f"ckpt_{c}.pt")
        torch.save(lite0.model.state_dict(), ckpts[-1])
    r = evolution(lite0, [str(c) for c in ckpts], photos, LAYER, units="0:2", batch_size=8, device="cpu",
                  show_progress=False)
    r.save(tmp_path / "evo.npz")
    back = cnnviz.load_result(tmp_path / "evo.npz")
    assert back.params["projection"] == "guided" and back.params["crop"] == "activation"
    assert back.params["deconv_uninformative"] is True
    side = back.projections.shape[2]
    for u in range(2):
        i, (y, x) = int(back.image_index[0, u]), back.position[0, u]
        x_in = lite0.prepare(str(photos / str(back.files[i])))[1]
        tiles = {m: _tile(attribute(lite0, x_in, m, normalized=True, layer=LAYER, unit=f"{int(back.units[u])}:{y},{x}",
                                    device="cpu").attribution[0], back.boxes[0, u], side) for m in ("guided", "deconv")}
        stored = back.projections[0, u].astype(int)
        assert np.abs(stored - tiles["guided"]).mean() <= 1.0
        assert np.abs(stored - tiles["deconv"]).mean() > 10
        y0, y1, x0, x1 = back.boxes[0, u]
        assert 0 <= y0 and 0 <= x0 and y1 < 224 and x1 < 224
    fig = back.render(None)
    text = " ".join(t.get_text() for t in drawn_texts(fig)).replace("\n", " ")
    assert "guided-backprop projection" in text and "deconvnet projection" not in text
    assert "swish" not in text
    check(fig, 7.0)


@pytest.mark.slow
def test_compare_defaults_leave_out_what_the_result_flags(lite0, cached_model, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    monkeypatch.chdir(tmp_path)
    img = str(sorted((SAMPLE / "images").glob("*.jpg"))[0])
    runner = CliRunner()
    res = runner.invoke(cli, ["compare", img, "--device", "cpu", "--out", "f.png", "--save", "r.npz"])
    assert res.exit_code == 0, res.output
    assert "deconv left out of the default methods" in res.stdout
    r = cnnviz.load_result(tmp_path / "r.npz")
    assert list(r.methods) == ["saliency", "guided", "gradcam", "ig"]
    assert not any(mp.get("uninformative") for mp in r.params["method_params"])
    assert "deconv" in r.params["left_out"]
    # named, it is drawn (and flagged, as before)
    res = runner.invoke(cli, ["compare", img, "--methods", "saliency,deconv", "--device", "cpu", "--out", "g.png",
                              "--save", "s.npz"])
    assert res.exit_code == 0, res.output
    r = cnnviz.load_result(tmp_path / "s.npz")
    assert list(r.methods) == ["saliency", "deconv"] and r.params["method_params"][1]["uninformative"]
    assert "left_out" not in r.params


def test_an_activation_is_named_by_its_type():
    assert readable_name("_swish@1", "ReLU6") == "head, ReLU6 after the last conv"
    assert readable_name("_blocks.6._swish@1", "ReLU6") == "block 6, ReLU6 after the depthwise conv"
    assert readable_name("features.1", "ReLU") == "features 1, ReLU"
    assert readable_name("layer4.1.conv2", "Conv2d") == "layer4 block 1, conv2"  # not an activation: its name


def test_lite0_figures_name_the_head_relu6_by_its_type(lite0, top, patches):
    img = str(sorted((SAMPLE / "images").glob("*.jpg"))[0])
    r = attribute(lite0, img, "gradcam", layer="_swish@1", device="cpu")
    assert r.params["layer_type"] == "ReLU6"
    fig = r.render(None)
    text = " ".join(t.get_text() for t in drawn_texts(fig))
    assert "ReLU6" in text and "swish" not in text.lower()
    # a top-k figure of the head activation
    t = scan(lite0, top.params["root"], "_swish@1", units="0:2", k=2, batch_size=8, device="cpu", progress=False)
    pr = unit_patches(lite0, t, project=False, device="cpu")
    fig = pr.render(None)
    text = " ".join(t.get_text() for t in drawn_texts(fig))
    assert "ReLU6" in text and "swish" not in text.lower()


@pytest.mark.slow
def test_the_topk_command_says_which_projection_and_crop(lite0, cached_model, photos, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["topk", str(photos), "--layer", LAYER, "--units", "0:2", "-k", "2", "--device", "cpu", "-q"]
    res = runner.invoke(cli, [*base, "--figure", "f.png"])
    assert res.exit_code == 0, res.output
    assert "(2 units, guided projections and patches, cropped at the unit's activation" in res.stdout
    assert "note: guided backprop in place of the deconvnet" in res.stdout
    assert (tmp_path / "f.png").stat().st_size > 10_000
    res = runner.invoke(cli, [*base, "--figure", "g.png", "--projection", "deconv", "--crop", "rf"])
    assert res.exit_code == 0, res.output
    assert "deconv projections and patches, RF 339 px" in res.stdout and "the deconvnet, as asked" in res.stdout
    res = runner.invoke(cli, [*base, "--figure", "h.png", "--projection", "lrp"])
    assert res.exit_code != 0 and "lrp" in res.output
