"""Every figure fits a page (issue 29): at the default 7 in width no taller than a text block's
9 in, at a column's 3.5 in no taller than 8 in, unless the caller asks (`max_height`); and
captions that say what the figure shows. Results from the real engines on small inputs
(tests/figure_results.py: EfficientNet-Lite0 on the bundled photos, random-weight torchvision
models, toy nets)."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest

from cnnviz.render.style import COLUMN_HEIGHT, DEFAULT_WIDTH, PAGE_HEIGHT
from figure_checks import check, drawn_texts
from figure_results import build
from helpers import SAMPLE, sample_rows

LIMIT = {DEFAULT_WIDTH: PAGE_HEIGHT, 3.5: COLUMN_HEIGHT}


def _close(fig):
    matplotlib.pyplot.close(fig)


def _text(fig) -> str:
    return " ".join(t.get_text() for t in drawn_texts(fig)).replace("\n", " ")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return build(tmp_path_factory.mktemp("figures"))


NAMES = ["occlusion", "gradients", "gradcam3", "compare", "sanity", "sanity_default", "filters", "activations",
         "receptive_field", "patches", "featvis", "dream", "simplify", "scoremap", "correspondence", "invariance",
         "evolution", "neighbours", "semantics", "probe", "tcav", "strategies"]


@pytest.mark.parametrize("layout", ["row", "grid"])
@pytest.mark.parametrize("width", [DEFAULT_WIDTH, 3.5])
@pytest.mark.parametrize("name", NAMES)
def test_every_figure_fits_a_page(results, name, width, layout, request):
    if name == "invariance" and width == 3.5:  # 19.9 in before; 9.05 in now: panels need 1.1 in a row
        request.applymarker(pytest.mark.xfail(strict=True, reason="invariance in one column: 3 transforms x 2 "
                                              "rows of plots do not fit 8 in yet"))
    if name == "neighbours" and width == 3.5:
        request.applymarker(pytest.mark.xfail(strict=False, reason="neighbours in one column: its bottom row of "
                                              "names reaches 0.03 in below the figure since names wrap whole "
                                              "(issue 29, left open)"))
    if name not in results:
        pytest.skip(f"{name} needs the ImageNet sample ({SAMPLE})")
    r, options = results[name]
    fig = r.render(None, width=width, layout=layout, **options)
    m = check(fig, width)  # the width, text >= 7 pt, nothing outside, no overlaps
    assert m["height"] <= LIMIT[width] + 1e-6, \
        f"{name} at {width} in ({layout}) is {m['height']:.2f} in tall, more than a page's {LIMIT[width]} in"
    _close(fig)


def test_a_taller_figure_when_asked_and_a_lower_limit_kept(results):
    """gradcam on 3 images was 7 x 9.5 in: within the page now, its natural height with no limit,
    and any lower limit asked for."""
    r, _ = results["gradcam3"]
    tall = r.render(max_height=None)
    page = r.render()
    # 7 in: below the page; 6 in is below what three images with their two-line captions (layer names
    # by what and where) can shrink to at the smallest picture Panels allows (1.05 in)
    low = r.render(max_height=7)
    assert tall.get_figheight() > PAGE_HEIGHT >= page.get_figheight()
    assert low.get_figheight() <= 7 + 1e-6
    check(low, DEFAULT_WIDTH)
    for fig in (tall, page, low):
        _close(fig)
    from cnnviz.errors import ParameterError

    with pytest.raises(ParameterError, match="max_height"):
        r.render(max_height=0)


def _pictures(fig):
    return [ax for ax in fig.axes if ax.images]


def test_one_image_simplified_lays_out_in_a_row(results):
    """One image: the image beside its minimal image (was: stacked, 7 x 8.1 in, empty sides)."""
    r, _ = results["simplify"]
    for width in (DEFAULT_WIDTH, 3.5):
        fig = r.render(width=width)
        a, b = sorted(_pictures(fig), key=lambda ax: ax.get_position().x0)
        pa, pb = a.get_position(), b.get_position()
        assert abs(pa.y0 - pb.y0) < 1e-6 and pb.x0 > pa.x1  # side by side
        _close(fig)


def test_scoremap_names_sizes_width_by_height(results):
    """The rocket is a portrait: the photo's size is W x H as everywhere else (was H x W)."""
    r, _ = results["scoremap"]
    h, w = r.image.shape[:2]
    assert h > w
    fig = r.render()
    text = _text(fig)
    assert f"at {w}×{h} px" in text and f"{h}×{w}" not in text
    ch, cw = r.params["crop"]
    assert f"{cw}×{ch} crop" in text
    _close(fig)


