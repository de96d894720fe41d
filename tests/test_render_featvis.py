"""Figures of feature visualization results (`cnnviz.render.featvis`), drawn from real, tiny runs of
the engine on EfficientNet-Lite0 (a few steps at 64 px): every mode shows exactly the result's
pixels, unsmoothed and at a whole enlargement, titled with its labels and scores; the objective plot;
saving in every format and redrawing a saved result without the model."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cnnviz import load_model
from cnnviz.engines import featvis as fv
from cnnviz.errors import OutputError
from cnnviz.render import render
from cnnviz.render.featvis import figure, pretty_transforms, score_text
from cnnviz.results import FeatvisResult, load_result

from helpers import ASSETS

MODES = ["units", "class", "dream", "invert", "custom"]
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".svg": b"<?xml"}


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def results(lite0):
    quick = dict(steps=4, size=64, progress=False, device="cpu")
    return {
        "units": fv.visualize_units(lite0, "_blocks.4", "0:3", **quick),
        "class": fv.visualize_classes(lite0, ["goldfinch", 1], **quick),
        "dream": fv.deep_dream(lite0, ASSETS / "rocket.jpg", "_blocks.4", size=64, octaves=2, steps=2,
                               progress=False, device="cpu"),
        "invert": fv.invert(lite0, ASSETS / "cat.jpg", ["_blocks.1", "_blocks.4"], steps=2, progress=False,
                            device="cpu"),
        "custom": fv.visualize(lite0, fv.channel("_blocks.4", [5, 6]) + 0.1 * fv.total_variation(), batch=2,
                               labels=["five", "six"], **quick),
    }


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def plot_axes(fig):
    return [ax for ax in fig.axes if not ax.get_images() and ax.get_lines()]


def expected_panels(result) -> list[np.ndarray]:
    mode = result.params["mode"]
    if mode in ("dream", "invert"):
        return [result.start, *result.images]
    return list(result.images)


def sig(v) -> str:
    """Three significant digits with trailing zeros: 1.00, 0.830, 22.5, 123."""
    text = f"{float(v):.3g}"
    digits = len(text.replace("-", "").replace(".", "").lstrip("0"))
    if "e" not in text and digits < 3:
        text += ("" if "." in text else ".") + "0" * (3 - digits)
    return text


def heading(fig) -> str:
    return " ".join([fig._suptitle.get_text()] + [t.get_text() for t in fig.texts])


@pytest.mark.parametrize("mode", MODES)
def test_panels_show_the_result_pixels_unsmoothed(results, mode):
    r = results[mode]
    assert r.params["mode"] == mode
    fig = figure(r)
    axes = image_axes(fig)
    want = expected_panels(r)
    assert len(axes) == len(want)
    for ax, img in zip(axes, want):
        shown = ax.get_images()[0]
        arr = np.asarray(shown.get_array())
        assert arr.dtype == np.uint8 and arr.shape == img.shape
        assert np.array_equal(arr, img)
        assert shown.get_interpolation() in ("none", "nearest")
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0


@pytest.mark.parametrize("mode", MODES)
def test_titles_name_each_panel_and_its_score(results, mode):
    r = results[mode]
    fig = figure(r)
    axes = image_axes(fig)
    titles = [ax.get_title().replace("\n", " ") for ax in axes]
    feet = [ax.get_xlabel() for ax in axes]
    head = heading(fig)
    assert "efficientnet_lite0" in head
    if mode == "units":
        assert titles == ["unit 0", "unit 1", "unit 2"]
        assert feet == [f"mean act {sig(v)}" for v in r.score]
        assert "block 4" in head and "4 steps" in head and "priors full" in head and "Fourier" in head
    elif mode == "class":
        assert titles == ["goldfinch", "goldfish"]
        assert all(f.startswith("p=") for f in feet)
        assert [float(f[2:]) for f in feet] == pytest.approx([float(v) for v in r.score], rel=0.06, abs=0.006)
        assert "logit" in head
    elif mode == "dream":
        assert titles == ["original", "DeepDream: block 4, 2 octaves"]
        assert feet == [f"mean sq. act {sig(r.params['start_objective'])}", f"mean sq. act {sig(r.score[0])}"]
        assert "block 4" in head and "2 octaves × 2 steps" in head
    elif mode == "invert":
        assert titles == ["original", "block 1", "block 4"]
        assert feet[1:] == [f"rel. dist {sig(v)}" for v in r.score]
        assert "priors full" in head and "TV × 2" in head and "2 steps" in head
    else:
        assert titles == ["five", "six"]
        assert feet == [f"objective {sig(v)}" for v in r.score]
        assert "channel(_blocks.4, [5, 6])" in head.replace("\n", " ")


def test_panels_enlarge_small_images_by_a_whole_factor(results, tmp_path):
    """64 px images become 3 x 64 = 192 saved pixels; PNG written at the figure's own dpi."""
    fig = figure(results["units"])
    fig.canvas.draw()
    for ax in image_axes(fig):
        box = ax.get_window_extent()
        assert box.width == pytest.approx(192, abs=1) and box.height == pytest.approx(192, abs=1)
    from PIL import Image

    path = render(results["units"], tmp_path / "u.png")
    w, h = Image.open(tmp_path / "u.png").size
    assert w >= 3 * 192 and h >= 192 + 40  # three enlarged panels side by side, titles above and below
    assert path is not None


