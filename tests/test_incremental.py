"""Incremental occlusion (cnnviz.engines.occlusion.incremental) against the full mode, the real oracle: the
same three panels on every model family it claims (sequential, residual, concatenating, depthwise
with batch norm), at window/stride pairs that touch the border and do not divide the input."""

import warnings

import numpy as np
import pytest
import torch
import torchvision

from cnnviz.engines.occlusion.engine import occlusion
from cnnviz.errors import CnnvizError
from cnnviz.models import LoadedModel, Preprocessing, load_model

from helpers import ViewNet, assert_untouched, one_line_error, sample_image, snapshot

NAMES = [f"c{i}" for i in range(1000)]


def _random(name: str, size: int, seed: int = 0, **kwargs) -> LoadedModel:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    return LoadedModel(model, name, "random", Preprocessing(crop=(size, size), resize=size), NAMES)


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def assert_same_panels(full, inc):
    """Probabilities within 1e-4, the same top class wherever the top two differ by more than
    1e-4 (checked on the full pass's probabilities), feature totals within 1e-4 relative."""
    assert inc.params["mode"] == "incremental" and full.params["mode"] == "full"
    np.testing.assert_allclose(inc.true_class_prob, full.true_class_prob, atol=1e-4, rtol=0)
    np.testing.assert_allclose(inc.top_class_prob, full.top_class_prob, atol=1e-4, rtol=0)
    differ = inc.top_class != full.top_class
    assert not differ.any() or np.all(np.abs(inc.top_class_prob[differ] - full.top_class_prob[differ]) < 1e-4)
    scale = np.abs(full.feature_activation).max()
    np.testing.assert_allclose(inc.feature_activation, full.feature_activation, rtol=1e-4, atol=1e-4 * scale)
    assert inc.true_class_prob.std() > 0 or full.true_class_prob.std() == 0
    assert full.feature_activation.std() > 0, "the feature panel must vary for the comparison to mean anything"


