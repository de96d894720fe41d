"""Every figure laid out for the width it is printed at: the width asked for (7 in by default), no
text under 7 pt, nothing outside the figure, no overlapping text; at a one-column 3.5 in too. And
what a figure says: random weights marked, class names rather than indices, readable layer names,
occluder-position shares that do not read as probabilities, shared colour scales that never blank
a panel. Results come from the real engines (EfficientNet-Lite0, a random-weight ResNet-18)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

import cnnviz
from cnnviz.engines.attribution.gradients import attribute
from cnnviz.errors import ParameterError
from cnnviz.render.attribution.gradients import compare_figure, scale_groups
from cnnviz.render.style import DEFAULT_WIDTH, grid_shape
from cnnviz_cli.main import cli
from figure_checks import check, drawn_texts
from helpers import ASSETS

METHODS = ("saliency", "guided", "deconv", "gradcam", "guided_gradcam", "ig")


def _close(fig):
    matplotlib.pyplot.close(fig)


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def grads(lite0):
    return {m: attribute(lite0, ASSETS / "rocket.jpg", m, **({"ig_steps": 4} if m == "ig" else {})) for m in METHODS}


@pytest.fixture(scope="module")
def results(lite0, grads, tmp_path_factory):
    """One result of every kind `Result.render` draws, small."""
    from cnnviz.engines.featvis import deep_dream, visualize_units
    from cnnviz.engines.units.filters import feature_maps, first_layer_filters
    from cnnviz.engines.units.patches import unit_patches
    from cnnviz.engines.receptive_field.theory import receptive_field
    from cnnviz.engines.attribution.sanity import sanity
    from cnnviz.engines.units.topk import scan

    rocket = ASSETS / "rocket.jpg"
    folder = tmp_path_factory.mktemp("photos")
    for name in ("rocket.jpg", "cat.jpg", "coffee.jpg"):
        (folder / name).write_bytes((ASSETS / name).read_bytes())
    found = {}
    scan(lite0, folder, "_blocks.6", units="0:3", k=2, progress=False, finish=lambda r: found.setdefault("r", r))
    two = attribute(lite0, [rocket, ASSETS / "cat.jpg"], "guided")
    return {
        "occlusion": cnnviz.occlusion(lite0, rocket, window=64, stride=40, progress=False),
        "gradients": two,
        "gradcam": grads["gradcam"],
        "sanity": sanity(lite0, rocket, methods=("saliency", "gradcam"), steps=2, classes=1),
        "filters": first_layer_filters(lite0),
        "activations": feature_maps(lite0, rocket, top=12),
        "receptive_field": receptive_field(lite0),
        "patches": unit_patches(lite0, found["r"], project=True),
        "featvis": visualize_units(lite0, "_blocks.6", units="0:3", steps=2, size=48, progress=False),
        "dream": deep_dream(lite0, rocket, "_blocks.4", size=64, octaves=1, steps=2),
    }


FULL = ("occlusion", "gradients")


@pytest.mark.parametrize("layout", ["row", "grid"])
@pytest.mark.parametrize("width", [None, 3.5])
@pytest.mark.parametrize("kind", ["occlusion", "gradients", "gradcam", "sanity", "filters", "activations",
                                  "receptive_field", "patches", "featvis", "dream"])
def test_every_figure_is_the_width_asked_with_text_of_7pt_or_more(results, kind, width, layout):
    r = results[kind]
    options = {"layout": layout} if width is None else {"width": width, "layout": layout}
    if kind == "dream":
        options["history"] = True
    fig = r.render(None, **options)
    check(fig, width or DEFAULT_WIDTH)
    _close(fig)
    if kind in FULL:
        fig = r.render(None, full_image=True, **options)
        check(fig, width or DEFAULT_WIDTH)
        _close(fig)


@pytest.mark.parametrize("width", [DEFAULT_WIDTH, 3.5])
@pytest.mark.parametrize("overlay", [False, True])
def test_compare_figure_fits_the_width(grads, width, overlay):
    fig = compare_figure([grads[m] for m in METHODS], shared_scale=True, overlay=overlay, width=width)
    check(fig, width)
    _close(fig)


def test_receptive_field_comparison_fits_the_width(lite0):
    import torch

    from cnnviz.engines.receptive_field.effective import effective_receptive_field
    from cnnviz.engines.receptive_field.theory import receptive_fields
    from cnnviz.render.receptive_field.compare import compare_figure as rf_figure

    theo = {i.address: i for i in receptive_fields(lite0.model, (96, 96))}["_blocks.2"]
    eff = effective_receptive_field(lite0.model, "_blocks.2", torch.randn(2, 3, 96, 96))
    for width in (DEFAULT_WIDTH, 3.5):
        fig = rf_figure(theo, eff, None, width=width)
        check(fig, width)
        _close(fig)


def test_saved_pdf_is_the_width_asked(results, tmp_path):
    import re

    for width in (DEFAULT_WIDTH, 3.5):
        path = tmp_path / f"occ{width}.pdf"
        _close(results["occlusion"].render(path, width=width))
        box = re.search(rb"MediaBox \[\s*([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)", path.read_bytes())
        assert float(box.group(3)) / 72 == pytest.approx(width, abs=0.01)


def test_grid_shape_fills_rows_evenly_and_respects_the_width():
    assert grid_shape(5, 7.0, "row", 1.25) == (1, 5)
    assert grid_shape(5, 7.0, "grid", 1.25) == (2, 3)
    assert grid_shape(5, 3.5, "row", 1.25) == (3, 2)
    assert grid_shape(7, 7.0, "row", 1.25) == (2, 4)  # 4 + 3, not 5 + 2
    with pytest.raises(ParameterError, match="diagonal"):
        grid_shape(3, 7.0, "diagonal")
    for bad in (0, -3, "abc", float("nan"), 1.0):
        with pytest.raises(ParameterError, match="width"):
            grid_shape(3, bad)


# --------------------------------------------------------------------------------------------------
# --shared-scale

def _blank(im) -> bool:
    """A panel is blank when nearly all its pixels get the colour of the scale's zero."""
    values = np.asarray(im.get_array(), dtype=np.float64)
    position = im.norm(values)
    zero = im.norm(0.0)
    return float(np.mean(np.abs(position - zero) < 0.03)) > 0.95


