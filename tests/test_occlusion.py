"""The occlusion engine against independent computations, and on a real model with real pixels."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz
from cnnviz.engines.occlusion.engine import occlusion
from cnnviz.errors import CnnvizError
from cnnviz.models import LoadedModel, Preprocessing, load_model

from helpers import SAMPLE, ViewNet, assert_untouched, paste, sample_image, sample_rows, snapshot


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def bird(lite0):
    return lite0.prepare(sample_image(10))  # (pixels, normalized tensor) of a brambling photo


def _captum_prob_drop(model, x, target, window, baseline):
    from captum.attr import Occlusion

    def probs(inp):
        return torch.softmax(model(inp), dim=1)

    with torch.no_grad():
        attr = Occlusion(probs).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, window, window),
                                          baselines=baseline, target=target, perturbations_per_eval=16)
    # non-overlapping windows: every pixel of a window carries that window's drop
    return attr[0, 0, ::window, ::window].numpy()


def test_probability_drop_equals_captum_occlusion_on_efficientnet_lite0(lite0, bird):
    pixels, x = bird
    r = occlusion(lite0, pixels, window=32, stride=32, batch_size=16, progress=False)
    expected = _captum_prob_drop(lite0.model, x, r.params["target"], 32, 0.0)  # gray fill is 0 after normalization
    assert r.true_class_prob.shape == expected.shape == (7, 7)
    np.testing.assert_allclose(r.prob_drop, expected, atol=2e-5)
    assert expected.max() > 0.05, "the oracle comparison is vacuous if nothing changes"


def test_probability_drop_equals_captum_with_a_black_fill_on_a_resnet(bird):
    torch.manual_seed(0)
    pre = Preprocessing()
    lm = LoadedModel(torchvision.models.resnet18().eval(), "resnet18", "random", pre, [f"c{i}" for i in range(1000)])
    pixels, _ = bird
    x = pre.normalize(pixels)
    r = occlusion(lm, pixels, window=56, stride=56, fill="black", target=7, progress=False)
    baseline = pre.fill_value("black").expand(1, 3, 224, 224)
    expected = _captum_prob_drop(lm.model, x, 7, 56, baseline)
    np.testing.assert_allclose(r.prob_drop, expected, atol=1e-6, rtol=1e-4)


def test_overlapping_sweep_equals_a_one_image_at_a_time_brute_force(bird):
    """All three panels, with overlapping windows, against a plain loop over positions."""
    torch.manual_seed(1)
    model = torchvision.models.alexnet().eval()
    pre = Preprocessing()
    lm = LoadedModel(model, "alexnet", "random", pre, [f"c{i}" for i in range(1000)])
    pixels, _ = bird
    x = pre.normalize(pixels)
    r = occlusion(lm, pixels, window=40, stride=23, fill=0.3, target=3, layer="features.11", channel=5,
                  batch_size=7, progress=False)
    fill = pre.fill_value(0.3)
    ys = list(range(0, 224 - 40 + 1, 23))
    assert list(r.positions_y) == ys and list(r.positions_x) == ys
    for i, y in enumerate(ys):
        for j, xx in enumerate(ys):
            occluded = x.clone()
            occluded[0, :, y:y + 40, xx:xx + 40] = fill
            with torch.no_grad():
                p = torch.softmax(model(occluded), dim=1)[0]
                act = model.features[:12](occluded)[0, 5].sum()
            assert r.true_class_prob[i, j] == pytest.approx(float(p[3]), abs=1e-6)
            assert r.top_class[i, j] == int(p.argmax())
            assert r.feature_activation[i, j] == pytest.approx(float(act), rel=1e-5, abs=1e-4)


def test_defaults_follow_zeiler_fergus(lite0, bird):
    pixels, x = bird
    r = occlusion(lite0, pixels, window=56, stride=56, progress=False)
    with torch.no_grad():
        probs = torch.softmax(lite0.model(x), 1)[0]
        head = lite0.model.extract_features(x)[0]
    assert r.params["target"] == int(probs.argmax())  # top-1 of the unoccluded image
    assert r.params["layer"] == "_swish@1"  # the last convolutional block
    assert r.params["channel"] == int(head.sum((1, 2)).argmax())  # strongest response
    np.testing.assert_allclose(r.feature_map, head[r.params["channel"]].numpy(), rtol=1e-5, atol=1e-5)
    assert r.params["baseline_prob"] == pytest.approx(float(probs.max()), abs=1e-6)




@pytest.mark.slow
def test_largest_probability_drop_falls_on_the_pasted_object(lite0):
    rng = np.random.default_rng(0)
    rows = sample_rows()
    picks = rng.choice(len(rows), size=40, replace=False)
    kept, hits = 0, 0
    for k in picks:
        row = rows[int(k)]
        box = 112
        top, left = (int(v) for v in rng.integers(0, 224 - box + 1, size=2))
        img = paste(Image.open(SAMPLE / "images" / row["file"]).convert("RGB"), box, top, left)
        pixels, x = lite0.prepare(img)
        assert pixels.shape == (224, 224, 3)
        with torch.no_grad():
            pred = int(lite0.model(x).argmax())
        if pred != int(row["class_index"]):
            continue
        kept += 1
        r = occlusion(lite0, pixels, window=32, stride=16, target=pred, batch_size=4, progress=False)
        i, j = np.unravel_index(np.argmin(r.true_class_prob), r.true_class_prob.shape)
        cy, cx = r.positions_y[i] + 16, r.positions_x[j] + 16
        hits += (top <= cy < top + box) and (left <= cx < left + box)
        if kept == 12:
            break
    assert kept >= 8, f"too few pasted images classified correctly ({kept})"
    assert hits / kept >= 0.75, f"largest drop on the object in only {hits}/{kept} cases"


class _Flaky(torch.nn.Module):
    """A user model whose forward fails on batches of several images, i.e. during the sweep, after
    the engine has hooked it (as an out-of-memory error would)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.fail = inner, False

    def forward(self, x):
        if self.fail and x.shape[0] > 1:
            raise RuntimeError("simulated failure midway")
        return self.inner(x)


