"""timm as a model source (`--model timm:ARCH[.TAG]`), with random weights or weights placed where
timm's loader finds them (the Hugging Face cache), since nothing can be downloaded here.

Oracles: timm's own evaluation transform for the preprocessing; the same state dict loaded
directly into timm's model for the cached-weights path; the engines' results on timm architectures
that a wrong layer choice or a broken hook would spoil (finite maps, the model left untouched)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz.errors import ModelError
from cnnviz.models import Preprocessing, load_model

from helpers import assert_untouched, one_line_error, sample_image, snapshot

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402

CLI = [sys.executable, "-m", "cnnviz_cli.main"]


@pytest.mark.parametrize("arch", ["convnext_atto", "resnet18.a1_in1k", "mobilenetv3_small_050.lamb_in1k"])
def test_preprocessing_equals_timms_own_evaluation_transform(arch):
    lm = load_model(f"timm:{arch}", weights="none")
    reference = create_transform(**resolve_data_config({}, model=timm.create_model(arch, pretrained=False)))
    for index in (0, 2):
        photo = sample_image(index)
        _, x = lm.prepare(photo)
        expected = reference(Image.open(photo).convert("RGB"))[None]
        assert x.shape == expected.shape
        assert float((x - expected).abs().max()) < 1e-4, f"{arch}: input differs from timm's transform"


def _hf_cache_with(tmp_path: Path, repo: str, state: dict) -> Path:
    """A Hugging Face hub cache holding `state` as repo's model.safetensors (the layout
    huggingface_hub writes: refs/main names the snapshot)."""
    from safetensors.torch import save_file

    cache = tmp_path / "hf-hub"
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return cache


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


@pytest.mark.slow
def test_weights_in_the_hugging_face_cache_are_found_and_used(tmp_path):
    torch.manual_seed(5)
    model = timm.create_model("resnet18.a1_in1k", pretrained=False).eval()
    state = model.state_dict()
    cache = _hf_cache_with(tmp_path, "timm/resnet18.a1_in1k", state)
    photo = sample_image(4)
    res = subprocess.run(CLI + ["predict", str(photo), "--model", "timm:resnet18", "--json", "--top", "3"],
                         capture_output=True, text=True, env=_env(HF_HUB_CACHE=str(cache)), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    lm = load_model("timm:resnet18", weights="none")
    with torch.no_grad():
        probs = torch.softmax(model(lm.prepare(photo)[1]), 1)[0]
    top = probs.topk(3)
    assert [p["index"] for p in got["top"]] == top.indices.tolist()
    assert np.allclose([p["prob"] for p in got["top"]], top.values.numpy(), atol=1e-5)


def test_no_cached_weights_and_no_network_is_one_line_at_once(tmp_path):
    t0 = time.perf_counter()
    res = subprocess.run(CLI + ["predict", str(sample_image(4)), "--model", "timm:resnet18"], capture_output=True,
                         text=True, env=_env(HF_HUB_CACHE=str(tmp_path / "empty")), cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    one_line_error(SimpleNamespace(exit_code=res.returncode, stdout=res.stdout, stderr=res.stderr),
                   "timm weights resnet18.a1_in1k", "--weights-file", "--weights none")
    assert time.perf_counter() - t0 < 60
    assert not list(tmp_path.iterdir())


def test_a_weights_file_is_loaded_into_the_timm_architecture(tmp_path):
    torch.manual_seed(7)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    lm = load_model("timm:mobilenetv3_small_050", weights_file=path)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(lm.model(x), model(x))
    assert lm.weights.startswith("mine.pt (sha256")


@pytest.mark.parametrize("name, weights, fragment", [
    ("timm:resnet19", "none", "did you mean timm:resnet18"),
    ("timm:resnet18.nope", None, "no pretrained weights resnet18.nope; choose one of"),
    ("timm:resnet18", "in22k", "no pretrained weights resnet18.in22k"),
    ("timm:resnet18.a1_in1k", "a2_in1k", "contradicts the tag"),
])
def test_bad_timm_names_are_one_line_errors(name, weights, fragment):
    with pytest.raises(ModelError, match=fragment) as e:
        load_model(name, weights=weights)
    assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto", "efficientnet_b0", "mobilenetv3_small_050",
                                  "regnety_002"])
def test_engines_run_on_timm_architectures(arch):
    """Random weights at 96x96 (small, still several feature-map cells deep): occlusion, Grad-CAM,
    saliency and guided backprop give finite maps of the input's size, and the model is left as it was."""
    torch.manual_seed(0)
    lm = load_model(f"timm:{arch}", weights="none", preprocessing=Preprocessing(crop=(96, 96), resize=110))
    pixels = np.asarray(lm.prepare(sample_image(6))[0])
    x = lm.prepare(pixels)[1]
    before = snapshot(lm.model, x)
    occ = cnnviz.occlusion(lm, pixels, window=32, stride=32, progress=False)
    assert occ.true_class_prob.shape == (3, 3) and np.isfinite(occ.true_class_prob).all()
    for method in ("gradcam", "saliency", "guided"):
        r = cnnviz.attribute(lm, pixels, method)
        assert r.map.shape == (1, 96, 96) and np.isfinite(r.map).all(), method
        assert float(np.abs(r.map).max()) > 0, f"{method}: an all-zero map on {arch}"
    assert_untouched(lm.model, x, before)