def test_shared_scale_never_blanks_a_panel_and_names_its_groups(grads):
    rs = [grads[m] for m in METHODS]
    fig = compare_figure(rs, shared_scale=True)
    maps = [im for ax in fig.axes for im in ax.images if im.get_gid() == "map"]
    assert len(maps) == len(METHODS)
    assert not [im.axes.get_title() for im in maps if _blank(im)]
    # the same maps on one scale (what --shared-scale drew before): some panels go blank
    top = max(abs(float(np.percentile(np.abs(r.map[0]), 99.5))) for r in rs)
    single = [matplotlib.colors.Normalize(-top if r.params["signed"] else 0.0, top) for r in rs]
    assert sum(float(np.mean(np.abs(n(r.map[0]) - n(0.0)) < 0.03)) > 0.95 for n, r in zip(single, rs)) >= 2
    # saliency and guided backprop (gradients) share a scale; Grad-CAM, IG and the deconvnet do not
    groups = scale_groups(rs)
    assert groups[0] == groups[1]
    assert len({groups[0], groups[2], groups[3], groups[5]}) == 4
    clims = [im.get_clim() for im in maps]
    assert clims[0] == clims[1] and clims[0] != clims[3]
    text = fig._suptitle.get_text().replace("\n", " ")
    assert "scale A = Saliency, Guided backprop" in text and "Grad-CAM alone" in text
    assert "[scale A]" in maps[0].axes.get_title().replace("\n", " ")
    _close(fig)


def test_shared_scale_keeps_one_scale_for_maps_of_one_unit(lite0, grads):
    """Grad-CAM for two classes: one unit, one scale, so that the weaker class looks weaker."""
    other = attribute(lite0, ASSETS / "rocket.jpg", "gradcam", target="espresso")
    rs = [grads["gradcam"], other]
    assert scale_groups(rs) == [0, 0]
    fig = compare_figure(rs, shared_scale=True)
    clims = [im.get_clim() for ax in fig.axes for im in ax.images if im.get_gid() == "map"]
    assert clims[0] == clims[1]
    _close(fig)


# --------------------------------------------------------------------------------------------------
# What the figure says

def _all_text(fig) -> str:
    return " ".join(t.get_text() for t in drawn_texts(fig)).replace("\n", " ")