def _both(lm, pixels, **kw):
    full = occlusion(lm, pixels, mode="full", progress=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these models are understood: no fallback, no warning
        inc = occlusion(lm, pixels, mode="incremental", progress=False, **kw)
    return full, inc


CASES = [  # model, input size, layer followed (None: the default, last block), window, stride
    ("alexnet", 128, None, 32, 16),
    ("alexnet", 128, "features.4", 40, 29),  # 29 does not divide; the last window ends at 116
    ("vgg11", 64, None, 16, 12),
    ("vgg11", 64, "features.5", 24, 20),  # last window at 40..64 touches the border
    ("resnet18", 96, None, 32, 16),
    ("resnet18", 96, "layer2.0", 20, 19),
    ("googlenet", 96, None, 32, 32),
    ("googlenet", 96, "inception3a", 24, 24),
]


@pytest.mark.parametrize("name, size, layer, window, stride", CASES)
def test_incremental_equals_full_on_random_weight_models(name, size, layer, window, stride):
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    lm = _random(name, size, **kwargs)
    pixels, _ = lm.prepare(sample_image(10))
    full, inc = _both(lm, pixels, window=window, stride=stride, fill=0.3, layer=layer, batch_size=8)
    assert_same_panels(full, inc)
    p = inc.params
    assert 0 < p["macs_incremental"] < p["macs_full"] and p["macs_ratio"] > 1.0
    assert p["recomputed_fraction"] and all(0 < f <= 1 for f in p["recomputed_fraction"].values())
    assert min(p["recomputed_fraction"].values()) < 1, "the first layers must be recomputed in part only"


@pytest.mark.parametrize("window, stride, layer", [(40, 48, None), (32, 54, "_blocks.3"), ((24, 56), (50, 28), None)])
def test_incremental_equals_full_on_efficientnet_lite0_with_a_real_photo(lite0, window, stride, layer):
    pixels, _ = lite0.prepare(sample_image(10))
    full, inc = _both(lite0, pixels, window=window, stride=stride, layer=layer, batch_size=8)
    assert_same_panels(full, inc)
    assert full.true_class_prob.min() < full.params["baseline_prob"] - 0.01, "nothing changed: a vacuous test"
    assert inc.params["macs_ratio"] > 1.2


def test_unfolded_lite0_with_its_explicit_same_padding_and_functional_convolutions(lite0):
    pixels, _ = lite0.prepare(sample_image(12))
    full, inc = _both(lite0, pixels, window=48, stride=44, fold=False, batch_size=4)
    assert_same_panels(full, inc)


def test_theoretical_count_on_vgg16_at_224_matches_the_issue():
    torch.manual_seed(0)
    from cnnviz.engines.occlusion.incremental.sweep import IncrementalGraph

    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        g = IncrementalGraph(model, x, "features.29", None)
        logits, total = g.run(torch.tensor([96]), torch.tensor([96]), (32, 32), torch.zeros(3), 1, 0)
        occluded = x.clone()
        occluded[..., 96:128, 96:128] = 0
        ref = model(occluded)
    assert g.macs_full == pytest.approx(15.47e9, rel=0.01)
    assert g.record()["macs_incremental"] < 0.2 * g.macs_full  # ~2.4 G of 15.5 in the middle of the image
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


class _Branchy(torch.nn.Module):
    """An operation the engine does not know (torch.roll) between two convolutions."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        h = torch.roll(torch.relu(self.a(x)), 1, 3)
        h = torch.relu(self.b(h))
        return self.fc(h.mean((2, 3)))


def test_an_unknown_operation_is_computed_whole_with_a_warning_and_stays_exact():
    torch.manual_seed(3)
    lm = LoadedModel(_Branchy().eval(), "branchy", "random", Preprocessing(crop=(64, 64), resize=64), NAMES[:10])
    pixels, _ = lm.prepare(sample_image(10))
    full = occlusion(lm, pixels, window=16, stride=12, layer="b", target=2, progress=False)
    with pytest.warns(UserWarning, match="roll"):
        inc = occlusion(lm, pixels, window=16, stride=12, layer="b", target=2, mode="incremental", progress=False)
    assert_same_panels(full, inc)
    assert "roll" in " ".join(inc.params["not_understood"])


class _Untraceable(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() > 0:
            h = h * 2
        return self.fc(h.mean((2, 3)))


def _untraceable_lm():
    torch.manual_seed(4)
    return LoadedModel(_Untraceable().eval(), "untraceable", "random", Preprocessing(crop=(48, 48), resize=48),
                       NAMES[:5])


def test_an_untraceable_model_falls_back_to_the_full_mode_with_a_warning():
    lm = _untraceable_lm()
    pixels, _ = lm.prepare(sample_image(10))
    full = occlusion(lm, pixels, window=16, stride=16, progress=False)
    with pytest.warns(UserWarning, match="cannot be traced"):
        r = occlusion(lm, pixels, window=16, stride=16, mode="incremental", progress=False)
    assert r.params["mode"] == "full" and r.params["mode_requested"] == "incremental"
    assert "cannot be traced" in r.params["mode_fallback"]
    np.testing.assert_array_equal(r.true_class_prob, full.true_class_prob)


def test_incremental_mode_on_a_model_that_needs_the_plain_memory_layout():
    """The graph's unoccluded pass is also the layout check: a forward that calls .view gets the
    plain layout, and the map still equals the full mode's."""
    torch.manual_seed(6)
    model = ViewNet(48, 2, 5).eval()
    with pytest.raises(RuntimeError, match="view"):
        model(torch.zeros(1, 3, 48, 48).contiguous(memory_format=torch.channels_last))
    lm = LoadedModel(model, "viewnet", "random", Preprocessing(crop=(48, 48), resize=48), NAMES[:5])
    pixels, _ = lm.prepare(sample_image(10))
    full, inc = _both(lm, pixels, window=16, stride=8, layer="conv")
    assert inc.params["memory_format"] == full.params["memory_format"] == "contiguous_format"
    assert_same_panels(full, inc)


def test_model_is_untouched_after_an_incremental_sweep_and_after_one_that_raised(monkeypatch):
    lm = _random("resnet18", 64, seed=2)
    lm.model.train()  # the user's mode must come back
    pixels, _ = lm.prepare(sample_image(10))
    x = lm.preprocessing.normalize(pixels)
    before = snapshot(lm.model, x)
    occlusion(lm, pixels, window=32, stride=16, mode="incremental", batch_size=4, progress=False)
    assert_untouched(lm.model, x, before)

    from cnnviz.engines.occlusion.incremental import sweep

    real, calls = sweep.IncrementalGraph.run, []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure midway")
        return real(self, *a, **k)

    monkeypatch.setattr(sweep.IncrementalGraph, "run", failing)
    with pytest.raises(RuntimeError, match="midway"):
        occlusion(lm, pixels, window=32, stride=16, mode="incremental", batch_size=4, fold=False,
                  layer="layer3", progress=False)
    assert len(calls) == 2
    assert_untouched(lm.model, x, before)


@pytest.mark.parametrize("bad", ["fast", "", None, 3])
def test_bad_modes_are_one_line_errors(bad):
    lm = _untraceable_lm()
    pixels, _ = lm.prepare(sample_image(10))
    with pytest.raises(CnnvizError, match="full, incremental") as e:
        occlusion(lm, pixels, mode=bad, progress=False)
    assert "\n" not in str(e.value)


# -- the command line -------------------------------------------------------------------------------
def _cli(args):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    return CliRunner().invoke(cli, ["occlusion", str(sample_image(10)), *args])


def test_cli_incremental_summary_names_the_mode_and_the_counted_speed_up(tmp_path):
    import cnnviz

    res = _cli(["--model", "alexnet", "--weights", "none", "--window", "32", "--stride", "32", "--mode",
                "incremental", "--quiet", "--out", str(tmp_path / "f.png"), "--save", str(tmp_path / "r.npz")])
    assert res.exit_code == 0, res.output
    p = cnnviz.load_result(tmp_path / "r.npz").params
    assert p["mode"] == "incremental"
    assert f"mode incremental: {p['macs_incremental'] / 1e9:.2f} of {p['macs_full'] / 1e9:.2f} G" in res.stdout
    assert f"({p['macs_ratio']:.1f}x fewer, counted)" in res.stdout
    assert (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("bad", ["fast", "Incremental2", ""])
def test_cli_bad_mode_is_a_one_line_error_and_writes_nothing(tmp_path, bad):
    res = _cli(["--model", "alexnet", "--weights", "none", "--mode", bad, "--out", str(tmp_path / "f.png"),
                "--quiet"])
    one_line_error(res, "--mode", repr(bad), "full, incremental")
    assert list(tmp_path.iterdir()) == []


def test_cli_incremental_on_an_untraceable_model_runs_full_and_says_so(tmp_path, monkeypatch):
    import cnnviz_cli.main as climain

    monkeypatch.setattr(climain, "_load", lambda spec, structure_only=False: _untraceable_lm())
    res = _cli(["--model", "anything", "--window", "16", "--stride", "16", "--mode", "incremental", "--quiet",
                "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    assert "mode full (incremental unavailable: _Untraceable cannot be traced" in res.stdout
    assert "Traceback" not in res.output


@pytest.mark.parametrize("bad", ["0", "-0.5", "1.5", "half", "nan"])
def test_cli_tau_outside_0_1_is_a_one_line_error_and_writes_nothing(tmp_path, bad):
    res = _cli(["--model", "alexnet", "--weights", "none", "--mode", "approximate", "--tau", bad, "--out",
                str(tmp_path / "f.png"), "--quiet"])
    one_line_error(res, "--tau", "(0, 1]")
    assert list(tmp_path.iterdir()) == []


def test_approximate_mode_records_its_approximations_and_tau_one_without_drill_down_is_exact(monkeypatch):
    lm = _random("resnet18", 96, seed=5)
    pixels, _ = lm.prepare(sample_image(10))
    exact = occlusion(lm, pixels, window=24, stride=12, mode="incremental", batch_size=8, progress=False)
    r = occlusion(lm, pixels, window=24, stride=12, mode="approximate", tau=0.5, batch_size=8, progress=False)
    p = r.params
    assert p["mode"] == "approximate" and p["tau"] == 0.5 and p["tau_truncated_layers"]
    assert any("tau=0.5" in a for a in p["approximations"]) and any("drill-down" in a for a in p["approximations"])
    d = p["drill_down"]
    assert d["computed_positions"] + d["filled_positions"] == p["num_positions"] and d["filled_positions"] > 0
    assert p["macs_incremental"] < exact.params["macs_incremental"]
    # the figure says the map is approximate, with how much was computed; the exact one does not
    import matplotlib.pyplot as plt

    for result, says in ((r, f"approximate mode: tau 0.5, {d['computed_positions']} of {p['num_positions']} "
                              "positions computed"), (exact, None)):
        fig = result.render()
        title = fig._suptitle.get_text().replace("\n", " ")
        plt.close(fig)
        assert (says in title) if says else "approximate" not in title, title
    # with nothing cut (tau 1) and every coarse position drilled, the approximate mode is the exact one
    from cnnviz.engines.occlusion.incremental import drill

    monkeypatch.setattr(drill, "TOP_FRACTION", 1.0)
    same = occlusion(lm, pixels, window=24, stride=12, mode="approximate", tau=1.0, batch_size=8, progress=False)
    assert same.params["drill_down"]["filled_positions"] == 0
    np.testing.assert_allclose(same.true_class_prob, exact.true_class_prob, atol=1e-6)
    np.testing.assert_allclose(same.feature_activation, exact.feature_activation, rtol=1e-5)


def test_auto_tau_measures_each_tried_tau_against_the_exact_map_and_keeps_the_smallest_within_tolerance(monkeypatch):
    """tau="auto": the errors it records for each tried tau equal the relative RMS difference, at its
    calibration positions, between an all-positions map at that tau (drill-down made to compute
    everything) and the full mode's map; it tries them largest first until one fails and keeps the
    smallest within TAU_TOLERANCE, else 1; and the
    calibration positions themselves come out exact."""
    from cnnviz.engines.occlusion import incremental
    from cnnviz.engines.occlusion.incremental import drill

    lm = _random("resnet18", 96, seed=5)
    pixels, _ = lm.prepare(sample_image(10))
    kw = dict(window=24, stride=12, batch_size=8, progress=False)
    exact = occlusion(lm, pixels, mode="full", **kw).true_class_prob.ravel().astype(np.float64)
    auto = occlusion(lm, pixels, mode="approximate", tau="auto", **kw)
    info = auto.params["tau_auto"]
    ny, nx = auto.true_class_prob.shape
    coarse = drill.coarse_positions(ny, nx)
    calib = coarse[np.unique(np.linspace(0, len(coarse) - 1, info["positions"]).round().astype(int))]
    np.testing.assert_allclose(auto.true_class_prob.ravel()[calib], exact[calib], atol=1e-5)
    monkeypatch.setattr(drill, "TOP_FRACTION", 1.0)  # every position computed at the given tau
    errors = {}
    for tau in incremental.AUTO_TAUS:
        at = occlusion(lm, pixels, mode="approximate", tau=tau, **kw).true_class_prob.ravel().astype(np.float64)
        d = at[calib] - exact[calib]
        errors[str(tau)] = np.sqrt(np.mean(d ** 2)) / exact[calib].std()
    for tau, err in info["tried"].items():
        assert err == pytest.approx(errors[tau], rel=1e-3, abs=1e-4)
    tried = list(info["tried"])
    assert tried == [str(t) for t in incremental.AUTO_TAUS[: len(tried)]], "tried in order"
    ok = [info["tried"][t] <= incremental.TAU_TOLERANCE for t in tried]
    assert all(ok[:-1]) and (len(tried) == len(incremental.AUTO_TAUS) or not ok[-1]), "stops at the first failure"
    passed = [float(t) for t, good in zip(tried, ok) if good]
    assert info["chosen"] == (passed[-1] if passed else 1.0) == auto.params["tau"]
    # a tolerance nothing fails keeps the first tau, and the map is then that tau's at every computed position
    monkeypatch.setattr(drill, "TOP_FRACTION", 0.35)
    monkeypatch.setattr(incremental, "TAU_TOLERANCE", 1e9)
    loose = occlusion(lm, pixels, mode="approximate", tau="auto", **kw)
    fixed = occlusion(lm, pixels, mode="approximate", tau=incremental.AUTO_TAUS[-1], **kw)
    assert loose.params["tau"] == incremental.AUTO_TAUS[-1]
    assert list(loose.params["tau_auto"]["tried"]) == [str(t) for t in incremental.AUTO_TAUS]
    rest = np.setdiff1d(np.arange(ny * nx), calib)
    np.testing.assert_allclose(loose.true_class_prob.ravel()[rest], fixed.true_class_prob.ravel()[rest], atol=2e-3)


@pytest.mark.slow
def test_approximate_default_keeps_lite0_map_on_a_real_photo(lite0):
    """On a real photo with real weights the default approximate map ranks positions like the exact
    map (Spearman >= 0.9 at stride 16, the coarser and harder grid) and its largest drop is at or
    next to the exact one's; a tau fixed at 0.5 would not keep it (the auto rule must reject it)."""
    from scipy.stats import spearmanr

    kw = dict(window=32, stride=16, progress=False)
    exact = occlusion(lite0, sample_image(80), mode="incremental", **kw).true_class_prob
    auto = occlusion(lite0, sample_image(80), mode="approximate", **kw)
    assert auto.params["tau"] > 0.5 and auto.params["tau_auto"]["tried"].get("0.5", np.inf) > 0.1
    assert spearmanr(exact.ravel(), auto.true_class_prob.ravel())[0] >= 0.9
    (ya, xa), (ye, xe) = (np.unravel_index(np.argmin(m), m.shape) for m in (auto.true_class_prob, exact))
    assert max(abs(int(ya) - int(ye)), abs(int(xa) - int(xe))) <= 1


def test_the_cache_of_layer_outputs_is_reported():
    """params["cache_mb"]["kept"]: the unoccluded outputs kept, counted by hand on a small stack
    (input 3x32x32, conv 8x32x32, relu 8x32x32, pool 8x16x16, flatten 2048, linear 10; float32)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10)).eval()
    lm = LoadedModel(model, "stack", "random", Preprocessing(crop=(32, 32), resize=32), NAMES[:10])
    r = occlusion(lm, np.full((32, 32, 3), 128, np.uint8), window=8, stride=8, mode="incremental", layer="0",
                  batch_size=4, progress=False)
    kept = 4 * (3 * 32 * 32 + 8 * 32 * 32 * 2 + 8 * 16 * 16 + 8 * 16 * 16 + 10)
    assert r.params["cache_mb"]["kept"] == round(kept / 2**20, 2)
    assert r.params["cache_mb"]["padded"] > 0