@pytest.mark.skipif(not (SAMPLE / "labels.csv").is_file(), reason=f"needs the ImageNet sample ({SAMPLE})")
def test_neighbours_of_an_unlabelled_query_frame_nothing_and_say_so():
    import torchvision

    from cnnviz.engines.experiments.neighbours import neighbours
    from helpers import random_model, twelve_photos

    rows, files, _ = twelve_photos()
    labels = {r["file"]: r["class_index"] for r in rows}  # the data's labels only
    outside = str(SAMPLE / "images" / sample_rows()[1]["file"])  # not among the twelve: no label
    alex = random_model(torchvision.models.alexnet, 5, crop=80, resize=90)
    r = neighbours(alex, [outside], files, "features.8", k=3, labels=labels, device="cpu", progress=False)
    assert r.params.get("hit_rate") is not None and r.params["query_groups"] == [None]
    fig = r.render()
    text = _text(fig)
    assert "framed: same" not in text and "none is framed" in text
    assert not [p for ax in fig.axes for p in ax.patches if getattr(p, "get_linewidth", lambda: 0)() >= 2.5]
    _close(fig)


@pytest.mark.skipif(not (SAMPLE / "labels.csv").is_file(), reason=f"needs the ImageNet sample ({SAMPLE})")
def test_semantics_draws_no_empty_chart_and_marks_weak_colour_labels(results):
    r, _ = results["semantics"]
    # no group-selective unit: no chart of their groups (was an empty box reading "none")
    none = dataclasses.replace(r, label_type=np.where(r.label_type == 0, 2, r.label_type))
    fig = none.render()
    titles = [ax.get_title() for ax in fig.axes]
    assert not [t for t in titles if "-selective units by" in t]
    assert not [t for ax in fig.axes for t in ax.texts if t.get_text() == "none"]
    check(fig, DEFAULT_WIDTH)
    _close(fig)
    # a colour label with IoU 0.25 is shown as weak, one with 0.45 is not
    e = [int(u) for u in r.example_units]
    iou = r.colour_iou.copy()
    types = r.label_type.copy()
    types[e[0]], types[e[1]] = 1, 1
    iou[e[0]] = 0.0
    iou[e[0], 2] = 0.25
    iou[e[1]] = 0.0
    iou[e[1], 3] = 0.45
    marked = dataclasses.replace(r, colour_iou=iou, label_type=types)
    fig = marked.render()
    lines = [t.get_text().replace("\n", " ") for t in fig.texts]
    weak = [t for t in lines if t.startswith(f"unit {int(r.units[e[0]])}:")]
    strong = [t for t in lines if t.startswith(f"unit {int(r.units[e[1]])}:")]
    assert weak and "IoU 0.25" in weak[0] and "weak" in weak[0]
    assert strong and "IoU 0.45" in strong[0] and "weak" not in strong[0]
    assert "IoU < 0.3" in _text(fig)  # the chart's hatched part is explained
    _close(fig)


def test_dream_objective_plot_is_a_small_strip(results):
    """The objective plot took 60 % of the figure; now at most a third, no taller than the pictures."""
    r, options = results["dream"]
    for width in (DEFAULT_WIDTH, 3.5):
        fig = r.render(width=width, **options)
        area = lambda ax: ax.get_position().width * ax.get_position().height  # noqa: E731
        plots = [ax for ax in fig.axes if ax.lines]
        pictures = _pictures(fig)
        assert len(plots) == 1 and len(pictures) == 2
        assert area(plots[0]) < 1 / 3, f"the plot takes {100 * area(plots[0]):.0f} % of the figure at {width} in"
        tall = lambda ax: ax.get_position().height  # noqa: E731
        assert tall(plots[0]) <= max(tall(ax) for ax in pictures) + 1e-6  # a strip, not taller than the pictures
        _close(fig)


def test_evolution_labels_sit_beside_the_tiles(results):
    """With few checkpoints the tiles were centred and the unit labels stayed at the left edge: a
    white quarter between them. The labels end within 0.2 in of the first tile."""
    r, options = results["evolution"]
    for width in (DEFAULT_WIDTH, 3.5):
        fig = r.render(width=width, **options)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [t for t in fig.texts if t.get_text().startswith("unit ")]
        assert len(labels) == len(r.units)
        right = max(t.get_window_extent(renderer).x1 for t in labels) / fig.dpi
        first = min(ax.get_position().x0 for ax in _pictures(fig)) * width
        assert 0 <= first - right <= 0.2, (width, right, first)
        _close(fig)


def test_render_command_takes_max_height(results, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from cnnviz_cli.main import cli

    saved = tmp_path / "gradcam3.npz"
    results["gradcam3"][0].save(saved)
    heights = {}
    for asked in ("page", "none", "7"):
        out = tmp_path / f"g_{asked}.png"
        res = CliRunner().invoke(cli, ["render", str(saved), "-o", str(out), "--max-height", asked])
        assert res.exit_code == 0, res.output
        heights[asked] = Image.open(out).size[1] / 200  # saved at 200 dpi
    assert heights["none"] > PAGE_HEIGHT >= heights["page"] and heights["7"] <= 7.01
    out = tmp_path / "bad.png"
    res = CliRunner().invoke(cli, ["render", str(saved), "-o", str(out), "--max-height", "0"])
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and "--max-height" in lines[0] and not out.exists(), res.output