def test_random_weights_are_marked_in_the_title():
    lm = cnnviz.load_model("resnet18", weights="none")
    r = attribute(lm, ASSETS / "rocket.jpg", "gradcam")
    fig = r.render()
    assert "RANDOM weights" in fig._suptitle.get_text().replace("\n", " ")
    _close(fig)
    occ = cnnviz.occlusion(lm, ASSETS / "rocket.jpg", window=112, stride=112, progress=False)
    fig = occ.render()
    assert "RANDOM weights" in fig._suptitle.get_text().replace("\n", " ")
    _close(fig)


def test_trained_weights_are_not_marked(results):
    fig = results["gradcam"].render()
    assert "RANDOM" not in _all_text(fig)
    _close(fig)


def test_top1_class_is_named_not_numbered(lite0):
    r = attribute(lite0, ASSETS / "rocket.jpg", "gradcam", target="tiger cat")
    top1 = int(r.top1[0])
    assert top1 != int(r.targets[0])
    fig = r.render()
    text = _all_text(fig)
    assert f"'{lite0.class_name(top1)}'" in text and f"class {top1}" not in text
    _close(fig)


def test_layers_get_readable_names(results):
    """(The naming rules themselves: tests/test_layer_names.py.)"""
    fig = results["gradcam"].render()
    assert results["gradcam"].params["layer"] == "_swish@1"
    text = _all_text(fig)
    # Lite0's head activation is a ReLU6 that the model's code calls `_swish`: named by its type and place
    assert "ReLU6 after the last conv" in text and "swish" not in text
    _close(fig)


def test_occlusion_legend_counts_positions_not_probability(results):
    fig = results["occlusion"].render()
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert legend and all("of positions" in t.replace("\n", " ") or "never top" in t for t in legend)
    _close(fig)


def test_a_window_as_large_as_the_input_says_so_in_the_figure(lite0):
    r = cnnviz.occlusion(lite0, ASSETS / "rocket.jpg", window=224, stride=8, progress=False)
    fig = r.render()
    notes = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "one-position-note"]
    assert len(notes) == 3 and "smaller window" in notes[0].get_text().replace("\n", " ")
    check(fig, DEFAULT_WIDTH)
    _close(fig)


# --------------------------------------------------------------------------------------------------
# Command line

@pytest.fixture
def saved(results, tmp_path):
    path = tmp_path / "occ.npz"
    results["occlusion"].save(path)
    return path


@pytest.mark.parametrize("args, says", [(["--width", "0"], "'0' is not positive"),
                                        (["--width", "-3"], "'-3' is not positive"),
                                        (["--width", "abc"], "'abc' is not a number"),
                                        (["--width", "1"], "too narrow"),
                                        (["--layout", "diagonal"], "'diagonal' is not one of 'row', 'grid'")])
def test_bad_width_or_layout_is_one_line_and_writes_nothing(saved, tmp_path, args, says):
    out = tmp_path / "fig.png"
    res = CliRunner().invoke(cli, ["render", str(saved), "-o", str(out), *args])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and says in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()


def test_render_redraws_a_saved_result_at_another_width(saved, tmp_path):
    from PIL import Image

    for width, layout in (("3.5", "grid"), ("7", "row")):
        out = tmp_path / f"occ{width}.png"
        res = CliRunner().invoke(cli, ["render", str(saved), "-o", str(out), "--width", width, "--layout", layout])
        assert res.exit_code == 0, res.output
        assert Image.open(out).size[0] == round(float(width) * 200)  # saved at 200 dpi


def test_every_drawing_command_takes_width_and_layout():
    names = ["occlusion", "saliency", "guided", "deconv", "smoothgrad", "gradcam", "ig", "compare", "sanity",
             "render", "filters", "activations", "topk", "rf", "featvis", "classviz", "dream", "invert", "invariance"]
    for name in names:
        opts = {o for p in cli.commands[name].params for o in p.opts}
        assert {"--width", "--layout"} <= opts, name


def test_occlusion_refuses_a_window_as_large_as_the_input(tmp_path, monkeypatch, lite0):
    import cnnviz_cli.main as climain

    monkeypatch.setattr(climain, "_load", lambda spec, structure_only=False: lite0)
    out = tmp_path / "o.png"
    res = CliRunner().invoke(cli, ["occlusion", str(ASSETS / "rocket.jpg"), "--window", "224", "-o", str(out)])
    assert res.exit_code == 1
    assert "use a smaller --window" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()
