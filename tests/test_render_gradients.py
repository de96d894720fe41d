"""Figures of backprop attributions on real results from EfficientNet-Lite0."""

import matplotlib
import numpy as np
import pytest

import cnnviz
from cnnviz.engines.attribution.gradients import attribute
from cnnviz.errors import ParameterError
from cnnviz.render.attribution.gradients import compare_figure, figure, signal_rgb

from helpers import ASSETS, sample_image

METHODS = {"saliency": {}, "guided": {}, "gradcam": {}, "ig": {"ig_steps": 4}}


@pytest.fixture(scope="module")
def results():
    lm = cnnviz.load_model()
    images = [ASSETS / "rocket.jpg", sample_image(10)]
    return {m: attribute(lm, images, m, **kw) for m, kw in METHODS.items()}


def _maps(fig, gid="map"):
    return [im for ax in fig.axes for im in ax.images if im.get_gid() == gid]


@pytest.mark.parametrize("method", list(METHODS))
def test_figures_render_to_every_format(results, method, tmp_path):
    r = results[method]
    fig = figure(r)
    for ext in ("png", "pdf", "svg"):
        fig.savefig(tmp_path / f"{method}.{ext}")
        assert (tmp_path / f"{method}.{ext}").stat().st_size > 1000
    assert len(_maps(fig)) == 2 and len(_maps(fig, "image")) == 2 and len(_maps(fig, "overlay")) == 2
    assert len(_maps(fig, "rgb")) == (2 if method == "guided" else 0)
    matplotlib.pyplot.close(fig)
    fig = figure(r, overlay=False, shared_scale=True)
    assert not _maps(fig, "overlay")
    matplotlib.pyplot.close(fig)


def test_signed_maps_are_centred_on_zero_and_unsigned_start_at_zero(results):
    fig = figure(results["ig"])
    for im in _maps(fig):
        assert im.norm.vmin == -im.norm.vmax and im.norm.vmax > 0
        assert im.get_cmap().name == "RdBu_r"
    fig = figure(results["saliency"])
    for im in _maps(fig):
        assert im.norm.vmin == 0 and im.norm.vmax > 0
    assert results["ig"].params["signed"] and not results["saliency"].params["signed"]


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_shared_scale_gives_all_rows_one_clim(results, method):
    own = [im.get_clim() for im in _maps(figure(results[method]))]
    shared = [im.get_clim() for im in _maps(figure(results[method], shared_scale=True))]
    assert own[0] != own[1]
    assert shared[0] == shared[1]


def test_rgb_signal_is_gray_at_zero_and_within_range():
    a = np.zeros((3, 4, 4))
    a[0, 0, 0], a[1, 1, 1] = 2.0, -2.0
    rgb = signal_rgb(a, clip=None)
    assert rgb.shape == (4, 4, 3)
    assert rgb[2, 2].tolist() == [0.5, 0.5, 0.5]
    assert rgb[0, 0, 0] == 1.0 and rgb[1, 1, 1] == 0.0


def test_compare_figure_has_the_image_then_one_column_per_method(results, tmp_path):
    rs = list(results.values())
    fig = compare_figure(rs, index=1)
    maps, image = _maps(fig), _maps(fig, "image")
    assert len(maps) == len(rs) and len(image) == 1
    xs = [im.axes.get_position().x0 for im in image + maps]
    assert xs == sorted(xs)  # the image first, then the methods in the order given
    titles = [im.axes.get_title() for im in maps]
    names = ["Saliency", "Guided backprop", "Grad-CAM", "Integrated Gradients"]
    assert all(t.replace("\n", " ").startswith(n) for t, n in zip(titles, names)), titles
    fig.savefig(tmp_path / "c.png")
    fig = compare_figure(rs, shared_scale=True, overlay=True)
    clims = [im.get_clim() for im in _maps(fig)]
    assert clims[0] == clims[1]  # saliency and guided backprop: one unit, one scale
    assert clims[2] != clims[0] and clims[3] != clims[0]  # Grad-CAM and IG: other units, their own
    assert len(_maps(fig, "overlay")) == len(rs)
    with pytest.raises(ParameterError, match="same image"):
        compare_figure([rs[0], _other_image(rs[1])])


def _other_image(r):
    import dataclasses

    return dataclasses.replace(r, image=r.image[::-1].copy())


def _notes(fig):
    return [t for ax in fig.axes for t in ax.texts if t.get_gid() == "uninformative-note"]


def test_an_uninformative_deconvnet_map_carries_a_visible_note(tmp_path):
    import torch
    import torchvision

    from cnnviz.models import LoadedModel, Preprocessing

    lm = cnnviz.load_model()
    r = attribute(lm, [ASSETS / "rocket.jpg", sample_image(10)], "deconv")
    assert r.params["uninformative"]
    fig = figure(r)
    notes = _notes(fig)
    assert len(notes) == 2 and all("UNINFORMATIVE" in t.get_text() and t.get_visible() for t in notes)
    fig.savefig(tmp_path / "d.png")
    assert len(_notes(figure(r, full_image=True))) == 2  # also on the whole photo
    assert len(_notes(compare_figure([attribute(lm, ASSETS / "rocket.jpg", m) for m in ("saliency", "deconv")]))) == 1
    torch.manual_seed(0)
    alex = LoadedModel(torchvision.models.alexnet().eval(), "alexnet", "random", Preprocessing(crop=(128, 128), resize=146),
                       [str(i) for i in range(1000)])
    informative = attribute(alex, ASSETS / "rocket.jpg", "deconv", target=3)
    assert informative.params["uninformative"] is False and _notes(figure(informative)) == []


def test_smoothgrad_panel_names_its_mode():
    lm = cnnviz.load_model()
    r = attribute(lm, ASSETS / "rocket.jpg", "saliency", smooth=2, smooth_mode="mean-abs")
    titles = [ax.get_title() for ax in figure(r).axes]
    assert any("SmoothGrad Saliency (n=2, mean-abs)" in t for t in titles), titles
