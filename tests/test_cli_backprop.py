"""The backprop commands of `cnnviz` end to end (click's CliRunner on `cnnviz_cli.main.cli`):
saliency, guided, deconv, smoothgrad, gradcam, ig, compare, sanity, and `render` of their results.

Good input: a figure that opens, a result (npz + JSON sidecar) holding one map per image of the
batch, the method and the model's identity. Bad input: one `Error: ...` line on stderr, no
traceback, a non-zero exit, nothing written to the output directory.

The photos are the bundled `assets/` (no ImageNet sample needed); EfficientNet-Lite0 is loaded
once per module and handed to the CLI in place of its own loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnviz
import cnnviz_cli.main as climain
from cnnviz_cli.main import cli

from helpers import ASSETS, assert_empty, one_line_error

ROCKET = ASSETS / "rocket.jpg"  # EfficientNet-Lite0: missile (657), 34 %
COFFEE = ASSETS / "coffee.jpg"  # espresso
MISSILE, SPACE_SHUTTLE = 657, 812
METHODS = ["saliency", "guided", "deconv", "smoothgrad", "gradcam", "ig"]
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}; stderr: {res.stderr!r}; exception: {res.exception!r}"
    return res








def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------------
# Each method end to end, two images in one call

# the default 25 noisy copies and 50 IG steps would take a while (2 x 50 IG steps: 40 s on 2 busy cores); the
# defaults are the engine's (test_cli_many.py checks the help against it) and the option reaches the engine (below)
FAST = {"smoothgrad": ["--samples", "4"], "ig": ["--steps", "8"]}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "ig" else m for m in METHODS])
def test_method_on_two_images_writes_a_figure_and_a_result(method, out, cached_model, lite0):
    res = ok(invoke(method, ROCKET, COFFEE, *FAST.get(method, []), "--out", out / "f.png", "--save", out / "r.npz"))
    assert names(out) == ["f.png", "r.json", "r.npz"]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith(f"{ROCKET}: {method} for ") and lines[1].startswith(f"{COFFEE}: {method} for ")
    assert lines[-1] == f"wrote {out / 'f.png'} and {out / 'r.npz'} (+ r.json)"

    assert (out / "f.png").read_bytes().startswith(PNG)
    with Image.open(out / "f.png") as im:
        im.verify()
    with Image.open(out / "f.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300

    a = load_npz(out / "r.npz")
    assert a["image"].dtype == np.uint8 and a["image"].shape == (2, 224, 224, 3)
    assert np.array_equal(a["image"][0], lite0.prepare(ROCKET)[0])
    assert np.array_equal(a["image"][1], lite0.prepare(COFFEE)[0])
    assert a["map"].shape == (2, 224, 224) and np.isfinite(a["map"]).all()
    channels = 1 if method == "gradcam" else 3
    assert a["attribution"].shape == (2, channels, 224, 224) and np.isfinite(a["attribution"]).all()
    assert a["targets"].shape == (2,)
    assert np.array_equal(a["targets"], a["top1"])  # no --target: each image's own top-1
    assert a["targets"][0] == MISSILE and a["targets"][1] != MISSILE
    for i in range(2):
        assert np.abs(a["map"][i]).max() > 0, f"image {i}: the map is all zero"
    if method != "ig":
        assert a["map"].min() >= 0

    meta = json.loads((out / "r.json").read_text())
    assert meta["kind"] == "gradients"
    p = meta["params"]
    assert p["method"] == ("saliency" if method == "smoothgrad" else method)
    assert p["smooth"] == (4 if method == "smoothgrad" else 0)
    if method == "ig":
        assert p["ig_steps"] == 8
    assert p["image_files"] == [str(ROCKET), str(COFFEE)]
    assert p["target_given"] is False
    if method == "gradcam":
        assert isinstance(p["layer"], str) and p["layer"]
    prov = meta["provenance"]
    assert prov["model"] == "efficientnet_lite0"
    assert "efficientnet-lite0" in prov["weights"]
    assert prov["cnnviz_version"] == cnnviz.__version__


def test_saved_result_renders_to_pdf_without_the_model(out, tmp_path, cached_model, monkeypatch):
    ok(invoke("guided", ROCKET, COFFEE, "--out", out / "f.png", "--save", out / "r.npz"))

    def forbidden(*a, **k):
        raise AssertionError("render loaded a model")

    monkeypatch.setattr(climain, "_load", forbidden)
    monkeypatch.setattr(cnnviz.models, "load_model", forbidden)
    again = tmp_path / "again"
    again.mkdir()
    res = ok(invoke("render", out / "r.npz", "--out", again / "f.pdf"))
    assert res.stdout.strip() == f"wrote {again / 'f.pdf'}"
    data = (again / "f.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 5000
    assert names(again) == ["f.pdf"]


def test_target_by_name(out, cached_model):
    res = ok(invoke("saliency", ROCKET, "--target", "space shuttle", "--out", out / "f.png", "--save", out / "r.npz"))
    assert f"{ROCKET}: saliency for space shuttle" in res.stdout
    a = load_npz(out / "r.npz")
    assert a["targets"].tolist() == [SPACE_SHUTTLE] and a["top1"].tolist() == [MISSILE]
    assert a["target_names"].tolist() == ["space shuttle"]
    assert json.loads((out / "r.json").read_text())["params"]["target_given"] is True


@pytest.mark.parametrize("images", [[ROCKET], [ROCKET, COFFEE]], ids=["one-image", "two-images"])
def test_deconv_projects_a_unit_of_a_layer(images, out, cached_model):
    res = ok(invoke("deconv", *images, "--layer", "_blocks.10", "--unit", "5:max",
                    "--out", out / "f.png", "--save", out / "r.npz"))
    assert f"{ROCKET}: deconv for channel 5 max" in res.stdout
    meta = json.loads((out / "r.json").read_text())
    p = meta["params"]
    assert p["method"] == "deconv" and p["rule"] == "deconv"
    assert p["layer"] == "_blocks.10"
    assert p["unit"] == "channel 5 max"
    a = load_npz(out / "r.npz")
    n = len(images)
    assert a["map"].shape == (n, 224, 224) and a["attribution"].shape == (n, 3, 224, 224)
    assert a["targets"].tolist() == [-1] * n  # a unit, not a class
    assert a["target_names"].tolist() == ["channel 5 max"] * n
    assert (out / "f.png").read_bytes().startswith(PNG)


def test_compare_writes_a_figure(out, cached_model):
    res = ok(invoke("compare", ROCKET, "--methods", "saliency,guided,gradcam",
                    "--out", out / "c.png"))
    assert res.stdout.strip() == f"wrote {out / 'c.png'}"
    assert names(out) == ["c.png"]
    with Image.open(out / "c.png") as im:
        w, h = im.size
    assert w > 2 * h  # the input and three methods side by side


@pytest.mark.slow  # 4 s alone on 2 cores, over 20 s when they are busy
def test_sanity_prints_the_table_and_writes_a_figure(out, cached_model):
    res = ok(invoke("sanity", ROCKET, "--steps", "2", "--methods", "saliency", "--out", out / "s.png",
                    "--save", out / "s.npz"))
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["randomized", "down", "to"] and lines[0].split()[-1] == "saliency"
    rows = [ln.split() for ln in lines[1:lines.index("")]]  # the class-randomization table follows
    assert len(rows) == 3  # the original and two cumulative steps
    assert rows[0] == ["original", "1.000"]
    rho = [float(r[-1]) for r in rows[1:]]
    assert all(-1.0 <= v < 0.99 for v in rho), rho  # randomizing the weights changes the saliency map
    assert rows[-1][0].startswith("stem")  # the last step reaches the bottom layer (_conv_stem, named by place)
    assert lines[-1] == f"wrote {out / 's.png'} and {out / 's.npz'} (+ s.json)"
    assert names(out) == ["s.json", "s.npz", "s.png"]
    assert (out / "s.png").read_bytes().startswith(PNG)
    r = cnnviz.load_result(out / "s.npz")
    assert r.spearman.shape == (1, 3) and r.maps.shape == (1, 3, 224, 224)
    assert r.params["target"] == MISSILE


# ------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written

def run_bad(out: Path, *args) -> object:
    """A run that writes a figure and a result into `out` if it gets that far."""
    return invoke(*args, "--out", out / "f.png", *(["--save", out / "r.npz"] if args[0] != "compare" else []))


@pytest.mark.parametrize("command", ["compare", "sanity"])
def test_unknown_method_in_methods(command, out, cached_model):
    one_line_error(run_bad(out, command, ROCKET, "--methods", "saliency,nosuch"), "--methods", "'nosuch'",
                   "guided_gradcam")
    assert_empty(out)


@pytest.mark.parametrize("unit,fragments", [
    ("abc", ["'abc'", "CHANNEL:max"]),
    ("99999:max", ["channel 99999", "_blocks.10", "0..111"]),
    ("3:1000,1000", ["(1000, 1000)", "outside", "_blocks.10", "112x14x14"]),
], ids=["not-a-unit", "channel-out-of-range", "position-outside"])
def test_bad_unit(unit, fragments, out, cached_model):
    one_line_error(run_bad(out, "deconv", ROCKET, "--layer", "_blocks.10", "--unit", unit), *fragments)
    assert_empty(out)


def test_unit_with_gradcam_is_refused(out, cached_model):
    one_line_error(run_bad(out, "gradcam", ROCKET, "--unit", "3"), "--unit", "gradcam")
    assert_empty(out)


def test_unknown_layer_for_gradcam(out, cached_model):
    one_line_error(run_bad(out, "gradcam", ROCKET, "--layer", "nosuchlayer"), "'nosuchlayer'", "cnnviz layers")
    assert_empty(out)


def test_misspelt_layer_for_gradcam_lists_the_closest_names(out, cached_model):
    one_line_error(run_bad(out, "gradcam", ROCKET, "--layer", "_conv_hed"), "'_conv_hed'", "closest", "_conv_head")
    assert_empty(out)


@pytest.mark.parametrize("command", ["saliency", "sanity"])
def test_bad_image_file_is_rejected_before_the_model_loads(command, tmp_path, out, monkeypatch):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file, not a JPEG\n" * 20)
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("the model was loaded before the image was checked"))
    args = [command, bad] if command == "sanity" else [command, ROCKET, bad]
    res = run_bad(out, *args)
    assert res.exit_code == climain.EXIT_USER_ERROR
    one_line_error(res, "notes.jpg", "not an image")
    assert_empty(out)


@pytest.mark.parametrize("which", ["--out", "--save"])
def test_missing_output_directory_is_rejected_before_the_model_loads(which, tmp_path, out, monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("the model was loaded before the output check"))
    missing = tmp_path / "no" / "such"
    target = missing / ("f.png" if which == "--out" else "r.npz")
    res = invoke("saliency", ROCKET, "--out", out / "f.png", "--save", out / "r.npz", which, target)
    one_line_error(res, str(missing), "does not exist")
    assert not (tmp_path / "no").exists()
    assert_empty(out)


def test_unknown_class_name(out, cached_model):
    one_line_error(run_bad(out, "guided", ROCKET, "--target", "goldfsh"), "'goldfsh'", "'goldfish'")
    assert_empty(out)


def test_noise_outside_zero_one(out, cached_model):
    one_line_error(run_bad(out, "smoothgrad", ROCKET, "--samples", "2", "--noise", "2"), "noise", "between 0 and 1")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Options a method does not use are errors, before the model loads; names are checked

@pytest.mark.parametrize("command", ["saliency", "guided"])
def test_layer_without_unit_is_refused_before_the_model_loads(command, out, monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    one_line_error(run_bad(out, command, ROCKET, "--layer", "nosuch"), "--layer 'nosuch'", "--unit")
    assert_empty(out)


@pytest.mark.parametrize("command", ["saliency", "guided", "deconv"])
def test_unknown_layer_with_a_unit_is_named(command, out, cached_model):
    one_line_error(run_bad(out, command, ROCKET, "--layer", "nosuch", "--unit", "3"), "'nosuch'", "cnnviz layers")
    assert_empty(out)


@pytest.mark.parametrize("args, fragments", [
    (["gradcam", "--unit", "3"], ["gradcam", "--unit"]),
    (["gradcam", "--samples", "3"], ["gradcam", "--samples"]),
    (["gradcam", "--seed", "3"], ["gradcam", "--seed"]),
    (["ig", "--layer", "_blocks.10"], ["ig", "--layer"]),
    (["ig", "--unit", "3"], ["ig", "--unit"]),
    (["ig", "--smooth", "mean"], ["ig", "--smooth"]),
    (["saliency", "--noise", "0.2"], ["--noise", "--samples"]),
    (["guided", "--seed", "3"], ["--seed", "--samples"]),
    (["deconv", "--smooth", "mean-abs"], ["--smooth", "--samples"]),
    (["ig", "--noise", "0.1"], ["--noise", "--samples"]),
    (["saliency", "--samples", "0"], ["--samples", "0"]),
    (["smoothgrad", "--samples", "0"], ["--samples", "0"]),
    (["smoothgrad", "--smooth", "median"], ["--smooth", "median"]),
    (["deconv", "--layer", "_blocks.10", "--unit", "3", "--target", "5"], ["--target", "--unit"]),
    (["compare", "--methods", "saliency,guided", "--layer", "_blocks.10"], ["--layer", "gradcam"]),
    (["compare", "--methods", "saliency,saliency"], ["--methods", "saliency", "twice"]),
])
def test_an_option_the_method_does_not_use_is_refused_before_the_model_loads(args, fragments, out, monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    one_line_error(run_bad(out, args[0], ROCKET, *args[1:]), *fragments)
    assert_empty(out)


def test_smoothgrad_help_states_the_default_that_runs():
    text = " ".join(ok(invoke("smoothgrad", "--help")).stdout.split())
    samples = text.split("--samples ", 1)[1].split(" --noise", 1)[0]
    assert "[default: 25; 1<=x<=10000]" in samples, samples
    assert "(0: off)" not in text


@pytest.mark.slow
def test_smoothgrad_runs_25_copies_by_default_and_states_its_mode(out, cached_model):
    ok(invoke("smoothgrad", ROCKET, "--out", out / "f.png", "--save", out / "r.npz"))
    r = cnnviz.load_result(out / "r.npz")
    assert r.params["smooth"] == 25 and r.params["smooth_mode"] == "mean"
    assert r.params["noise"] == 0.15 and r.params["seed"] == 0


def _help_options(command: str) -> set[str]:
    """The long option names `cnnviz COMMAND --help` lists."""
    import re

    text = ok(invoke(command, "--help")).stdout
    section = text.split("Options:", 1)[1]
    return {m for m in re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", section, flags=re.M)} - {"--help"}


def _valid_runs(command: str, tmp: Path, checkpoint: Path, labels: Path) -> list[list[str]]:
    """Valid combinations of `command`'s options that together use every option it lists."""
    model = ["--model", "resnet18", "--weights", "none"]
    own = ["--model", "resnet18", "--weights-file", checkpoint, "--labels", labels, "--trust-checkpoint"]
    common = ["--target", "11", "--shared-scale", "--full-image", "--device", "cpu", "--save", tmp / "r.npz",
              "--width", "3.5", "--layout", "grid", "--max-height", "8"]
    smooth = ["--samples", "2", "--noise", "0.1", "--seed", "3"]
    batch = ["--batch-size", "2"]
    runs = {
        "saliency": [common + smooth + batch + ["--smooth", "mean-abs"], ["--layer", "_blocks.10", "--unit", "3:map"]],
        "guided": [common + smooth + batch + ["--smooth", "mean"], ["--layer", "_blocks.10", "--unit", "3"]],
        "deconv": [common + smooth + batch + ["--smooth", "mean-abs"], ["--layer", "_blocks.10", "--unit", "3:2,2"]],
        "smoothgrad": [common + smooth + batch + ["--smooth", "mean-abs"], ["--layer", "_blocks.10", "--unit", "3"]],
        "gradcam": [common + batch + ["--layer", "_blocks.15"]],
        "ig": [common + smooth + ["--steps", "3", "--baseline", "blur", "--internal-batch", "2"]],
    }[command]
    runs = runs + [["--out-dir", tmp / "figures"]]
    runs = runs + [model, own]
    if command == "ig":  # its 50 default steps would take a while
        runs = [r if "--steps" in r else r + ["--steps", "2"] for r in runs]
    return [r + ["--samples", "2"] if command == "smoothgrad" and "--samples" not in r else r for r in runs]


