"""Grad-CAM++, LayerCAM, Score-CAM and RISE (cnnviz.engines.attribution.cams) against their papers' definitions
computed another way on small models, and against the grad-cam package (pytorch-grad-cam) where it
computes the same quantity."""

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cnnviz.engines.attribution.cams import RiseMasks, grad_cam_pp, layer_cam, rise, score_cam
from cnnviz.layers import resolve_layer


def _toy(seed=0):
    """conv -> ReLU -> [A] -> ReLU -> global average -> linear: the class score is piecewise linear
    in A, where Grad-CAM++'s closed form is exact."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5)).eval()


def test_grad_cam_pp_equals_the_papers_higher_order_definition():
    """Chattopadhyay et al. eq. 10 with S = exp(Y): alpha = d2S / (2 d2S + sum_ab A_ab d3S) and
    w_k = sum_ij alpha_ij ReLU(dS/dA_ij), each derivative taken elementwise by autograd. The
    closed form drops the positive factor exp(Y)."""
    model = _toy()
    x = torch.randn(1, 3, 6, 6)
    layer = resolve_layer(model, "2", x)
    body, head = model[:3], model[3:]
    nonzero = 0
    for c in range(5):
        a = body(x).detach().requires_grad_(True)
        s = torch.exp(head(a)[0, c])
        (d1,) = torch.autograd.grad(s, a, create_graph=True)
        d2 = torch.zeros_like(a)
        d3 = torch.zeros_like(a)
        for idx in np.ndindex(*a.shape[1:]):
            (g2,) = torch.autograd.grad(d1[(0, *idx)], a, create_graph=True)
            (g3,) = torch.autograd.grad(g2[(0, *idx)], a, retain_graph=True)
            d2[(0, *idx)], d3[(0, *idx)] = g2[(0, *idx)].detach(), g3[(0, *idx)]
        sums = a.detach().sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(d1.detach() != 0, d2 / (2 * d2 + sums * d3), torch.zeros_like(d2))
        w = (alpha * torch.relu(d1.detach())).sum(dim=(2, 3), keepdim=True)
        expected = torch.relu((w * a.detach()).sum(1)) / torch.exp(head(a)[0, c]).detach()
        got, _ = grad_cam_pp(model, x, torch.tensor([c]), layer)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        nonzero += float(expected.abs().max()) > 0
    assert nonzero >= 2, "the toy must give some non-zero maps for the comparison to mean something"


def test_layer_cam_weights_every_position_by_its_own_positive_gradient():
    model = _toy(1)
    x = torch.randn(2, 3, 6, 6)
    layer = resolve_layer(model, "2", x)
    got, top1 = layer_cam(model, x, None, layer)
    for i in range(2):  # one image at a time, the gradient taken by hand through the head
        a = model[:3](x[i:i + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model[3:](a)[0, int(top1[i])], a)
        torch.testing.assert_close(got[i], torch.relu((torch.relu(g) * a.detach()).sum(1))[0])


def test_score_cam_weights_each_map_by_the_class_probability_of_its_masked_input():
    model = _toy(2)
    x = torch.randn(1, 3, 8, 8)
    layer = resolve_layer(model, "2", x)
    got, _ = score_cam(model, x, torch.tensor([3]), layer, batch=2)
    a = model[:3](x).detach()[0]
    expected = torch.zeros(a.shape[1:])
    for k in range(a.shape[0]):  # the definition, channel by channel
        up = torch.nn.functional.interpolate(a[k][None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
        mask = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else torch.zeros_like(up)
        with torch.no_grad():
            w = torch.softmax(model(x * mask), 1)[0, 3]
        expected += w * a[k]
    torch.testing.assert_close(got[0], torch.relu(expected))


def test_rise_masks_are_reproducible_and_keep_the_share_p():
    m = RiseMasks(400, (20, 28), grid=5, p=0.3, seed=4)
    whole = m[:]
    assert whole.shape == (400, 20, 28) and float(whole.min()) >= 0 and float(whole.max()) <= 1 + 1e-6
    assert abs(float(whole.mean()) - 0.3) < 0.03
    torch.testing.assert_close(m[100:150], whole[100:150])
    torch.testing.assert_close(RiseMasks(400, (20, 28), grid=5, p=0.3, seed=4)[:], whole)
    assert not torch.equal(RiseMasks(400, (20, 28), grid=5, p=0.3, seed=5)[:], whole)


class _Box(nn.Module):
    """Class 1's logit is the mean brightness of a box; class 0's is a constant."""

    def forward(self, x):
        inside = x[:, :, 4:10, 12:20].mean(dim=(1, 2, 3)) * 3 - 1.5
        return torch.stack([torch.zeros_like(inside), inside], 1)


def test_rise_finds_the_region_the_class_depends_on_and_equals_its_formula():
    x = torch.ones(1, 3, 16, 24)
    sal, top1 = rise(_Box(), x, torch.tensor([1]), masks=600, grid=4, p=0.5, seed=0, batch=64)
    assert int(top1) == 1 and sal.shape == (1, 16, 24)
    inside, outside = sal[0, 4:10, 12:20].mean(), torch.cat([sal[0, :, :8].flatten(), sal[0, 13:].flatten()]).mean()
    assert float(inside) > float(outside) + 0.05, (float(inside), float(outside))
    peak_y, peak_x = divmod(int(sal[0].argmax()), 24)
    assert 4 <= peak_y < 10 and 12 <= peak_x < 20, (peak_y, peak_x)
    m = RiseMasks(600, (16, 24), grid=4, p=0.5, seed=0)[:]
    probs = torch.softmax(_Box()(x * m[:, None]), 1)[:, 1]
    torch.testing.assert_close(sal[0], (probs[:, None, None] * m).sum(0) / (600 * 0.5))


# -- against pytorch-grad-cam ---------------------------------------------------------------------

def _their_post(cam: torch.Tensor, size) -> np.ndarray:
    """pytorch-grad-cam's post-processing, applied to our maps: min to 0 and max to 1, cv2 resize
    to the input, and the same scaling again after its (here single-layer) aggregation."""
    def scale(c):
        c = c - c.min()
        return c / (1e-7 + c.max())

    return scale(cv2.resize(scale(cam.numpy().astype(np.float32)), size[::-1]))


@pytest.mark.parametrize("ours, theirs", [(grad_cam_pp, "GradCAMPlusPlus"), (layer_cam, "LayerCAM")])
def test_grad_cam_pp_and_layer_cam_equal_pytorch_grad_cam_on_resnet18(ours, theirs):
    cams = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():  # class scores large enough that the package's 1e-7 in a denominator is negligible
        model.fc.weight *= 1000
    x = torch.randn(2, 3, 96, 96)
    layer = resolve_layer(model, "layer4", x[:1])
    targets = [3, 7]
    mine, _ = ours(model, x, torch.tensor(targets), layer)
    with getattr(cams, theirs)(model=model, target_layers=[model.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    for i in range(2):
        np.testing.assert_allclose(_their_post(mine[i], (96, 96)), ref[i], atol=2e-4)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules()), "hooks left on the model"


@pytest.mark.slow
@pytest.mark.parametrize("method, direct, size", [("gradcampp", grad_cam_pp, 64), ("layercam", layer_cam, 64),
                                                  ("scorecam", score_cam, 64), ("rise", None, 32)])
def test_attribute_serves_each_method_as_the_engine_computes_it(method, direct, size):
    """cnnviz.attribute(method) = the engine's map, upsampled to the input for the CAMs; the figure
    names the method; the model is left as it was. The CAMs at 64 px (ResNet-18's layer4 is then
    2x2, so the upsampling is not of a constant); RISE, which runs 2000 masked copies per image
    twice here (the engine, then the oracle), at 32 px: its map is computed at the input's own size
    from 7x7-cell masks, so 32 px still gives a map that varies from pixel to pixel."""
    import torch.nn.functional as F

    import cnnviz
    from cnnviz.models import LoadedModel, Preprocessing

    from helpers import assert_untouched, snapshot

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    lm = LoadedModel(model, "resnet18", "random", Preprocessing(crop=(size, size), resize=size + size // 7),
                     list("abcde"))
    x = torch.randn(2, 3, size, size)
    before = snapshot(model, x[:1])
    r = cnnviz.attribute(lm, x, method, target="c", batch_size=2, normalized=True, device="cpu")
    assert r.params["method"] == method and list(r.targets) == [2, 2] and r.map.shape == (2, size, size)
    if direct is None:
        expected, _ = rise(model, x, torch.tensor([2, 2]))
        assert float(expected.std(dim=(1, 2)).min()) > 0  # at 32 px too, a map that varies over the image
    else:
        layer = resolve_layer(model, r.params["layer"], x[:1])
        cam, _ = direct(model, x, torch.tensor([2, 2]), layer)
        expected = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(torch.from_numpy(r.map), expected, rtol=1e-4, atol=1e-6)
    assert_untouched(model, x[:1], before)
    fig = r.render()
    assert any(t.get_text().startswith({"gradcampp": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM",
                                        "rise": "RISE"}[method]) for t in fig.texts + [a.title for a in fig.axes])


# -- Score-CAM's max_channels, RISE's masks, progress ----------------------------------------------

class _Count:
    """A stand-in progress bar that adds up what the engine reports done (the work it ran)."""

    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


def _wide(seed=0):
    """conv -> ReLU -> [A: 12 channels] -> ReLU -> pool -> linear."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()


