"""Folders and many images through the attribution commands, and the options every command's
--help lists (issue 15, items 2 and 4).

- A folder of ImageNet-sample photos through every attribution command gives one figure per photo
  in --out-dir, named after the photos (12 photos, more than one figure takes; 3 for the commands
  whose figure takes one); equal stems are made unique; too many images for one --out
  figure is a one-line error naming --out-dir; a failed run writes nothing (not even the folder).
- Every option that `cnnviz COMMAND --help` lists is accepted by click with a valid value, for
  every command; the gradient commands are also run with the new options (a random-weight
  ResNet-18: cheap) in tests/test_cli_backprop.py.
- The help's stated defaults are the engine's.

The photos are read from the shared sample (symlinked into a temporary folder, never copied into
the repository); the model is a random-weight ResNet-18 (`--weights none`: no download, fast).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnviz_cli.main as climain
from cnnviz_cli.main import cli

from helpers import ASSETS, SAMPLE, assert_empty, one_line_error, sample_rows

needs_sample = pytest.mark.skipif(not (SAMPLE / "images").is_dir(), reason=f"ImageNet sample not found at {SAMPLE}")
TINY = ["--model", "resnet18", "--weights", "none", "--device", "cpu"]
ROCKET = ASSETS / "rocket.jpg"
# each command at its cheapest
CHEAP = {
    "saliency": [], "guided": [], "deconv": [], "gradcam": [], "smoothgrad": ["--samples", "2"],
    "ig": ["--steps", "2"], "compare": ["--methods", "saliency,gradcam"],
    "occlusion": ["--window", "112", "--stride", "112", "--quiet"],
    "sanity": ["--steps", "1", "--classes", "0", "--methods", "saliency"],
}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}; stderr: {res.stderr!r}; exception: {res.exception!r}"
    return res


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of 12 photos of the shared sample (links, not copies)."""
    if not (SAMPLE / "images").is_dir():
        pytest.skip(f"ImageNet sample not found at {SAMPLE}")
    d = tmp_path_factory.mktemp("photos")
    for row in sample_rows()[:12]:
        (d / row["file"]).symlink_to(SAMPLE / "images" / row["file"])
    return d


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("the model was loaded"))


# ------------------------------------------------------------------------------------------------
# 1. Folders and --out-dir

# the commands whose --out figure shows one image (their folder runs one image at a time: 3 photos are already more
# than one figure takes); the others take up to MAX_FIGURE_IMAGES = 8 in one figure, so their folder has 12
ONE_PER_FIGURE = {"compare": 3, "occlusion": 3, "sanity": 3}


@pytest.mark.slow  # 5-30 s each on 2 busy cores, most of it drawing the figures
@needs_sample
@pytest.mark.parametrize("command", list(CHEAP))
def test_a_folder_of_photos_gives_one_figure_per_photo(command, photos, tmp_path):
    count = ONE_PER_FIGURE.get(command, 12)
    if count < 12:
        folder = tmp_path / "photos"
        folder.mkdir()
        for p in sorted(photos.iterdir())[:count]:
            (folder / p.name).symlink_to(p.resolve())
        photos = folder
    out = tmp_path / "figures" / command  # created by the command
    res = ok(invoke(command, photos, *TINY, *CHEAP[command], "--out-dir", out))
    expected = sorted(f"{p.stem}_{command}.png" for p in photos.iterdir())
    assert len(expected) == count
    assert sorted(p.name for p in out.iterdir()) == expected
    for p in out.iterdir():
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:  # one image per figure: never the 40-row column again
            assert 200 < im.size[1] < 2500, (p.name, im.size)
    assert res.stdout.strip().splitlines()[-1] == f"wrote {count} figures in {out}"


@needs_sample
def test_a_folder_with_save_keeps_every_map_in_one_result(photos, tmp_path):
    import numpy as np

    import cnnviz

    ok(invoke("gradcam", photos, *TINY, "--out-dir", tmp_path / "f", "--save", tmp_path / "r.npz",
              "--batch-size", "5"))
    r = cnnviz.load_result(tmp_path / "r.npz")
    assert r.map.shape == (12, 224, 224) and len(r.params["image_files"]) == 12
    assert r.params["batch_size"] == 5 and r.params["batch_size_auto"] is False
    assert np.isfinite(r.map).all()