def test_model_is_untouched_after_a_sweep_and_after_one_that_raised(bird):
    torch.manual_seed(2)
    model = _Flaky(torchvision.models.resnet18())
    model.train()  # the user's mode must come back, not eval
    lm = LoadedModel(model, "flaky", "random", Preprocessing(), [f"c{i}" for i in range(1000)])
    pixels, _ = bird
    x = lm.preprocessing.normalize(pixels)
    before = snapshot(model, x)
    occlusion(lm, pixels, window=112, stride=56, batch_size=4, progress=False)
    assert_untouched(model, x, before)

    model.fail = True
    with pytest.raises(RuntimeError, match="midway"):
        occlusion(lm, pixels, window=112, stride=56, batch_size=4, layer="inner.layer3", progress=False)
    model.fail = False
    assert_untouched(model, x, before)


def test_model_is_untouched_after_a_bad_argument(lite0, bird):
    pixels, x = bird
    before = snapshot(lite0.model, x)
    for kwargs in ({"channel": 5000}, {"layer": "_blocks.99"}, {"target": "no such class"}, {"window": 300}):
        with pytest.raises(CnnvizError):
            occlusion(lite0, pixels, progress=False, **kwargs)
    assert_untouched(lite0.model, x, before)


def test_saved_result_reloads_identically(lite0, bird, tmp_path):
    r = occlusion(lite0, bird[0], window=56, stride=28, progress=False)
    r.save(tmp_path / "occ.npz")
    back = cnnviz.load_result(tmp_path / "occ.npz")
    assert type(back) is type(r)
    for name, arr in r.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr)
    assert back.params == r.params
    assert back.provenance["weights"] == lite0.weights
    png = back._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_needs_the_plain_memory_layout_still_works(bird):
    torch.manual_seed(5)
    model = ViewNet(224, 4, 10).eval()
    with pytest.raises(RuntimeError, match="view"):
        model(torch.zeros(1, 3, 224, 224).contiguous(memory_format=torch.channels_last))
    lm = LoadedModel(model, "viewnet", "random", Preprocessing(), [f"c{i}" for i in range(10)])
    pixels, _ = bird
    r = occlusion(lm, pixels, window=112, stride=112, target=2, progress=False)
    assert r.params["memory_format"] == "contiguous_format"
    x = lm.preprocessing.normalize(pixels)
    x[..., :112, 112:] = 0.0  # the occluder at row 0, column 1 with the (0 after normalization) gray fill
    with torch.no_grad():
        assert r.true_class_prob[0, 1] == pytest.approx(float(torch.softmax(model(x), 1)[0, 2]), abs=1e-6)


def test_cli_summary_names_the_measured_batch_choice_and_a_given_one(tmp_path):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    base = ["occlusion", str(sample_image(10)), "--model", "alexnet", "--weights", "none", "--window", "32",
            "--stride", "16", "--quiet"]
    auto = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "a.png"), "--save", str(tmp_path / "a.npz")])
    assert auto.exit_code == 0, auto.stderr
    saved = cnnviz.load_result(tmp_path / "a.npz").params
    assert saved["batch_size_auto"] is True
    assert f"batch {saved['batch_size']} (chosen by measuring" in auto.stdout  # where it starts depends on the load
    assert all(f" {size}: " in auto.stdout for size in saved["batch_trials"]), auto.stdout
    fixed = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "b.png"), "--batch-size", "12"])
    assert fixed.exit_code == 0, fixed.stderr
    assert "batch 12\n" in fixed.stdout and "measuring" not in fixed.stdout


@pytest.mark.parametrize("bad", ["0", "-4", "2.5", "many"])
def test_bad_batch_sizes_are_one_line_cli_errors(tmp_path, bad):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli
    from helpers import one_line_error

    res = CliRunner().invoke(cli, ["occlusion", str(sample_image(10)), "--model", "alexnet", "--weights", "none",
                                   "--batch-size", bad, "--out", str(tmp_path / "f.png"), "--quiet"])
    one_line_error(res, "batch")
    assert not (tmp_path / "f.png").exists()
