"""The feature visualization commands end to end (click's CliRunner on `cnnviz_cli.main.cli`):
`featvis`, `classviz`, `dream`, `invert`, and `render` of their results.

Good input: one tiny real run per command (a few steps at 64 px) writing a figure and a result
(npz + JSON sidecar) that loads back with the parameters given on the command line. Bad input: one
`Error: ...` line on stderr, no traceback, a non-zero exit, nothing written, and rejected before
the optimization starts. EfficientNet-Lite0 is loaded once per module and handed to the CLI in
place of its own loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnviz
from cnnviz.results import FeatvisResult, load_result
from cnnviz_cli.main import cli

from helpers import ASSETS, assert_empty, one_line_error

ROCKET = ASSETS / "rocket.jpg"
CAT = ASSETS / "cat.jpg"
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".svg": b"<?xml"}


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}; stderr: {res.stderr!r}; exception: {res.exception!r}"
    assert res.stderr == ""
    return res


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    """An empty folder, also the working directory (where default output names land)."""
    d = tmp_path / "out"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def no_optimization(monkeypatch):
    """Any forward pass of an objective fails the test with an internal error line: bad values
    must be rejected before the optimization starts."""
    import cnnviz.engines.featvis as fv

    def boom(*a, **k):
        raise RuntimeError("the optimization started before the bad value was rejected")

    monkeypatch.setattr(fv._Runner, "__call__", boom)


def check_files(out: Path, fig: str, save: str, res) -> FeatvisResult:
    stem = Path(save).stem
    assert names(out) == sorted([fig, f"{stem}.json", f"{stem}.npz"])
    assert (out / fig).read_bytes().startswith(MAGIC[Path(fig).suffix])
    assert res.stdout.strip().splitlines()[-1] == f"wrote {fig} and {save} (+ {stem}.json)"
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["kind"] == "featvis" and meta["provenance"]["model"] == "efficientnet_lite0"
    result = load_result(out / save)
    assert isinstance(result, FeatvisResult)
    assert result.images.dtype == np.uint8 and result.images.ndim == 4
    return result


# ------------------------------------------------------------------------------------------------
# One real run per command

def test_featvis_units(out, cached_model):
    res = ok(invoke("featvis", "--layer", "_blocks.4", "--units", "0:2", "--steps", "3", "--size", "64",
                    "--priors", "none", "--lr", "0.1", "--seed", "3", "--history", "--quiet", "--batch-size", "1",
                    "-o", "units.png", "--save", "units.npz"))
    r = check_files(out, "units.png", "units.npz", res)
    p = r.params
    assert p["mode"] == "units" and p["layer"] == "_blocks.4" and p["units"] == [0, 1]
    assert p["steps"] == 3 and p["size"] == [64, 64] and p["priors"] == "none" and p["param"] == "pixel"
    assert p["lr"] == 0.1 and p["seed"] == 3 and p["transforms"] == "none" and p["unit_kind"] == "channel"
    assert p["batch_size"] == 1 and p["seeds"] == [3, 4]
    assert r.images.shape == (2, 64, 64, 3) and list(r.labels) == ["unit 0", "unit 1"]
    assert res.stdout.startswith("block 4, units 0-1: mean activation ")
    with Image.open(out / "units.png") as im:  # two 64 px panels enlarged x3, the objective plot below
        assert im.size[0] >= 2 * 192 and im.size[1] >= 192 + 300


def test_classviz_names_indices_and_commas(out, cached_model):
    res = ok(invoke("classviz", "-t", "goldfinch,1", "--steps", "2", "--size", "64", "--prob", "--transforms",
                    "jitter=4", "-q", "-o", "classes.pdf", "--save", "classes.npz"))
    r = check_files(out, "classes.pdf", "classes.npz", res)
    p = r.params
    assert p["mode"] == "class" and p["classes"] == [11, 1] and p["objective_kind"] == "prob"
    assert p["transforms"] == "pad=0,jitter=4,scale=1-1,rotate=0" and p["steps"] == 2
    assert list(r.labels) == ["goldfinch", "goldfish"]
    assert r.score.shape == (2,) and ((r.score >= 0) & (r.score <= 1)).all()
    assert "goldfinch (11) p=" in res.stdout and "goldfish (1) p=" in res.stdout


def test_dream_default_output_name(out, cached_model):
    res = ok(invoke("dream", ROCKET, "--layer", "_blocks.4", "--octaves", "2", "--steps", "2", "--size", "64",
                    "--jitter", "8", "--seed", "1", "-q", "--save", "dream.npz"))
    r = check_files(out, "rocket_dream.png", "dream.npz", res)
    p = r.params
    assert p["mode"] == "dream" and p["layer"] == "_blocks.4" and p["octaves"] == 2 and p["steps"] == 2
    assert p["jitter"] == 8 and p["seed"] == 1 and p["image_file"] == str(ROCKET)
    assert min(r.images.shape[1:3]) == 64 and r.start.shape == r.images[0].shape
    assert r.history.shape == (5, 1) and list(r.history_steps) == [0, 1, 2, 3, 4]  # 2 x 2 steps and the final image
    assert res.stdout.startswith("dream at block 4: mean squared activation ")


def test_invert_layers_repeated_and_comma_separated(out, cached_model):
    res = ok(invoke("invert", CAT, "-l", "_blocks.0", "--layer", "_blocks.1,_blocks.2", "--steps", "2", "--tv", "0.25",
                    "--history", "-q", "-o", "inv.svg", "--save", "inv.npz"))
    r = check_files(out, "inv.svg", "inv.npz", res)
    p = r.params
    assert p["mode"] == "invert" and p["layers"] == ["_blocks.0", "_blocks.1", "_blocks.2"]
    assert p["steps"] == 2 and p["tv"] == 0.25 and p["priors"] == "full" and p["image_file"] == str(CAT)
    assert r.images.shape == (3, 224, 224, 3) and r.start.shape == (224, 224, 3)
    assert res.stdout.startswith("relative feature distance: _blocks.0 ")

    ok(invoke("render", "inv.npz", "-o", "again.png"))  # redrawn without the model
    assert (out / "again.png").read_bytes().startswith(MAGIC[".png"])


# ------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written, before any optimization

FV = ["featvis", "--layer", "_blocks.4", "--steps", "2", "--size", "64", "-q"]
BAD = {
    "unknown layer": (["featvis", "--layer", "_blocks.99", "--size", "64", "-q"],
                      ["unknown layer '_blocks.99'", "_blocks.9"]),
    "units out of range": (FV + ["--units", "0:5000"], ["unit 40 is out of range", "0..39"]),
    "bad units text": (FV + ["--units", "a:b"], ["bad units 'a:b'"]),
    "empty units range": (FV + ["--units", "5:2"], ["empty unit range"]),
    "bad transforms": (FV + ["--transforms", "pad=x"], ["bad transforms 'pad=x'"]),
    "transforms key": (FV + ["--transforms", "shear=3"], ["bad transforms"]),
    "no layer": (["featvis", "-q"], ["--layer is required", "cnnviz layers"]),
    "zero steps": (["featvis", "--layer", "_blocks.4", "--steps", "0"], ["--steps", "0"]),
    "negative steps": (["featvis", "--layer", "_blocks.4", "--steps", "-3"], ["--steps", "-3"]),
    "tiny size": (FV + ["--size", "8"], ["--size", "8"]),
    "zero lr": (FV + ["--lr", "0"], ["--lr 0 must be positive"]),
    "zero batch size": (FV + ["--batch-size", "0"], ["--batch-size", "0"]),
    "fourier with l2 decay": (FV + ["--param", "fourier", "--l2-decay", "0.01"], ["plain pixels", "--param pixel"]),
    "full priors with blur": (FV + ["--blur-every", "4"], ["plain pixels", "--param pixel"]),
    "bad l2 decay": (FV + ["--param", "pixel", "--l2-decay", "1.5"], ["l2_decay 1.5"]),
    "bad suffix": (FV + ["-o", "fig.bmp"], ["fig.bmp", ".png"]),
    "missing directory": (FV + ["-o", "missing/fig.png"], ["'missing' does not exist"]),
    "bad save suffix": (FV + ["--save", "result.txt"], ["result.txt", ".npz"]),
    "unknown class": (["classviz", "-t", "goldfnch", "--size", "64", "-q"],
                      ["unknown class 'goldfnch'", "'goldfinch'"]),
    "class index out of range": (["classviz", "-t", "1000", "--size", "64", "-q"],
                                 ["class index 1000 is out of range"]),
    "no target": (["classviz", "-q"], ["--target is required"]),
    "dream missing image": (["dream", "missing.jpg", "-l", "_blocks.4", "-q"], ["image not found", "missing.jpg"]),
    "dream no layer": (["dream", ROCKET, "-q"], ["--layer is required", "cnnviz layers"]),
    "dream unknown layer": (["dream", ROCKET, "-l", "_blocks.4x", "--size", "64", "-q"],
                            ["unknown layer '_blocks.4x'"]),
    "dream octave scale": (["dream", ROCKET, "-l", "_blocks.4", "--octave-scale", "1"],
                           ["--octave-scale 1 must be larger"]),
    "dream zero octaves": (["dream", ROCKET, "-l", "_blocks.4", "--octaves", "0"], ["--octaves"]),
    "dream bad suffix": (["dream", ROCKET, "-l", "_blocks.4", "-o", "d.jpg"], ["d.jpg", ".png"]),
    "invert unreadable image": (["invert", "notes.jpg", "-l", "_blocks.1", "-q"], ["not an image"]),
    "invert unknown layer": (["invert", CAT, "-l", "_blocks.1,_blockz.2", "-q"], ["unknown layer '_blockz.2'"]),
    "invert no layer": (["invert", CAT, "-q"], ["--layer is required"]),
    "invert zero steps": (["invert", CAT, "-l", "_blocks.1", "--steps", "0"], ["--steps"]),
    "invert beta": (["invert", CAT, "-l", "_blocks.1", "--beta", "0"], ["--beta 0 must be positive"]),
    "invert negative tv": (["invert", CAT, "-l", "_blocks.1", "--tv", "-1"], ["--tv"]),
    "invert missing directory": (["invert", CAT, "-l", "_blocks.1", "--save", "nowhere/r.npz"],
                                 ["'nowhere' does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, out, cached_model, no_optimization):
    args, fragments = BAD[case]
    if case == "invert unreadable image":
        (out / "notes.jpg").write_text("this is a text file, not a JPEG\n" * 20)
    res = invoke(*args)
    one_line_error(res, *fragments)
    assert res.stdout == ""
    if case == "invert unreadable image":
        (out / "notes.jpg").unlink()
    assert_empty(out)


def test_help_lists_the_commands():
    res = ok(invoke("--help"))
    for name in ("featvis", "classviz", "dream", "invert"):
        assert name in res.stdout
    for name, option in (("featvis", "--neuron"), ("classviz", "--prob"), ("dream", "--octave-scale"),
                         ("invert", "--alpha-weight")):
        assert option in ok(invoke(name, "--help")).stdout
