"""Saved results that were edited by hand, and outputs written together.

Every result kind is made for real (a tiny random CNN at 32x32, so each engine takes milliseconds),
saved, then its sidecar or arrays are broken the ways a user or a forged file would break them:
`cnnviz render` must answer with one line naming the wrong field, never an internal error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import cnnviz
from cnnviz.models import LoadedModel, Preprocessing
from helpers import assert_empty, one_line_error, sample_image

pytestmark = pytest.mark.filterwarnings("ignore")


def invoke(*args):
    from cnnviz_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return LoadedModel(model=net.eval(), name="tiny", weights="random", categories=["ant", "bee", "cat"],
                       preprocessing=Preprocessing(crop=(32, 32), resize=36))


def _make(kind: str):
    from cnnviz.engines import featvis
    from cnnviz.engines.receptive_field import theory as receptive_field
    from cnnviz.engines.units import filters
    from cnnviz.engines.attribution.gradients import attribute
    from cnnviz.engines.attribution.sanity import sanity

    lm, photo = tiny_model(), sample_image(0)
    if kind == "occlusion":
        return cnnviz.occlusion(lm, photo, window=8, stride=8, layer="3", progress=False)
    if kind == "gradients":
        return attribute(lm, [photo, sample_image(2)], "saliency")
    if kind == "sanity":
        return sanity(lm, photo, methods=("saliency",), steps=2)
    if kind == "filters":
        return filters.first_layer_filters(lm)
    if kind == "activations":
        return filters.feature_maps(lm, photo, layer="3", top=4)
    if kind == "receptive_field":
        return receptive_field.receptive_field(lm)
    if kind == "featvis":
        return featvis.visualize_units(lm, "3", "0:2", steps=2, size=32, progress=False)
    raise AssertionError(kind)


KINDS = ["occlusion", "gradients", "sanity", "filters", "activations", "receptive_field", "featvis"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{kind: folder holding r.npz + r.json}, each made by the real engine and saved."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in KINDS:
        d = root / kind
        d.mkdir()
        _make(kind).save(d / "r.npz")
        out[kind] = d
    return out


def _copy(saved_dir: Path, tmp_path: Path) -> Path:
    for name in ("r.npz", "r.json"):
        shutil.copy(saved_dir / name, tmp_path / name)
    return tmp_path / "r.npz"


def _edit_sidecar(npz: Path, edit) -> None:
    side = npz.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(edit(meta)))


def _edit_array(npz: Path, name: str, value: np.ndarray) -> None:
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[name] = value
    np.savez_compressed(npz, **arrays)


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.mark.parametrize("kind", KINDS)
def test_every_saved_kind_renders_again(kind, saved, out):
    res = invoke("render", saved[kind] / "r.npz", "--out", out / "f.png")
    assert res.exit_code == 0, res.stderr
    assert (out / "f.png").read_bytes().startswith(b"\x89PNG")


# The cases an outside fault test found (each was `internal error, ...` before).
FOUND = [
    ("params is text", lambda m: {**m, "params": "big"}, ["params", "object"]),
    ("kind is a list", lambda m: {**m, "kind": ["occlusion"]}, ["kind", "text"]),
    ("top level is a list", lambda m: [m], ["JSON object", "list"]),
    ("top level is null", lambda m: None, ["JSON object", "NoneType"]),
    ("params empty", lambda m: {**m, "params": {}}, ["params.window", "missing"]),
    ("window is text", lambda m: {**m, "params": {**m["params"], "window": "big"}}, ["params.window", "'big'"]),
]


@pytest.mark.parametrize("case,edit,fragments", FOUND, ids=[c[0] for c in FOUND])
def test_a_broken_occlusion_sidecar_is_one_line_naming_the_field(case, edit, fragments, saved, tmp_path, out):
    npz = _copy(saved["occlusion"], tmp_path)
    _edit_sidecar(npz, edit)
    one_line_error(invoke("render", npz, "--out", out / "f.png"), "r.json", *fragments)
    assert_empty(out)


def test_an_image_array_of_the_wrong_shape_is_one_line_naming_the_array(saved, tmp_path, out):
    npz = _copy(saved["occlusion"], tmp_path)
    _edit_array(npz, "image", np.zeros(5, np.uint8))
    one_line_error(invoke("render", npz, "--out", out / "f.png"), "'image'", "shape 5", "HxWx3")
    assert_empty(out)


def _class_of(kind):
    from cnnviz.analyses import _REGISTRY

    import cnnviz.engines.units.filters, cnnviz.engines.units.patches, cnnviz.engines.receptive_field.theory  # noqa: F401,E401
    return _REGISTRY[kind]


WRONG_VALUES = ["big", None, [1, 2, 3], {"a": 1}, -1.5]


@pytest.mark.parametrize("kind", KINDS)
def test_every_declared_param_of_every_kind_with_a_wrong_value_is_one_line(kind, saved, tmp_path, out):
    """Each param the kind's renderer needs, set to each kind of wrong value: one line naming it
    (or, where the value happens to be acceptable, a figure)."""
    cls = _class_of(kind)
    assert cls.param_schema or cls.array_schema, f"{kind} declares no schema"
    npz = _copy(saved[kind], tmp_path)
    original = npz.with_suffix(".json").read_text()
    for key, check in cls.param_schema.items():
        for bad in WRONG_VALUES:
            npz.with_suffix(".json").write_text(original)
            _edit_sidecar(npz, lambda m: {**m, "params": {**m["params"], key: bad}})
            res = invoke("render", npz, "--out", out / "f.png")
            if res.exit_code == 0:  # an accepted value must really be acceptable, and draw
                assert check.test(bad) or (bad is None and check.optional), (key, bad)
                (out / "f.png").unlink()
                continue
            one_line_error(res, f"params.{key}")
            assert_empty(out)


@pytest.mark.parametrize("kind", KINDS)
def test_every_declared_array_of_every_kind_with_a_wrong_shape_or_type_is_one_line(kind, saved, tmp_path, out):
    cls = _class_of(kind)
    npz = _copy(saved[kind], tmp_path)
    with np.load(npz) as data:
        good = {k: data[k] for k in data.files}
    for name, spec in cls.array_schema.items():
        for bad in (np.zeros(5, np.float32) if spec.shapes()[0] != (5,) else np.zeros((5, 5), np.float32),
                    np.array(["x"] * good[name].size).reshape(good[name].shape) if "U" not in spec.kinds
                    else np.zeros(good[name].shape, np.float32)):
            np.savez_compressed(npz, **{**good, name: bad})
            one_line_error(invoke("render", npz, "--out", out / "f.png"), f"'{name}'")
            assert_empty(out)


def test_arrays_that_do_not_belong_together_are_named(saved, tmp_path, out):
    npz = _copy(saved["occlusion"], tmp_path)
    with np.load(npz) as data:
        prob = data["true_class_prob"]
    _edit_array(npz, "true_class_prob", np.zeros((prob.shape[0] + 1, prob.shape[1]), np.float32))
    one_line_error(invoke("render", npz, "--out", out / "f.png"), "do not belong together")
    assert_empty(out)


def test_values_that_pass_the_schema_but_cannot_be_drawn_are_one_line(saved, tmp_path, out):
    """Zero occluder positions: every array agrees, yet there is nothing to draw."""
    npz = _copy(saved["occlusion"], tmp_path)
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    for k in ("true_class_prob", "top_class", "top_class_prob", "feature_activation"):
        arrays[k] = arrays[k][:0, :0]
    arrays["positions_y"], arrays["positions_x"] = arrays["positions_y"][:0], arrays["positions_x"][:0]
    np.savez_compressed(npz, **arrays)
    one_line_error(invoke("render", npz, "--out", out / "f.png"), "r.npz")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Outputs written together

def test_save_writes_npz_and_sidecar_together_or_neither(saved, tmp_path, monkeypatch):
    r = cnnviz.load_result(saved["occlusion"] / "r.npz")
    d = tmp_path / "o"
    d.mkdir()

    def broken_json(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken_json)  # the npz is written first, then the sidecar fails
    with pytest.raises(OSError):
        r.save(d / "r.npz")
    assert_empty(d)


def test_save_refuses_a_sidecar_path_that_is_a_directory_before_writing(saved, tmp_path):
    r = cnnviz.load_result(saved["occlusion"] / "r.npz")
    (tmp_path / "r.json").mkdir()
    with pytest.raises(cnnviz.CnnvizError, match="sidecar .* is a directory"):
        r.save(tmp_path / "r.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_save_outputs_writes_figure_and_result_together_or_not_at_all(saved, tmp_path, monkeypatch):
    from cnnviz.results import save_outputs

    r = cnnviz.load_result(saved["occlusion"] / "r.npz")
    fig = r.render()
    d = tmp_path / "o"
    d.mkdir()
    save_outputs(r, d / "r.npz", fig, d / "f.png")
    assert sorted(p.name for p in d.iterdir()) == ["f.png", "r.json", "r.npz"]

    e = tmp_path / "e"
    e.mkdir()
    monkeypatch.setattr(np, "savez_compressed", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_outputs(r, e / "r.npz", fig, e / "f.png")
    assert_empty(e)  # the figure was written first, and is gone with the failed result


# ------------------------------------------------------------------------------------------------
# Every command checks every output before any work (the model is never loaded)

def _commands(photo: Path, folder: Path) -> dict[str, list[str]]:
    return {
        "occlusion": ["occlusion", str(photo)],
        "saliency": ["saliency", str(photo)],
        "gradcam": ["gradcam", str(photo)],
        "sanity": ["sanity", str(photo)],
        "filters": ["filters"],
        "activations": ["activations", str(photo)],
        "rf": ["rf"],
        "featvis": ["featvis", "--layer", "_blocks.2"],
        "classviz": ["classviz", "--target", "1"],
        "dream": ["dream", str(photo), "--layer", "_blocks.2"],
        "invert": ["invert", str(photo), "--layer", "_blocks.2"],
        "topk": ["topk", str(folder), "--layer", "_blocks.2"],
    }


@pytest.fixture
def no_model(monkeypatch):
    import cnnviz.models

    def forbidden(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cnnviz.models, "load_model", forbidden)


@pytest.mark.parametrize("command", list(_commands(Path("x"), Path("y"))))
def test_a_sidecar_path_that_is_a_directory_fails_before_any_work(command, tmp_path, no_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_image(0), photos / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "r.json").mkdir()
    args = _commands(photos / "a.jpg", photos)[command]
    fig = ["--figure", out / "f.png"] if command == "topk" else ["--out", out / "f.png"]
    res = invoke(*args, *fig, "--save", out / "r.npz")
    one_line_error(res, "r.json", "directory")
    assert sorted(p.name for p in out.iterdir()) == ["r.json"]


@pytest.mark.parametrize("command", list(_commands(Path("x"), Path("y"))))
def test_a_figure_path_that_is_a_directory_fails_before_any_work(command, tmp_path, no_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_image(0), photos / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.png").mkdir()
    args = _commands(photos / "a.jpg", photos)[command]
    fig = ["--figure", out / "f.png"] if command == "topk" else ["--out", out / "f.png"]
    one_line_error(invoke(*args, *fig, "--save", out / "r.npz"), "f.png", "directory")
    assert sorted(p.name for p in out.iterdir()) == ["f.png"]