def test_equal_stems_are_made_unique(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "rocket.jpg").symlink_to(ROCKET)
    (tmp_path / "a" / "rocket.png").symlink_to(ASSETS / "rocket.jpg")  # PIL reads by content
    out = tmp_path / "out"
    res = ok(invoke("saliency", tmp_path / "a", tmp_path / "b", *TINY, "--out-dir", out))
    assert sorted(p.name for p in out.iterdir()) == ["rocket-2_saliency.png", "rocket-3_saliency.png",
                                                      "rocket_saliency.png"]
    assert f"-> {out / 'rocket-3_saliency.png'}" in res.stdout


@pytest.mark.parametrize("command", list(CHEAP))
def test_several_images_with_out_name_the_out_dir_and_load_nothing(command, tmp_path, no_model):
    out = tmp_path / "out"
    out.mkdir()
    many = [ROCKET] * (9 if command in ("saliency", "guided", "deconv", "gradcam", "smoothgrad", "ig") else 2)
    one_line_error(invoke(command, *many, *CHEAP[command], "--out", out / "f.png"), "--out-dir")
    assert_empty(out)


@pytest.mark.parametrize("args, fragments", [
    (["saliency", "EMPTY"], ["EMPTY", "no image files"]),
    (["gradcam", "TEXTS"], ["TEXTS", "no image files"]),
    (["ig", ROCKET, "--steps", "0"], ["--steps", "0"]),
    (["ig", ROCKET, "--internal-batch", "-1"], ["--internal-batch", "-1", "positive"]),
    (["ig", ROCKET, "--baseline", "purple"], ["--baseline", "'purple'", "blur"]),
    (["saliency", ROCKET, "--batch-size", "0"], ["--batch-size", "0", "positive"]),
    (["saliency", ROCKET, "--out-dir", "AFILE"], ["--out-dir", "is a file"]),
    (["saliency", ROCKET, "--out-dir", "AFILE/sub"], ["--out-dir", "not a writable folder"]),
    (["saliency", ROCKET, "--out", "f.png", "--out-dir", "d"], ["--out", "--out-dir", "exclude"]),
    (["saliency", ROCKET, ROCKET, "--out-dir", "d", "--shared-scale"], ["--shared-scale", "--out-dir"]),
    (["occlusion", ROCKET, ROCKET, "--out-dir", "d", "--save", "r.npz"], ["--save", "one image"]),
    (["ig", ROCKET, "--batch-size", "4"], ["ig", "--batch-size"]),
    (["gradcam", ROCKET, "--unit", "3"], ["gradcam", "--unit"]),
])
def test_bad_input_is_one_line_before_the_model_loads(args, fragments, tmp_path, monkeypatch, no_model):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "TEXTS").mkdir()
    (tmp_path / "TEXTS" / "notes.txt").write_text("no image here\n")
    (tmp_path / "AFILE").write_text("a file\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(invoke(*args), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failed run wrote something"


def test_a_bad_photo_in_a_folder_fails_before_the_model_and_creates_no_folder(tmp_path, no_model):
    d = tmp_path / "in"
    d.mkdir()
    (d / "rocket.jpg").symlink_to(ROCKET)
    (d / "broken.jpg").write_text("not a JPEG\n")
    one_line_error(invoke("saliency", d, "--out-dir", tmp_path / "figs"), "broken.jpg", "not an image")
    assert not (tmp_path / "figs").exists()


# ------------------------------------------------------------------------------------------------
# 2. Every option each --help lists is accepted

def _listed(command: str) -> list[str]:
    """The long option names `cnnviz COMMAND --help` lists (the short-only -k as is)."""
    text = ok(invoke(command, "--help")).stdout
    section = text.split("Options:", 1)[1]
    found = re.findall(r"^\s{1,4}(?:-\w, )?(--[a-z][a-z-]*|-\w)\b", section, flags=re.M)
    return [f for f in found if f not in ("--help", "-h")]


# a valid value for each option that takes one; per command where the meaning differs
VALUE = {
    "--model": "resnet18", "--weights": "none", "--weights-file": "ck.pt", "--labels": "labels.txt",
    "--target": "3", "--layer": "layer4", "--unit": "3:map", "--samples": "2", "--noise": "0.1", "--seed": "1",
    "--smooth": "mean-abs", "--steps": "2", "--baseline": "0.2,0.3,0.4", "--internal-batch": "2",
    "--batch-size": "2", "--device": "cpu", "--out": "f.png", "--out-dir": "figs", "--save": "r.npz",
    "--window": "16x24", "--stride": "8", "--fill": "0.5", "--channel": "1", "--methods": "saliency,gradcam",
    "--top": "3", "--input-size": "64", "--images": "photos", "--measure": "effective", "--max-images": "2",
    "--occluder": "5", "--figure-columns": "3", "--workers": "1", "--checkpoint-every": "2", "-k": "4",
    "--units": "0:4", "--classes": "2", "--figure": "f.png", "--size": "64", "--lr": "0.05", "--columns": "2",
    "--param": "fft", "--transforms": "none", "--priors": "none", "--blur-every": "4", "--blur-sigma": "0.5",
    "--clip-percentile": "0", "--l2-decay": "0.001", "--octaves": "2", "--octave-scale": "1.3", "--jitter": "8",
    "--step-size": "0.01", "--tv": "0.1", "--beta": "2", "--alpha": "6", "--alpha-weight": "0.001",
    "--transform": "translate,scale", "--layers": "conv1,layer4", "--width": "3.5", "--layout": "grid", "--max-height": "8",
    "--mode": "incremental", "--tau": "0.6", "--limit": "4", "--boxes": "boxes.json", "--show": "2",
    "--sanity-images": "1", "--num-units": "3", "--scale": "1.5",
    "--parts": "parts.json", "--draws": "3", "--checkpoints": "ckpt_*.pt", "--segments": "20", "--compactness": "5",
    "--random-within": "head", "--projection": "guided", "--crop": "activation", "--masks": "8", "--max-channels": "4",
    "--rule": "alphabeta", "--image-labels": "labels.csv", "--group": "family", "--folds": "3", "--penalty-c": "0.5",
    "--metric": "cosine", "--threshold": "0.4", "--significance": "0.05", "--colour-iou": "0.3",
    "--concept": "striped=stripes", "--random-runs": "12", "--random-from": "photos", "--random-size": "6",
    "--concept-classes": "2",
    "--method": "gradcam", "--audit": "audit.npz", "--clusters": "2", "--max-clusters": "4", "--neighbours": "5",
}
POSITIONAL = {"render": ["r.npz"], "topk": ["photos"], "audit": ["photos"], "probe": ["photos"],
              "semantics": ["photos"], "neighbours": ["photo.jpg", "photos"], "tcav": ["photos"], "strategies": ["photos"]}
REQUIRED = {"render": ["--out", "f.png"], "topk": ["--layer", "layer4"], "audit": ["--out", "report"],
            "correspondence": ["--parts", "parts.json"], "evolution": ["--layer", "layer4"],
            "semantics": ["--layer", "layer4"]}


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_listed_option_is_accepted_by_its_command(command):
    """Parse-level, for every command: each option its --help lists, with a valid value, parses
    (click types and callbacks). An option listed but refused by click fails here; the gradient
    commands are also run with each option in tests/test_cli_backprop.py."""
    cmd = cli.commands[command]
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    base = POSITIONAL.get(command, ["photo.jpg"] if args else []) + REQUIRED.get(command, [])
    listed = _listed(command)
    assert listed or command == "models", f"{command} --help lists no option"
    by_flag = {flag: p for p in cmd.params if isinstance(p, click.Option) for flag in p.opts + p.secondary_opts}
    for flag in listed:
        param = by_flag[flag]
        if param.is_flag:
            given = [flag]
        else:
            assert flag in VALUE, f"{command} {flag}: add a valid value to VALUE"
            value = VALUE[flag]
            if isinstance(param.type, click.Choice) and value not in param.type.choices:
                value = param.type.choices[-1]
            given = [flag, value]
        try:
            with cmd.make_context(command, base + given if flag not in REQUIRED.get(command, []) else list(base)):
                pass
        except click.ClickException as e:
            pytest.fail(f"`cnnviz {command} {' '.join(given)}` refused by click: {e.format_message()}")


def _options_text(command: str) -> str:
    return " ".join(ok(invoke(command, "--help")).stdout.split("Options:", 1)[1].split())


def test_the_help_states_the_engines_defaults():
    from cnnviz.engines.attribution import gradients as G

    text = _options_text("ig")
    assert f"[default: {G.DEFAULT_IG_STEPS}; 1<=x<=10000]" in text.split("--steps", 1)[1].split("--baseline", 1)[0]
    assert "[default: black]" in text.split("--baseline", 1)[1].split("--internal-batch", 1)[0]
    assert f"{G.IG_MEMORY_BUDGET >> 30} GiB" in text
    for command in ("saliency", "smoothgrad", "ig"):
        text = _options_text(command)
        assert f"[default: {G.DEFAULT_NOISE}]" in text.split("--noise", 1)[1].split("--seed", 1)[0]
    text = _options_text("smoothgrad")
    assert "[default: 25; 1<=x<=10000]" in text.split("--samples", 1)[1].split("--noise", 1)[0]


def test_each_gradient_option_is_declared_once():
    """The attribution commands build their options from cnnviz_cli.options: the same flag has the
    same type, default and metavar in every command that lists it (help wording aside)."""
    from cnnviz_cli.options import OPTIONS

    seen: dict[str, tuple] = {}
    for name in ("saliency", "guided", "deconv", "smoothgrad", "gradcam", "ig", "compare", "occlusion"):
        for p in cli.commands[name].params:
            if not isinstance(p, click.Option) or p.name not in OPTIONS:
                continue
            if name == "smoothgrad" and p.name == "samples":
                continue  # always on there: default 25
            key = (type(p.type).__name__, p.default, p.metavar, p.is_flag)
            assert seen.setdefault(p.name, key) == key, f"{name} {p.opts[0]} differs from a sibling's"


# ------------------------------------------------------------------------------------------------
# 3. A model the default-layer rule does not fit (issue 15, item 6)

def test_gradcam_on_a_vision_transformer_refuses_the_patch_embedding(tmp_path):
    """ViT-B/16's only convolution, the patch embedding, was picked silently and drew an all-zero
    map. Now: one line naming the layer it would have picked and the fixes; a layer the user names
    is drawn, with a note when its layout is lost to tokens."""
    line = one_line_error(invoke("gradcam", ROCKET, "--model", "vit_b_16", "--weights", "none", "--out",
                                 tmp_path / "f.png"), "'conv_proj'", "sequence of tokens", "--layer")
    assert "VisionTransformer" in line
    assert not (tmp_path / "f.png").exists()
    res = ok(invoke("gradcam", ROCKET, "--model", "vit_b_16", "--weights", "none", "--layer", "conv_proj",
                    "--out", tmp_path / "f.png"))
    assert "note: layer 'conv_proj' becomes a sequence of tokens by 'encoder.dropout'" in res.stdout
    assert (tmp_path / "f.png").is_file()
    res = ok(invoke("gradcam", ROCKET, *TINY, "--layer", "layer4", "--out", tmp_path / "g.png"))
    assert "note:" not in res.stdout


def test_compare_saves_a_result_that_renders_without_the_model(tmp_path):
    """`compare --save` (it had none): the maps of every method for the image, redrawn by `render`."""
    import numpy as np

    import cnnviz

    ok(invoke("compare", ROCKET, *TINY, "--methods", "saliency,gradcam", "--out", tmp_path / "c.png",
              "--save", tmp_path / "c.npz"))
    r = cnnviz.load_result(tmp_path / "c.npz")
    assert type(r).__name__ == "CompareResult" and list(r.methods) == ["saliency", "gradcam"]
    assert r.maps.shape == (2, 224, 224) and np.abs(r.maps).max(axis=(1, 2)).min() > 0
    assert r.params["method_params"][1]["layer"] == "layer4"
    ok(invoke("render", tmp_path / "c.npz", "--out", tmp_path / "again.svg"))
    assert (tmp_path / "again.svg").read_text().count("<svg") == 1
    one_line_error(invoke("compare", ROCKET, ROCKET, "--out-dir", tmp_path / "d", "--save", tmp_path / "x.npz"),
                   "--save", "one image")
