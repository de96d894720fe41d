"""Empirical receptive field (Zhou et al. 2015) on efficientnet_lite0 with real images: occluding
outside the theoretical RF never changes the unit (exactly, up to float error), the measured size
is positive and at most the theoretical one, the averaged aligned map peaks near the unit's RF
centre, the crop shortcut gives the full-image answer, and `cnnviz rf --layer` works end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import SAMPLE

IMAGES = SAMPLE / "images"
LAYER = "_blocks.2"  # RF 19 px, stride 4

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason="ImageNet sample images not present")


def _files(n=3):
    return sorted(IMAGES.glob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def lm():
    from cnnviz.models import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def full(lm):
    """Full-image occlusion (no crop): 2 top images of 3, occluder 3 px at stride 3, and a ring of
    3 px of occluder positions that do not touch the RF."""
    from cnnviz.engines.receptive_field.empirical import empirical_receptive_field

    return empirical_receptive_field(lm, LAYER, None, _files(3), occluder=3, stride=3, margin=3, max_images=2,
                                     crop=False, device="cpu")


def test_zero_outside_theoretical_rf(full):
    e = full
    k = e.occluder
    assert e.theoretical.rf == (19, 19) and e.cropped == 0
    assert len(e.units) == 2 and e.maps.shape[0] == 2
    outside_count = 0
    for n, (i, j) in enumerate(e.units):
        (r0, r1), (c0, c1) = e.theoretical.interval(i, j)
        cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
        tops = cy + e.offsets_y - k // 2
        lefts = cx + e.offsets_x - k // 2
        hit_y = (tops + k - 1 >= r0) & (tops <= r1)
        hit_x = (lefts + k - 1 >= c0) & (lefts <= c1)
        touches = hit_y[:, None] & hit_x[None, :]
        d = e.maps[n]
        scale = max(1.0, abs(float(e.activations[n])))
        outside = d[~touches & ~np.isnan(d)]
        outside_count += outside.size
        assert outside.size > 0 and np.abs(outside).max() <= 1e-5 * scale, np.abs(outside).max()
        assert np.nanmax(d[touches]) > 1e-3 * scale  # the unit does react inside
    assert outside_count >= 2 * 32  # the whole ring of positions around the RF


def test_size_and_alignment(full):
    e = full
    r = e.theoretical.rf
    assert 0 < e.size[0] <= r[0] and 0 < e.size[1] <= r[1]
    assert 0 < np.nanmax(e.map) <= 1.0 + 1e-6
    (y0, y1), (x0, x1) = e.bounds
    assert y1 - y0 + 1 == e.size[0] and x1 - x0 + 1 == e.size[1]
    t, u = np.unravel_index(np.nanargmax(e.map), e.map.shape)
    # the peak lies near the unit's RF centre (within a quarter of the RF)
    assert abs(e.offsets_y[t]) <= r[0] / 4 and abs(e.offsets_x[u]) <= r[1] / 4
    assert e.offsets_y[len(e.offsets_y) // 2] == 0 and e.offsets_x[len(e.offsets_x) // 2] == 0


def test_crop_matches_full_image(lm, full):
    from cnnviz.engines.receptive_field.empirical import empirical_receptive_field

    e = empirical_receptive_field(lm, LAYER, full.channel, _files(3), occluder=3, stride=3, margin=3, max_images=2,
                                  crop=True, device="cpu")
    assert e.cropped == 2 and e.units == full.units
    np.testing.assert_allclose(np.nan_to_num(e.maps), np.nan_to_num(full.maps), atol=1e-4, rtol=0)
    assert e.size == full.size


def test_figure_empirical_only(full, tmp_path):
    from cnnviz.render.receptive_field.compare import compare_figure
    from cnnviz.render.style import plt

    fig = compare_figure(full.theoretical, None, full)
    assert len(fig.axes) == 3  # map, its colorbar, profiles
    fig.savefig(tmp_path / "e.png")
    plt.close(fig)
    with pytest.raises(ValueError):
        compare_figure(full.theoretical, None, None)


def test_bad_arguments(lm):
    from cnnviz.engines.receptive_field.empirical import empirical_receptive_field
    from cnnviz.errors import CnnvizError

    f = _files(1)
    for kw in (dict(occluder=0), dict(stride=-1), dict(threshold=1.5), dict(occluder=500)):
        with pytest.raises(CnnvizError):
            empirical_receptive_field(lm, LAYER, 0, f, device="cpu", **kw)
    with pytest.raises(CnnvizError, match="out of range"):
        empirical_receptive_field(lm, LAYER, 24, f, device="cpu")
    with pytest.raises(CnnvizError, match="unknown layer"):
        empirical_receptive_field(lm, "_blocks.99", 0, f, device="cpu")


# --------------------------------------------------------------------------------------------------
# the command

def _cli():
    from cnnviz_cli.main import cli

    return cli


def test_cli_layer_both(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for f in _files(3):
        shutil.copy(f, d)
    fig = tmp_path / "f.png"
    res = CliRunner().invoke(_cli(), ["rf", "--layer", LAYER, "--images", str(d), "--measure", "both",
                                      "--stride", "3", "--max-images", "2", "--device", "cpu", "--out", str(fig)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "theoretical RF: 19x19 px" in out and "effective RF" in out and "empirical RF" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("empirical RF"))
    h, w = (int(v) for v in line.split("): ")[1].split(" px")[0].split("x"))
    assert 0 < h <= 19 and 0 < w <= 19
    assert fig.stat().st_size > 20000


@pytest.mark.parametrize("args, words", [
    (["--layer", LAYER], "needs --images"),
    (["--images", "x"], "go with --layer"),
    (["--layer", LAYER, "--images", "/nonexistent/dir"], "not found"),
    (["--layer", LAYER, "--images", str(IMAGES), "--measure", "gradient"], "gradient"),
    (["--layer", LAYER, "--images", str(IMAGES), "--max-images", "0"], "positive"),
    (["--layer", LAYER, "--images", str(IMAGES), "--out", "f.txt"], "extension"),
])
def test_cli_errors_one_line(args, words):
    res = CliRunner().invoke(_cli(), ["rf", *args])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], res.output


def test_cli_bad_channel_and_layer(tmp_path):
    f = str(_files(1)[0])
    res = CliRunner().invoke(_cli(), ["rf", "--layer", LAYER, "--images", f, "--channel", "99", "--device", "cpu"])
    assert res.exit_code == 1 and "out of range" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(_cli(), ["rf", "--layer", "_blocks.99", "--images", f, "--device", "cpu"])
    assert res.exit_code == 1 and "unknown layer" in res.output and len(res.output.strip().splitlines()) == 1
