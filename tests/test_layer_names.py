"""Layer names a reader understands (issue 29, item 2): a layer is named by what it is and where
(`cnnviz.layers.readable_name`), never by the name the model's code gave an activation (Lite0's
head ReLU6 is the module `_swish`), never cut in the middle; the address itself stays in the
result's params. Checked on the layers the models really have (their execution order is the
oracle for every "after the ... conv"), on figures drawn from real photos (every text matplotlib
draws) and on the CLI's summary lines."""

from __future__ import annotations

import pytest
import torch
import torchvision
from click.testing import CliRunner

import cnnviz
from cnnviz.render import render
from cnnviz.layers import readable_name, trace_layers
from figure_checks import drawn_texts
from helpers import sample_image

CONVS = ("Conv2d", "Conv2dStaticSamePadding")


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


def _named(model, size=224):
    infos = trace_layers(model.eval(), torch.zeros(1, 3, size, size))
    return infos, [readable_name(i.address, i.type) for i in infos]


def _bad(name: str) -> bool:
    """What a name must never show: the model code's name for an activation, a cut, an address."""
    return "swish" in name.lower() or name.endswith("…") or name.startswith("_") or "._" in name


def test_every_lite0_layer_says_what_and_where_and_each_claim_is_true(lite0):
    infos, names = _named(lite0.model)
    by = dict(zip((i.address for i in infos), names))
    assert by["_swish@1"] == "head, ReLU6 after the last conv"
    assert by["_swish@0"] == "stem, ReLU6 after the first conv"
    assert by["_blocks.10"] == "block 10 (MBConv), output"
    assert by["_blocks.10._depthwise_conv"] == "block 10, depthwise conv"
    assert [n for n in names if _bad(n)] == []
    assert len(set(names)) == len(names), "two layers read the same"
    # every "after the ... conv" is the convolution that really ran last before the activation
    order = sorted(infos, key=lambda i: i.order)
    convs = [i for i in order if i.type in CONVS]
    checked = 0
    for info in order:
        name = by[info.address]
        if info.type != "ReLU6" or " after the " not in name:
            continue
        before = [c for c in convs if c.order < info.order]
        last = before[-1]
        claim = name.split(" after the ")[1]
        if claim == "last conv":
            assert last is convs[-1] and info.order > convs[-1].order
        elif claim == "first conv":
            assert last is convs[0]
        else:  # "expand conv" / "depthwise conv": the block's own module of that name
            block = info.name.rsplit(".", 1)[0]
            assert last.name == f"{block}._{claim.replace(' ', '_')}", (info.address, name, last.address)
        checked += 1
    assert checked == 2 + 16 + 15  # stem, head, every block's depthwise and 15 expand convs


@pytest.mark.parametrize("arch", ["resnet18", "alexnet"])
def test_torchvision_names_read_without_addresses(arch):
    model = getattr(torchvision.models, arch)()
    infos, names = _named(model, 64 if arch == "resnet18" else 224)
    by = dict(zip((i.address for i in infos), names))
    assert [n for n in names if _bad(n) or "." in n] == []
    assert len(set(names)) == len(names)
    if arch == "resnet18":
        assert by["layer4.1.relu@1"].startswith("layer4 block 1, ReLU")
        assert by["layer4.1"] == "layer4 block 1 (BasicBlock), output"
        assert by["conv1"] == "stem conv" and by["relu"] == "stem, ReLU" and by["fc"] == "classifier (fc)"
    else:
        assert by["features.10"] == "features 10, Conv2d" and by["features.11"] == "features 11, ReLU"


def _texts(fig) -> list[str]:
    return [t.get_text() for t in drawn_texts(fig)]


def _assert_readable(fig, result, address):
    texts = _texts(fig)
    assert texts
    assert [t for t in texts if "swish" in t.lower() or "_blocks" in t or "blocks." in t] == []
    assert [t for t in texts if t.rstrip().endswith("…")] == []
    assert result.params["layer"] == address  # the address itself stays with the result


def test_lite0_figures_name_layers_by_what_and_where(lite0):
    import matplotlib.pyplot as plt

    from cnnviz.engines.units.filters import feature_maps
    from cnnviz.engines.attribution.gradients import attribute

    photo = sample_image(4)
    r = attribute(lite0, [photo], "gradcam")  # default layer: the head's ReLU6, `_swish@1`
    fig = render(r)
    _assert_readable(fig, r, "_swish@1")
    assert any("head, ReLU6 after the last conv" in t for t in _texts(fig))
    plt.close(fig)
    r = feature_maps(lite0, photo, layer="_blocks.10", top=4)
    fig = render(r)
    _assert_readable(fig, r, "_blocks.10")
    assert any("block 10 (MBConv), output" in t for t in _texts(fig))
    plt.close(fig)


def test_rf_labels_lite0_by_block_and_cuts_no_name(lite0):
    import matplotlib.pyplot as plt

    from cnnviz.engines.receptive_field import receptive_field

    r = receptive_field(lite0)
    fig = render(r)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[0] == "stem" and ticks[-1] == "head"
    assert [t for t in ticks if t.startswith("block ")] == [f"block {i}" for i in range(16)]
    assert [t for t in _texts(fig) if t.rstrip().endswith("…") or "swish" in t.lower()] == []
    plt.close(fig)


def test_invariance_names_its_default_layers(lite0):
    import matplotlib.pyplot as plt

    from cnnviz.engines.experiments.invariance import invariance

    r = invariance(lite0, [sample_image(0)], transforms="translate", values={"translate": [-10, 0, 10]})
    assert r.params["layers"] == ["_conv_stem", "_dropout"]
    assert r.params["layer_labels"] == ["stem conv", "top features"]
    fig = render(r)
    texts = _texts(fig)
    assert "distance at top features" in texts and "distance at stem conv" in texts
    assert [t for t in texts if t.rstrip().endswith("…") or "_dropout" in t] == []
    plt.close(fig)


def test_cli_summaries_name_layers_by_what_and_where(lite0, cached_model, tmp_path):
    from cnnviz_cli.main import cli

    photo = str(sample_image(4))
    res = CliRunner().invoke(cli, ["activations", photo, "--layer", "_swish@1", "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert "head, ReLU6 after the last conv" in res.output and "swish" not in res.output.lower()
    res = CliRunner().invoke(cli, ["gradcam", photo, "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    assert "swish" not in res.output.lower()


def test_short_labels_are_never_cut_in_a_word():
    """`short` (every renderer's label shortener) keeps whole synonyms or breaks a long name into
    lines at its separators: the lines, joined, are the name (or its leading synonyms)."""
    from cnnviz.render.style import short

    cases = {"_blocks.0._depthwise_conv.static_padding": "_blocks.0._depthwise_conv.static_padding",
             "drilling platform, offshore rig": "drilling platform", "tench, Tinca tinca": "tench",
             "a_very_long_file_name_without_breaks.jpg": "a_very_long_file_name_without_breaks.jpg"}
    for name, kept in cases.items():
        s = short(name, 16)
        assert "…" not in s
        assert s.replace("\n", "").replace(" ", "") == kept.replace(" ", ""), (name, s)
        assert all(line in name for line in s.split("\n"))
