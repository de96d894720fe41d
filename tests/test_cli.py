"""The `cnnviz` command end to end (click's CliRunner on `cnnviz_cli.main.cli`, and the installed
entry point through a subprocess for a few cases).

Bad input: one `Error: ...` line on stderr, no traceback, a non-zero exit, nothing written to the
output directory (no figure, npz, JSON, nor `.name.*` temp file), and rejected before the occlusion
sweep starts. Good input: a real figure, a result that round-trips and re-renders without the model.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cnnviz
import cnnviz_cli.main as climain
from cnnviz_cli.main import cli

from helpers import BAD_IMAGE_KINDS, SAMPLE, assert_empty, bad_image_file, one_line_error, sample_image

pytestmark = pytest.mark.skipif(not (SAMPLE / "images").is_dir(), reason=f"ImageNet sample not found at {SAMPLE}")

TENCH = 0  # 000_n01440764.jpg: EfficientNet-Lite0 gives tench 94 %
FINCH = 12  # house finch 93 %
BUNTING = 14  # indigo bunting 95 %
SMALL = ["--window", "112", "--stride", "112", "--quiet"]  # 2x2 positions


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)








@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture
def no_sweep(monkeypatch):
    """Fails the test (with an internal error line) if the occlusion sweep starts."""
    import cnnviz.engines.occlusion.engine as occ

    def boom(*a, **k):
        raise RuntimeError("the occlusion sweep started before the bad value was rejected")

    monkeypatch.setattr(occ, "occluded_batch", boom)


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def tench() -> Path:
    return sample_image(TENCH)


def occ_args(out: Path, image=None, *extra):
    """An occlusion run with the default (625-position) grid writing a figure and a result into `out`."""
    return ["occlusion", image or tench(), "--out", out / "fig.png", "--save", out / "res.npz", "--quiet", *extra]


# ------------------------------------------------------------------------------------------------
# Bad image files

_bad_image = bad_image_file


BAD_IMAGES = BAD_IMAGE_KINDS


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_occlusion_on_bad_image_file_is_one_line_error_and_writes_nothing(kind, tmp_path, out, no_sweep, monkeypatch):
    path, words = _bad_image(kind, tmp_path)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the image was checked")

    monkeypatch.setattr(climain, "_load", no_model)
    try:
        res = invoke(*occ_args(out, path))
    finally:
        if kind == "unreadable":
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert res.exit_code == climain.EXIT_USER_ERROR
    one_line_error(res, path.name, words)
    assert_empty(out)


@pytest.mark.parametrize("kind", ["missing", "truncated", "text"])
def test_predict_on_one_bad_image_file_is_one_line_error(kind, tmp_path, cached_model):
    path, words = _bad_image(kind, tmp_path)
    res = invoke("predict", path)
    one_line_error(res, path.name, words)
    assert res.stdout == ""


def test_predict_skips_bad_files_among_good_ones_and_exits_non_zero(tmp_path, cached_model):
    bad, _ = _bad_image("truncated", tmp_path)
    res = invoke("predict", tench(), bad, "--json")
    assert res.exit_code == climain.EXIT_USER_ERROR
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(tench())]
    assert "skipped" in res.stderr and bad.name in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------------
# Bad model, layer, class, channel: one line with suggestions, before the sweep

def test_unknown_model_suggests_close_names(out, no_sweep):
    line = one_line_error(invoke(*occ_args(out), "--model", "alexnt"), "'alexnt'", "alexnet")
    assert "cnnviz models" in line
    assert_empty(out)


def test_unknown_layer_lists_the_closest_names(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--layer", "_conv_hed"), "'_conv_hed'", "_conv_head")
    assert_empty(out)


def test_reused_layer_on_efficientnet_lite0_asks_for_a_call_number(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--layer", "_swish"), "'_swish'", "_swish@0", "_swish@1")
    assert_empty(out)


def test_call_number_past_the_last_call_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--layer", "_swish@2"), "@2", "2 time")
    assert_empty(out)


def test_unknown_class_name_suggests_close_names(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--target", "goldfsh"), "'goldfsh'", "'goldfish'")
    assert_empty(out)


@pytest.mark.parametrize("index", ["1000", "-1"])
def test_class_index_out_of_range_gives_the_valid_range(index, out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--target", index), index, "0..999")
    assert_empty(out)


def test_channel_out_of_range_gives_the_layers_channel_range(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--layer", "_conv_head", "--channel", "1280"),
                   "channel 1280", "_conv_head", "0..1279")
    assert_empty(out)


def test_negative_channel_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--layer", "_conv_head", "--channel", "-1"), "channel -1", "0..1279")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Bad occlusion parameters

def test_window_larger_than_the_model_input_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--window", "300"), "300", "224")
    assert_empty(out)


@pytest.mark.parametrize("option,value", [("--stride", "0"), ("--stride", "-4"), ("--window", "abc"),
                                          ("--window", "0"), ("--window", "8x8x8")])
def test_impossible_window_or_stride_is_a_one_line_error(option, value, out, no_sweep, cached_model):
    res = invoke(*occ_args(out), option, value)
    one_line_error(res, option, repr(value))
    assert_empty(out)


@pytest.mark.parametrize("fill,words", [("purple", "unknown fill"), ("2", "[0, 1]"), ("0.5,0.5", "[0, 1]")])
def test_bad_fill_is_rejected(fill, words, out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--fill", fill), repr(fill), words)
    assert_empty(out)


def test_zero_batch_size_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--batch-size", "0"), "batch size")
    assert_empty(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_occlusion_on_cuda_without_cuda_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--device", "cuda"), "'cuda'", "--device cpu")
    assert_empty(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_predict_on_cuda_without_cuda_is_rejected(cached_model):
    res = invoke("predict", tench(), "--device", "cuda")
    one_line_error(res, "CUDA is not available")
    assert res.stdout == ""


def test_unknown_device_is_rejected(out, no_sweep, cached_model):
    one_line_error(invoke(*occ_args(out), "--device", "quantum"), "'quantum'")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Bad output paths: checked before anything is loaded

@pytest.mark.parametrize("which", ["--out", "--save"])
def test_output_directory_that_does_not_exist_is_rejected_before_loading(which, tmp_path, out, no_sweep, monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("model loaded before the output check"))
    missing = tmp_path / "no" / "such" / "dir"
    target = missing / ("fig.png" if which == "--out" else "res.npz")
    args = ["occlusion", tench(), "--out", out / "fig.png", "--save", out / "res.npz", which, target]
    one_line_error(invoke(*args), str(missing), "does not exist", "mkdir -p")
    assert not (tmp_path / "no").exists()
    assert_empty(out)


@pytest.mark.parametrize("which,name,allowed", [("--out", "fig.jpg2", ".png"), ("--out", "fig", ".svg"),
                                                ("--save", "res.txt", ".npz")])
def test_unsupported_output_extension_is_rejected(which, name, allowed, out, no_sweep, monkeypatch):
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("model loaded before the output check"))
    args = ["occlusion", tench(), "--out", out / "fig.png", "--save", out / "res.npz", which, out / name]
    one_line_error(invoke(*args), name, allowed)
    assert_empty(out)


def test_output_path_that_is_a_directory_is_rejected(out, no_sweep, monkeypatch):
    (out / "taken.png").mkdir()
    monkeypatch.setattr(climain, "_load", lambda *a, **k: pytest.fail("model loaded before the output check"))
    one_line_error(invoke("occlusion", tench(), "--out", out / "taken.png"), "taken.png", "directory")
    assert sorted(p.name for p in out.iterdir()) == ["taken.png"]


# ------------------------------------------------------------------------------------------------
# Weights that cannot be fetched, and the installed entry point

def cnnviz_exe() -> str:
    """The installed console script of this environment."""
    exe = Path(sys.executable).with_name("cnnviz")
    return str(exe) if exe.exists() else (shutil.which("cnnviz") or "cnnviz")


def _offline_env(torch_home: Path) -> dict:
    env = dict(os.environ, TORCH_HOME=str(torch_home))
    env.pop("TORCH_HUB", None)
    env.pop("CNNVIZ_DEBUG", None)
    # Even where the network is reachable, the download must fail: send it to a closed port.
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env[k] = "http://127.0.0.1:9"
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def test_weights_that_cannot_be_fetched_name_the_cache_path_and_weights_file(tmp_path):
    home = tmp_path / "torch_home"
    home.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([cnnviz_exe(), "occlusion", str(tench()), "--model", "alexnet", "--out", str(out / "fig.png"),
                          "--save", str(out / "res.npz"), "--window", "112", "--stride", "112", "--quiet"],
                         capture_output=True, text=True, env=_offline_env(home), timeout=300)
    assert res.returncode == climain.EXIT_USER_ERROR, res.stderr
    assert "Traceback" not in res.stderr
    # torch.hub announces the download on stderr before it fails; the error itself is one line, last.
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Downloading: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    expected = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected) in lines[0]
    assert "--weights-file" in lines[0]
    assert res.stdout == ""
    assert_empty(out)
    leftovers = [p for p in home.rglob("*") if p.is_file()]
    assert leftovers == [], f"partial download left: {leftovers}"


def test_installed_entry_point_predicts_json(tmp_path):
    res = subprocess.run([cnnviz_exe(), "predict", str(tench()), "--json", "--top", "3"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["top"][0]["index"] == TENCH and row["top"][0]["name"] == "tench"
    assert len(row["top"]) == 3


def test_installed_entry_point_reports_bad_input_in_one_line(tmp_path):
    res = subprocess.run([cnnviz_exe(), "occlusion", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == climain.EXIT_USER_ERROR
    assert res.stderr.strip().splitlines() == [f"Error: image not found: {str(tmp_path / 'nope.jpg')!r}; check the path"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# models, layers, predict

def test_models_lists_efficientnet_lite0_as_the_offline_default():
    res = invoke("models")
    assert res.exit_code == 0, res.stderr
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("efficientnet_lite0 ")]
    assert len(rows) == 1
    assert "(default)" in rows[0] and "bundled" in rows[0]
    assert any(ln.split()[:1] == ["alexnet"] for ln in res.stdout.splitlines())


def test_layers_of_alexnet_lists_features_10_and_downloads_nothing(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("TORCH_HUB", raising=False)

    def no_download(*a, **k):
        raise AssertionError("cnnviz layers tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    res = invoke("layers", "--model", "alexnet")
    assert res.exit_code == 0, res.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines()[2:] if ln.strip()}
    assert rows["features.10"] == ["Conv2d", "256x13x13"]
    assert rows["features.0"] == ["Conv2d", "64x55x55"]
    assert rows["classifier.6"] == ["Linear", "1000"]
    assert res.stdout.splitlines()[0] == "# alexnet, input 3x224x224"
    assert [p for p in home.rglob("*") if p.is_file()] == []


def test_layers_of_efficientnet_lite0_lists_each_call_of_a_reused_module(cached_model):
    res = invoke("layers")
    assert res.exit_code == 0, res.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines()[2:] if ln.strip()}
    assert rows["_swish@0"] == ["ReLU6", "32x112x112"]
    assert rows["_swish@1"] == ["ReLU6", "1280x7x7"]
    assert "_swish" not in rows


def test_predict_prints_the_top5_classes(cached_model):
    res = invoke("predict", tench())
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == str(tench())
    assert len(lines) == 6
    assert [ln.split(".")[0].strip() for ln in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert "tench" in lines[1] and "(class 0)" in lines[1]


def test_predict_json_gives_one_parsable_object_per_image(cached_model):
    images = [sample_image(TENCH), sample_image(FINCH), sample_image(BUNTING)]
    res = invoke("predict", *images, "--json", "--batch-size", "2")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in images]
    for row, expected in zip(rows, [TENCH, FINCH, BUNTING]):
        assert len(row["top"]) == 5
        probs = [t["prob"] for t in row["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
        assert row["top"][0]["index"] == expected and row["top"][0]["prob"] > 0.5


def test_predict_on_a_folder_without_images_is_one_line_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    one_line_error(invoke("predict", tmp_path), "no image files")


# ------------------------------------------------------------------------------------------------
# occlusion end to end: one real run (real model loading), shared by the tests below

@pytest.fixture(scope="module")
def occ_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("occ")
    res = invoke("occlusion", tench(), "--window", "56", "--stride", "28", "--out", d / "f.png",
                 "--save", d / "r.npz", "--quiet")
    return d, res


def test_occlusion_succeeds_and_reports_what_it_wrote(occ_run):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    assert "Error" not in res.stderr
    assert "target 'tench' (class 0)" in res.stdout
    assert "49 positions" in res.stdout
    assert f"wrote {d / 'f.png'} and {d / 'r.npz'} (+ r.json)" in res.stdout


def test_occlusion_writes_a_real_png_figure(occ_run):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    with Image.open(d / "f.png") as img:
        assert img.format == "PNG"
        w, h = img.size
        img.load()
    assert 600 <= w <= 6000 and 150 <= h <= 3000 and w > h  # a row of panels


def test_occlusion_leaves_only_the_figure_npz_and_sidecar(occ_run):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in d.iterdir()) == ["f.png", "r.json", "r.npz"]


def test_occlusion_outputs_have_the_usual_file_permissions(occ_run):
    """Atomic writes go through mkstemp (mode 0600); the final files must get 0666 & ~umask like
    any file the user writes, not stay private."""
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    umask = os.umask(0)
    os.umask(umask)
    for name in ("f.png", "r.npz", "r.json"):
        mode = stat.S_IMODE((d / name).stat().st_mode)
        assert mode == 0o666 & ~umask, f"{name} has mode {oct(mode)}, expected {oct(0o666 & ~umask)}"


def test_saved_npz_holds_the_input_crop_and_the_three_maps_on_the_position_grid(occ_run, lite0):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    with np.load(d / "r.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    assert a["image"].dtype == np.uint8 and a["image"].shape == (224, 224, 3)
    assert np.array_equal(a["image"], lite0.prepare(tench())[0])
    np.testing.assert_array_equal(a["positions_y"], np.arange(0, 224 - 56 + 1, 28))
    np.testing.assert_array_equal(a["positions_x"], np.arange(0, 224 - 56 + 1, 28))
    grid = (len(a["positions_y"]), len(a["positions_x"]))
    assert grid == (7, 7)
    for key in ("true_class_prob", "top_class", "top_class_prob", "feature_activation"):
        assert a[key].shape == grid, key
    assert np.all((a["true_class_prob"] >= 0) & (a["true_class_prob"] <= 1))
    assert np.all(a["true_class_prob"] <= a["top_class_prob"] + 1e-6)
    assert a["top_class"].dtype.kind == "i" and np.all((a["top_class"] >= 0) & (a["top_class"] < 1000))
    assert set(np.unique(a["top_class"])) <= set(a["class_indices"].tolist())
    assert np.isfinite(a["feature_activation"]).all() and a["feature_activation"].std() > 0


def test_sidecar_holds_params_model_identity_and_version(occ_run):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    meta = json.loads((d / "r.json").read_text())
    assert meta["kind"] == "occlusion"
    p = meta["params"]
    assert p["window"] == [56, 56] and p["stride"] == [28, 28]
    assert p["target"] == TENCH and p["target_name"] == "tench" and p["target_given"] is False
    assert isinstance(p["layer"], str) and p["layer"]
    assert isinstance(p["channel"], int) and 0 <= p["channel"] < p["layer_shape"][0]
    assert p["num_positions"] == 49
    assert p["image_file"] == str(tench())
    prov = meta["provenance"]
    assert prov["model"] == "efficientnet_lite0"
    assert "efficientnet-lite0" in prov["weights"]
    assert prov["cnnviz_version"] == cnnviz.__version__
    assert prov["num_classes"] == 1000 and prov["device"] == "cpu"


def test_sidecar_params_agree_with_the_saved_arrays(occ_run):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    r = cnnviz.load_result(d / "r.npz")
    assert r.params["baseline_top_class"] == TENCH
    assert abs(r.params["baseline_activation"] - float(r.feature_map.sum())) <= 1e-3 * max(1.0, abs(r.params["baseline_activation"]))
    assert TENCH in r.class_indices.tolist()


@pytest.mark.parametrize("ext,magic", [(".pdf", b"%PDF-"), (".svg", b"<svg"), (".png", b"\x89PNG\r\n\x1a\n")])
def test_render_redraws_the_saved_result_without_recomputing(ext, magic, occ_run, tmp_path, monkeypatch):
    d, res = occ_run
    assert res.exit_code == 0, res.stderr
    import cnnviz.engines.occlusion.engine as occ
    import cnnviz.models

    def forbidden(*a, **k):
        raise AssertionError("render recomputed or loaded a model")

    monkeypatch.setattr(cnnviz.models, "load_model", forbidden)
    monkeypatch.setattr(occ, "occlusion", forbidden)
    monkeypatch.setattr(occ, "occluded_batch", forbidden)
    monkeypatch.setattr(climain, "_load", forbidden)
    target = tmp_path / f"again{ext}"
    r = invoke("render", d / "r.npz", "--out", target)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"wrote {target}"
    data = target.read_bytes()
    if ext == ".svg":
        assert data.lstrip().startswith(b"<?xml") and magic in data[:2000]
    else:
        assert data.startswith(magic)
    assert len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def assert_truetype_fonts_only(pdf: bytes) -> None:
    """Every font dictionary of the PDF is TrueType (matplotlib's pdf.fonttype 42), none Type 3,
    which many venues reject. Matplotlib writes its font dictionaries uncompressed."""
    subtypes = re.findall(rb"/Type\s*/Font\b.*?/Subtype\s*/(\w+)|/Subtype\s*/(\w+)\s*/Type\s*/Font\b", pdf, re.S)
    found = {a or b for a, b in subtypes}
    assert found and b"Type3" not in found and found <= {b"TrueType", b"Type0", b"CIDFontType2"}, found
    assert b"/FontFile2" in pdf  # the TrueType program is embedded


def test_target_by_name_with_a_reused_layer_call_and_channel(out, cached_model):
    res = invoke("occlusion", tench(), *SMALL, "--target", "goldfish", "--layer", "_swish@0", "--channel", "5",
                 "--out", out / "f.svg", "--save", out / "r.npz")
    assert res.exit_code == 0, res.stderr
    r = cnnviz.load_result(out / "r.npz")
    assert r.params["target"] == 1 and r.params["target_name"] == "goldfish" and r.params["target_given"] is True
    assert r.params["layer"] == "_swish@0" and r.params["layer_shape"] == [32, 112, 112]
    assert r.params["channel"] == 5
    assert r.feature_map.shape == (112, 112)
    assert r.true_class_prob.shape == (2, 2)
    assert np.all(r.true_class_prob < r.top_class_prob)  # goldfish is never the top class on the tench photo
    assert 1 in r.class_indices.tolist()
    svg = (out / "f.svg").read_bytes()
    assert svg.lstrip().startswith(b"<?xml")
    assert b"<text" in svg and b"goldfish" in svg  # text stays text (svg.fonttype none), not glyph paths


def test_target_by_index_with_a_named_layer_and_channel(out, cached_model, lite0):
    res = invoke("occlusion", tench(), *SMALL, "--target", "1", "--layer", "_conv_head", "--channel", "3",
                 "--out", out / "f.pdf", "--save", out / "r.npz")
    assert res.exit_code == 0, res.stderr
    assert "target 'goldfish' (class 1)" in res.stdout
    r = cnnviz.load_result(out / "r.npz")
    assert r.params["target"] == 1 and r.params["layer"] == "_conv_head" and r.params["channel"] == 3
    assert r.feature_map.shape == (7, 7)
    x = lite0.prepare(tench())[1]
    with torch.no_grad():
        p1 = float(torch.softmax(lite0.model.eval()(x), 1)[0, 1])
    assert abs(r.params["baseline_prob"] - p1) < 1e-4
    pdf = (out / "f.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert_truetype_fonts_only(pdf)


# ------------------------------------------------------------------------------------------------
# render: bad results

def test_render_of_a_missing_npz_is_one_line_error(tmp_path, out):
    one_line_error(invoke("render", tmp_path / "gone.npz", "--out", out / "f.png"), "gone.npz", "not found")
    assert_empty(out)


def test_render_of_an_npz_without_sidecar_names_the_missing_json(occ_run, tmp_path, out):
    d, _ = occ_run
    shutil.copy(d / "r.npz", tmp_path / "alone.npz")
    one_line_error(invoke("render", tmp_path / "alone.npz", "--out", out / "f.png"), "alone.json")
    assert_empty(out)


def test_render_of_a_truncated_npz_is_one_line_error(occ_run, tmp_path, out):
    d, _ = occ_run
    data = (d / "r.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    shutil.copy(d / "r.json", tmp_path / "cut.json")
    one_line_error(invoke("render", tmp_path / "cut.npz", "--out", out / "f.png"), "cut.npz")
    assert_empty(out)


def test_render_of_a_garbage_npz_is_one_line_error_that_does_not_suggest_unpickling(occ_run, tmp_path, out):
    d, _ = occ_run
    (tmp_path / "junk.npz").write_bytes(b"this is not an npz archive\n" * 100)
    shutil.copy(d / "r.json", tmp_path / "junk.json")
    line = one_line_error(invoke("render", tmp_path / "junk.npz", "--out", out / "f.png"), "junk.npz")
    # numpy's message for a non-zip file tells the user to load it with allow_pickle / pickle.load:
    # advice to unpickle an untrusted file, and wrong (the file is simply not an npz).
    assert "pickle" not in line.lower(), line
    assert_empty(out)


def test_render_with_a_garbage_sidecar_is_one_line_error(occ_run, tmp_path, out):
    d, _ = occ_run
    shutil.copy(d / "r.npz", tmp_path / "x.npz")
    (tmp_path / "x.json").write_text("{not json")
    one_line_error(invoke("render", tmp_path / "x.npz", "--out", out / "f.png"), "x.json", "sidecar")
    assert_empty(out)


def test_render_to_an_unsupported_extension_is_rejected(occ_run, out):
    d, _ = occ_run
    one_line_error(invoke("render", d / "r.npz", "--out", out / "fig.jpg2"), "fig.jpg2", ".pdf")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Failures while writing leave nothing behind

def test_failed_figure_write_leaves_no_figure_and_no_temp_file(occ_run, out, monkeypatch):
    d, _ = occ_run
    from matplotlib.figure import Figure

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    res = invoke("render", d / "r.npz", "--out", out / "fig.png")
    assert res.exit_code != 0
    assert res.stderr.strip().startswith("Error: ") and len(res.stderr.strip().splitlines()) == 1
    assert_empty(out)


def test_failed_result_save_leaves_no_npz_json_or_temp_file(occ_run, out, monkeypatch):
    d, _ = occ_run
    r = cnnviz.load_result(d / "r.npz")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError):
        r.save(out / "res.npz")
    assert_empty(out)


# ------------------------------------------------------------------------------------------------
# Options a command would ignore, and values it would quietly cut: one-line errors before any
# computation (the engines are replaced by tripwires)

@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if any engine starts computing."""
    import cnnviz.engines.receptive_field.effective as eff
    import cnnviz.engines.receptive_field.empirical as erf
    import cnnviz.engines.featvis as fv
    import cnnviz.engines.units.filters as fl
    import cnnviz.engines.occlusion.engine as occ
    import cnnviz.engines.receptive_field.theory as rfe
    from cnnviz.models import LoadedModel

    def boom(*a, **k):
        raise RuntimeError("an engine started before the bad option was rejected")

    for mod, names in ((fv, ["visualize_units", "visualize_classes", "deep_dream", "invert"]),
                       (fl, ["feature_maps", "first_layer_filters"]),
                       (rfe, ["receptive_field"]), (eff, ["effective_receptive_field"]),
                       (erf, ["select_images", "empirical_receptive_field"]), (occ, ["occluded_batch"])):
        for name in names:
            monkeypatch.setattr(mod, name, boom)
    monkeypatch.setattr(LoadedModel, "predict", boom)


UNUSED = [
    (["layers", "--weights", "IMAGENET1K_V1"], ["--weights", "architecture"]),
    (["layers", "--labels", "LABELS"], ["--labels", "layers"]),
    (["layers", "--weights-file", "CKPT"], ["--weights-file"]),
    (["rf", "--weights", "IMAGENET1K_V1"], ["--weights", "architecture"]),
    (["rf", "--device", "cpu"], ["--device", "--layer"]),
    (["rf", "--measure", "effective"], ["--measure", "--layer"]),
    (["rf", "--max-images", "3"], ["--max-images", "--layer"]),
    (["rf", "--layer", "_blocks.3", "--images", "IMG", "--measure", "effective", "--occluder", "5",
      "--out", "OUT/rf.png"], ["--occluder", "--measure effective"]),
    (["filters", "--labels", "LABELS", "--out", "OUT/f.png"], ["--labels", "filters"]),
    (["predict", "IMG", "--trust-checkpoint"], ["--trust-checkpoint", "--weights-file"]),
    (["occlusion", "IMG", "--weights", "none", "--weights-file", "CKPT", "--out", "OUT/o.png"], ["--weights none"]),
    (["occlusion", "IMG", "--device", "cpu", "--amp", "--out", "OUT/o.png"], ["--amp", "cpu"]),
    (["featvis", "--layer", "_blocks.3", "--blur-sigma", "2", "--out", "OUT/v.png"], ["--blur-sigma", "--blur-every"]),
    (["featvis", "--layer", "_blocks.3", "--labels", "LABELS", "--out", "OUT/v.png"], ["--labels"]),
    (["featvis", "--layer", "_blocks.3", "--device", "cpu", "--amp", "--out", "OUT/v.png"], ["--amp"]),
    (["classviz", "--target", "goldfish", "--blur-sigma", "2", "--out", "OUT/c.png"], ["--blur-sigma"]),
    (["dream", "IMG", "--layer", "_blocks.3", "--octaves", "1", "--octave-scale", "2", "--out", "OUT/d.png"],
     ["--octave-scale", "--octaves 1"]),
    (["dream", "IMG", "--layer", "_blocks.3", "--device", "cpu", "--amp", "--out", "OUT/d.png"], ["--amp"]),
    (["invert", "IMG", "--layer", "_blocks.3", "--priors", "none", "--tv", "3", "--out", "OUT/i.png"],
     ["--tv", "--priors none"]),
    (["invert", "IMG", "--layer", "_blocks.3", "--tv", "0", "--beta", "3", "--out", "OUT/i.png"], ["--beta", "--tv 0"]),
    (["invert", "IMG", "--layer", "_blocks.3", "--alpha-weight", "0", "--alpha", "3", "--out", "OUT/i.png"],
     ["--alpha", "--alpha-weight 0"]),
    # the same name twice would only draw the same picture twice
    (["featvis", "--layer", "_blocks.3", "--units", "2:5,3", "--out", "OUT/v.png"], ["--units", "unit 3 twice"]),
    (["classviz", "--target", "goldfish", "--target", "1", "--out", "OUT/c.png"], ["--target", "class 1 (goldfish)"]),
    (["invert", "IMG", "--layer", "_blocks.3,_blocks.3", "--out", "OUT/i.png"], ["--layer", "'_blocks.3' twice"]),
]


@pytest.mark.parametrize("args, words", UNUSED, ids=[" ".join(a[:1] + [w for w in a[1:] if w.startswith("--")])
                                                      for a, _ in UNUSED])
def test_an_option_the_command_would_ignore_is_an_error(args, words, tmp_path, out, no_compute, cached_model):
    (tmp_path / "labels.txt").write_text("\n".join(f"c{i}" for i in range(1000)))
    subst = {"IMG": str(tench()), "LABELS": str(tmp_path / "labels.txt"), "CKPT": str(tmp_path / "ckpt.pt")}
    argv = [subst.get(a, a.replace("OUT", str(out))) for a in args]
    one_line_error(invoke(*argv), *words)
    assert_empty(out)


def test_layers_help_lists_only_the_options_it_acts_on():
    """`cnnviz layers` reads only the architecture: its --help does not offer the weights, labels
    and checkpoint options it would refuse (they are still parsed, for the one-line refusal above)."""
    text = invoke("layers", "--help").output
    assert "--model" in text
    for hidden in ("--weights", "--weights-file", "--labels", "--trust-checkpoint"):
        assert hidden not in text, hidden  # neither as an option nor in another option's help
    assert "--weights-file" in invoke("predict", "--help").output, "other commands still list them"


def test_the_same_options_work_where_they_act(tmp_path, cached_model):
    """The checks above reject only ignored options: with the option they depend on, they pass."""
    assert invoke("layers", "--weights", "none").exit_code == 0
    res = invoke("featvis", "--layer", "_blocks.1", "--units", "0", "--steps", "1", "--size", "32", "--param", "pixel",
                 "--blur-every", "1", "--blur-sigma", "1", "--quiet", "--out", tmp_path / "v.png")
    assert res.exit_code == 0, res.stderr
    res = invoke("dream", tench(), "--layer", "_blocks.1", "--octaves", "2", "--octave-scale", "2", "--steps", "1",
                 "--size", "32", "--quiet", "--out", tmp_path / "d.png")
    assert res.exit_code == 0, res.stderr


def test_predict_top_beyond_the_classes_is_an_error(no_compute, cached_model):
    res = invoke("predict", tench(), "--top", "5000")
    one_line_error(res, "--top 5000", "1000 classes")
    assert res.stdout == ""


@pytest.mark.parametrize("layer, channels", [(None, 1280), ("_blocks.3", 40)])
def test_activations_top_beyond_the_channels_is_an_error(layer, channels, out, no_compute, cached_model):
    """Before: cut silently to the layer's channels, then minutes drawing 1280 maps."""
    extra = ["--layer", layer] if layer else []
    one_line_error(invoke("activations", tench(), "--top", "5000", *extra, "--out", out / "a.png"),
                   "--top 5000", f"{channels} channels")
    assert_empty(out)


def test_occlusion_stride_longer_than_the_room_of_the_window_is_an_error(out, no_sweep, cached_model):
    """Window 32 on a 224 input moves over 192 px: a stride of 300 would leave it one position,
    with the right and bottom of the image never occluded."""
    one_line_error(invoke(*occ_args(out), "--window", "32", "--stride", "300"), "--stride 300", "192")
    assert_empty(out)


def test_rf_input_size_too_small_names_the_smallest_size_the_model_runs(lite0, cached_model):
    import re

    res = invoke("rf", "--input-size", "8")
    line = one_line_error(res, "--input-size 8x8", "too small")
    n = int(re.search(r"smallest input it runs is (\d+)x\1", line).group(1))

    def runs(side):
        try:
            with torch.no_grad():
                lite0.model.eval()(torch.zeros(1, 3, side, side))
            return True
        except RuntimeError:
            return False

    assert runs(n) and not runs(n - 1)  # the size named is the boundary, checked by running the model


def test_a_results_repr_is_one_short_line_not_its_arrays(out, cached_model):
    """In a terminal or notebook, `r` must not print every array (it printed 31,893 characters)."""
    res = invoke("occlusion", tench(), *SMALL, "--out", out / "f.png", "--save", out / "r.npz")
    assert res.exit_code == 0, res.stderr
    r = cnnviz.load_result(out / "r.npz")
    text = repr(r)
    assert "\n" not in text and len(text) < 600, text
    assert text.startswith("<OcclusionResult ") and "true_class_prob 2x2 float32" in text
    assert f"image {'x'.join(map(str, r.image.shape))} uint8" in text


def test_in_jupyter_a_result_shows_its_figure_then_a_summary(out, cached_model, monkeypatch):
    """Two outputs: the figure as PNG (an HTML output alone would be preferred by the notebook over
    the PNG and hide it) and a collapsed HTML summary with every parameter, escaped."""
    import IPython.display

    res = invoke("occlusion", tench(), *SMALL, "--target", "tench", "--out", out / "f.png", "--save", out / "r.npz")
    assert res.exit_code == 0, res.stderr
    r = cnnviz.load_result(out / "r.npz")
    r.params["note"] = "<script>alert(1)</script>"
    shown = []
    monkeypatch.setattr(IPython.display, "publish_display_data", lambda data, **kw: shown.append(data))
    r._ipython_display_()
    assert [sorted(d) for d in shown] == [["image/png", "text/plain"], ["text/html", "text/plain"]]
    assert shown[0]["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    html = shown[1]["text/html"]
    assert html.startswith("<details>") and "efficientnet_lite0" in html and "tench" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "true_class_prob" in html and "cnnviz_version" in html and shown[1]["text/plain"] == repr(r)
