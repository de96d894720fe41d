"""The GPU paths, on a machine with CUDA (skipped elsewhere; `benchmarks/gpu_check.sh` runs them
with `-m cuda`): each engine on CUDA against the same engine on the CPU (float32: agreement to
float rounding; float16 autocast: to its precision), the user's model back on its own device with
the same weights, and the batch search starting at 16 with the memory it measured."""

import numpy as np
import pytest
import torch

import cnnviz
from cnnviz.batching import Batches

from helpers import sample_image, snapshot

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_occlusion_on_cuda_equals_the_cpu_and_leaves_the_model_on_the_cpu(lite0):
    photo = sample_image(0)
    _, x = lite0.prepare(photo)
    before = snapshot(lite0.model, x)
    kw = dict(window=48, stride=32, progress=False)
    cpu = cnnviz.occlusion(lite0, photo, device="cpu", batch_size=8, **kw)
    gpu = cnnviz.occlusion(lite0, photo, device="cuda", amp=False, **kw)
    half = cnnviz.occlusion(lite0, photo, device="cuda", amp=True, **kw)
    np.testing.assert_allclose(gpu.true_class_prob, cpu.true_class_prob, atol=1e-4)
    np.testing.assert_allclose(gpu.feature_activation, cpu.feature_activation, rtol=1e-3, atol=1e-3)
    assert np.abs(half.true_class_prob - cpu.true_class_prob).max() < 2e-2, "float16 autocast drifted"
    assert gpu.provenance["device"].startswith("cuda") and gpu.params["batch_size_auto"]
    after = snapshot(lite0.model, x)
    assert after["device"].type == "cpu", "the model must go back to the device it came from"
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    assert torch.equal(before["out"], after["out"])


@pytest.mark.parametrize("method", ["saliency", "guided", "gradcam", "ig"])
def test_backprop_maps_on_cuda_equal_the_cpu(lite0, method):
    photos = [sample_image(0), sample_image(2)]
    extra = {"ig_steps": 16} if method == "ig" else {}
    cpu = cnnviz.attribute(lite0, photos, method=method, device="cpu", **extra)
    gpu = cnnviz.attribute(lite0, photos, method=method, device="cuda", **extra)
    assert list(gpu.top1) == list(cpu.top1)
    for a, b in zip(gpu.map, cpu.map):
        assert _spearman(a, b) > 0.999, method
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()))


def test_topk_scan_on_cuda_finds_the_same_images(lite0, tmp_path):
    photos = [sample_image(i) for i in range(0, 24, 2)]
    cpu = cnnviz.scan(lite0, photos, "_blocks.10", units="0:8", k=3, device="cpu", batch_size=4, progress=False)
    gpu = cnnviz.scan(lite0, photos, "_blocks.10", units="0:8", k=3, device="cuda", amp=False, progress=False)
    for unit in range(8):
        g, c = gpu.top(unit), cpu.top(unit)
        np.testing.assert_allclose([v for _, v, _ in g], [v for _, v, _ in c], rtol=2e-3, atol=1e-4)
        assert g[0][0] == c[0][0] or abs(c[0][1] - c[1][1]) < 1e-3 * abs(c[0][1]), unit


def test_the_batch_search_on_cuda_starts_at_16_and_measures_memory():
    b = Batches(4096, device="cuda")
    x = torch.zeros(1, 3, 224, 224, device="cuda")
    conv = torch.nn.Conv2d(3, 64, 3, padding=1).cuda()
    with torch.no_grad():
        for lo, hi in b:
            conv(x.expand(hi - lo, -1, -1, -1))
    rec = b.record()
    assert rec["batch_first"] == 16 and rec["batch_size"] >= 16
    assert b.item_bytes and b.item_bytes > 3 * 224 * 224 * 4, "memory per item was measured on the first batch"