def _score_cam_by_hand(model, x, c, channels):
    """Score-CAM over exactly `channels` of layer "2" of `_wide`, one masked pass each."""
    a = model[:3](x).detach()[0]
    out = torch.zeros(a.shape[1:])
    for k in channels:
        up = torch.nn.functional.interpolate(a[k][None, None], size=x.shape[2:], mode="bilinear",
                                             align_corners=False)[0, 0]
        mask = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else torch.zeros_like(up)
        with torch.no_grad():
            out += torch.softmax(model(x * mask), 1)[0, c] * a[k]
    return torch.relu(out)


def test_score_cam_max_channels_is_score_cam_over_the_channels_of_largest_mean():
    """k = every channel: Score-CAM itself; k < all: Score-CAM over exactly the k channels whose
    spatial mean is largest (ranked here with numpy), one masked pass each and no more."""
    model = _wide(3)
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    layer = resolve_layer(model, "2", x)
    a = model[:3](x).detach()[0]
    full_bar, full_k_bar = _Count(), _Count()
    full, _ = score_cam(model, x, torch.tensor([2]), layer, batch=5, bar=full_bar)
    all_k, _ = score_cam(model, x, torch.tensor([2]), layer, batch=5, max_channels=12, bar=full_k_bar)
    torch.testing.assert_close(all_k, full)
    torch.testing.assert_close(full[0], _score_cam_by_hand(model, x, 2, range(12)))
    assert full_bar.n == full_k_bar.n == 12
    means = a.numpy().reshape(12, -1).mean(1)
    for k in (1, 4, 7):
        bar = _Count()
        got, _ = score_cam(model, x, torch.tensor([2]), layer, batch=3, max_channels=k, bar=bar)
        chosen = sorted(np.argsort(-means)[:k].tolist())
        torch.testing.assert_close(got[0], _score_cam_by_hand(model, x, 2, chosen))
        assert bar.n == k  # the work: one masked copy per channel kept
        assert not torch.allclose(got, full)  # an approximation, and a different map