def test_history_plot_per_image_with_legend(results):
    r = results["units"]
    assert plot_axes(figure(r)) == []  # off by default outside dream
    fig = figure(r, history=True)
    (ax,) = plot_axes(fig)
    lines = ax.get_lines()
    assert len(lines) == r.history.shape[1] == 3
    for i, line in enumerate(lines):
        assert np.array_equal(line.get_xdata(), r.history_steps)
        assert np.allclose(line.get_ydata(), r.history[:, i])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unit 0", "unit 1", "unit 2"]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "mean activation"


def test_history_legend_keeps_layer_names_starting_with_underscore(results):
    fig = figure(results["invert"], history=True)
    (ax,) = plot_axes(fig)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["block 1", "block 4"]


def test_history_without_legend_beyond_eight_images(results):
    r = results["custom"]
    k = 5  # 10 images
    many = dataclasses.replace(r, images=np.concatenate([r.images] * k), labels=np.array([f"i{j}" for j in range(10)]),
                               score=np.tile(r.score, k), objective=np.tile(r.objective, k),
                               history=np.tile(r.history, (1, k)))
    fig = figure(many, history=True, columns=5)
    (ax,) = plot_axes(fig)
    assert len(ax.get_lines()) == 10 and ax.get_legend() is None
    assert "10 images" in ax.get_title(loc="left").replace("\n", " ")
    tops = sorted({round(a.get_position().y1, 4) for a in image_axes(fig)})
    assert len(tops) == 2  # two rows of five


def test_dream_plot_by_default_with_start_and_octaves(results):
    r = results["dream"]
    (ax,) = plot_axes(figure(r))
    dream_line = ax.get_lines()[0]
    assert np.allclose(dream_line.get_ydata(), r.history[:, 0])
    ys = [line.get_ydata()[0] for line in ax.get_lines()[1:] if line.get_linestyle() == "--"]
    assert ys == pytest.approx([r.params["start_objective"]])
    xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert xs == [1.5]  # 2 octaves of 2 steps: steps 0-1, then 2-3
    assert ax.get_xlabel() == "step" and ax.get_ylabel()
    assert plot_axes(figure(r, history=False)) == []


def test_columns_option(results):
    fig = figure(results["units"], columns=1)
    lefts = {round(a.get_position().x0, 4) for a in image_axes(fig)}
    assert len(lefts) == 1


@pytest.mark.parametrize("mode", MODES)
def test_saved_result_redraws_the_same_panels(results, mode, tmp_path):
    r = results[mode]
    r.save(tmp_path / "r.npz")
    back = load_result(tmp_path / "r.npz")
    assert isinstance(back, FeatvisResult) and back.params["mode"] == mode
    fig_a, fig_b = figure(r), back.render(tmp_path / "again.png")
    a, b = image_axes(fig_a), image_axes(fig_b)
    assert [x.get_title() for x in a] == [x.get_title() for x in b]
    assert [x.get_xlabel() for x in a] == [x.get_xlabel() for x in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.get_images()[0].get_array(), y.get_images()[0].get_array())
    assert (tmp_path / "again.png").read_bytes().startswith(MAGIC[".png"])


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
@pytest.mark.parametrize("mode", ["units", "dream"])
def test_every_format(results, mode, suffix, tmp_path):
    path = tmp_path / f"fig{suffix}"
    results[mode].render(path)
    data = path.read_bytes()
    assert data.startswith(MAGIC[suffix]) and len(data) > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_unknown_suffix_is_a_one_line_error(results, tmp_path):
    with pytest.raises(OutputError) as e:
        results["units"].render(tmp_path / "fig.bmp")
    assert "\n" not in str(e.value) and ".png" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_score_and_transform_text():
    assert score_text("probability", 0.987) == "p=0.99"
    assert score_text("probability", 0.00014) == "p=0.00014"
    assert score_text("relative feature distance", 0.1534) == "rel. dist 0.153"
    assert score_text("relative feature distance", 1.0) == "rel. dist 1.00"
    assert score_text("mean activation", 123.4) == "mean act 123"
    assert score_text("objective", -0.5) == "objective -0.500"
    assert score_text("mean activation", 12.34) == "mean act 12.3"
    assert score_text("something else", float("nan")) == "something else n/a"
    assert pretty_transforms("pad=16,jitter=8,scale=0.9-1.1,rotate=10") == \
        "pad 16 px, jitter 8 px, scale 0.9-1.1, rotate 10°"
    assert pretty_transforms("pad=0,jitter=2,scale=1-1,rotate=0") == "jitter 2 px"
    assert pretty_transforms("none") == "none"