@pytest.mark.slow
@pytest.mark.parametrize("command", METHODS)
def test_every_option_in_the_help_is_accepted_in_a_valid_combination(command, tmp_path, cached_model, monkeypatch):
    import torch
    import torchvision

    checkpoint, labels = tmp_path / "resnet18.pt", tmp_path / "labels.txt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    runs = _valid_runs(command, tmp_path, checkpoint, labels)
    used = {a for run in runs for a in run if isinstance(a, str) and a.startswith("--")}
    assert used | {"--out"} == _help_options(command), "the runs below must cover the options --help lists"
    for run in runs:
        if "--samples" not in run and command == "smoothgrad":
            run = run + ["--samples", "2"]
        if "--out-dir" in run:
            ok(invoke(command, ROCKET, COFFEE, *run))
            assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [f"coffee_{command}.png",
                                                                                f"rocket_{command}.png"]
            continue
        ok(invoke(command, ROCKET, *run, "--out", tmp_path / "f.png"))
        assert (tmp_path / "f.png").read_bytes().startswith(PNG)


def test_deconv_on_lite0_says_its_map_is_uninformative(out, cached_model):
    res = ok(invoke("deconv", ROCKET, "--out", out / "f.png", "--save", out / "r.npz"))
    notes = [ln for ln in res.stdout.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "does not depend on the image" in notes[0] and "max-pool" in notes[0], res.stdout
    assert cnnviz.load_result(out / "r.npz").params["uninformative"] is True
    res = ok(invoke("guided", ROCKET, "--out", out / "g.png"))
    assert "note:" not in res.stdout


@pytest.mark.slow
def test_sanity_prints_the_class_randomization_table(out, cached_model):
    res = ok(invoke("sanity", ROCKET, "--steps", "1", "--methods", "guided,gradcam", "--classes", "2",
                    "--out", out / "s.png", "--save", out / "s.npz"))
    lines = res.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("class randomization"))
    assert "'missile'" in lines[start]
    rows = lines[start + 2:start + 4]
    r = cnnviz.load_result(out / "s.npz")
    assert r.class_spearman.shape == r.class_pearson.shape == (2, 2)
    for k, row in enumerate(rows):
        assert row.startswith(f"{r.class_names[k]} ({r.class_targets[k]})")
        cells = row.split()[-2:]
        for i, cell in enumerate(cells):
            rho, pr = (float(v) for v in cell.split("/"))
            assert rho == pytest.approx(float(r.class_spearman[i, k]), abs=1e-3)
            assert pr == pytest.approx(float(r.class_pearson[i, k]), abs=1e-3)