def test_attribute_takes_max_channels_and_masks_and_records_them():
    import cnnviz
    from cnnviz.models import LoadedModel, Preprocessing

    model = _wide(4)
    lm = LoadedModel(model, "wide", "random", Preprocessing(crop=(16, 16), resize=18), list("abcde"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    r = cnnviz.attribute(lm, x, "scorecam", layer="2", max_channels=5, target=1, normalized=True, progress=False)
    assert (r.params["max_channels"], r.params["channels_used"], r.params["layer_channels"],
            r.params["channel_measure"]) == (5, 5, 12, "spatial mean")
    for i in range(2):
        means = model[:3](x[i:i + 1]).detach()[0].numpy().reshape(12, -1).mean(1)
        cam = _score_cam_by_hand(model, x[i:i + 1], 1, sorted(np.argsort(-means)[:5].tolist()))
        up = torch.nn.functional.interpolate(cam[None, None], size=(16, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(torch.from_numpy(r.map[i]), up[0, 0], rtol=1e-4, atol=1e-6)
    assert "5 of 12 channels" in r.render()._suptitle.get_text()
    full = cnnviz.attribute(lm, x, "scorecam", layer="2", target=1, normalized=True, progress=False)
    assert full.params["channels_used"] == 12 and full.params["channel_measure"] is None
    r50 = cnnviz.attribute(lm, x[:1], "rise", masks=50, target=1, normalized=True, progress=False)
    expected, _ = rise(model, x[:1], torch.tensor([1]), masks=50)
    torch.testing.assert_close(torch.from_numpy(r50.map), expected, rtol=1e-5, atol=1e-7)
    r80 = cnnviz.attribute(lm, x[:1], "rise", masks=80, target=1, normalized=True, progress=False)
    assert r50.params["masks"] == 50 and r80.params["masks"] == 80
    assert not np.allclose(r50.map, r80.map)
    assert "50 random masks" in r50.render()._suptitle.get_text()


@pytest.mark.parametrize("method, kwargs, fragment", [
    ("rise", {"masks": 0}, "masks (--masks) 0"), ("rise", {"masks": -5}, "masks (--masks) -5"),
    ("rise", {"masks": 100_001}, "masks (--masks) 100001"), ("rise", {"masks": 2.5}, "2.5"),
    ("scorecam", {"max_channels": 0}, "max_channels (--max-channels) 0"),
    ("scorecam", {"max_channels": -1}, "max_channels (--max-channels) -1"),
    ("scorecam", {"max_channels": 13}, "13 is more than layer '2' has (12 channels)"),
    ("scorecam", {"masks": 10}, "used only by rise"), ("rise", {"max_channels": 3}, "used only by scorecam"),
    ("gradcam", {"max_channels": 3}, "used only by scorecam")])
def test_bad_masks_and_max_channels_are_one_line_errors(method, kwargs, fragment):
    import cnnviz
    from cnnviz.errors import ParameterError
    from cnnviz.models import LoadedModel, Preprocessing

    lm = LoadedModel(_wide(), "wide", "random", Preprocessing(crop=(16, 16), resize=18), list("abcde"))
    layer = {"layer": "2"} if method != "rise" else {}
    with pytest.raises(ParameterError) as e:
        cnnviz.attribute(lm, torch.randn(1, 3, 16, 16), method, progress=False, normalized=True, **layer, **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("command, flag, n, unit", [("scorecam", "--max-channels", 40, "ch"),
                                                    ("rise", "--masks", 48, "mask")])
def test_cli_shows_a_progress_bar_and_takes_its_limits(tmp_path, monkeypatch, command, flag, n, unit):
    """The bar goes to stderr once the work has lasted PROGRESS_DELAY (here 0, so that a fast
    machine shows it too), counts the masked copies the option asked for, and --quiet silences it."""
    from click.testing import CliRunner

    from cnnviz.engines import common
    from cnnviz_cli.main import cli

    from helpers import ASSETS, one_line_error

    monkeypatch.setattr(common, "PROGRESS_DELAY", 0.0)
    base = [command, str(ASSETS / "rocket.jpg"), flag, str(n), "--model", "resnet18", "--weights", "none",
            "--device", "cpu"]
    res = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "a.png"), "--save", str(tmp_path / "a.npz")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert f"{command}:" in res.stderr and f"{n}/{n}" in res.stderr and f"{unit}/s" in res.stderr
    from cnnviz.results import load_result

    saved = load_result(tmp_path / "a.npz").params
    assert saved["channels_used" if command == "scorecam" else "masks"] == n
    quiet = CliRunner().invoke(cli, base + ["--quiet", "--out", str(tmp_path / "b.png")])
    assert quiet.exit_code == 0 and f"{n}/{n}" not in quiet.stderr
    one_line_error(CliRunner().invoke(cli, [command, str(ASSETS / "rocket.jpg"), flag, "0"]), "0")
