"""Image simplification (Zhou et al. 2015, Fig. 2): the greedy search against a brute-force loop
of single forward passes on a tiny case, independence of the batch size, the paper's result with
EfficientNet-Lite0 on real photos (the class kept with at least half of the image removed), and
bad input."""

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz
from cnnviz.engines.experiments.simplify import simplify, superpixels
from cnnviz.errors import ParameterError, TargetError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import assert_empty, assert_untouched, bad_image_file, one_line_error, sample_image, snapshot

SIDE = 32


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3)).eval()
    lm = LoadedModel(model, "tiny", "random", Preprocessing(crop=(SIDE, SIDE), resize=None), ["a", "b", "c"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    blocks = (np.arange(SIDE)[:, None] // 11) * 3 + (np.arange(SIDE)[None, :] // 11)  # 9 squares of about 11 x 11
    return lm, image, blocks


def _brute_greedy(lm, image, segments):
    """The greedy search written out: every candidate its own forward pass; stop when the best
    removal changes the top-1 class."""
    x0 = lm.preprocessing.normalize(image)
    with torch.no_grad():
        p0 = torch.softmax(lm.model(x0), 1)[0]
    cls = int(p0.argmax())
    removed, order, probs = np.zeros(segments.shape, bool), [], [float(p0[cls])]
    while True:
        best = None
        for s in sorted(set(segments[~removed].tolist())):
            x = x0.clone()
            x[:, :, torch.as_tensor(removed | (segments == s))] = 0.0  # the mean is 0 once normalized
            with torch.no_grad():
                p = torch.softmax(lm.model(x), 1)[0]
            if best is None or float(p[cls]) > best[1]:
                best = (s, float(p[cls]), int(p.argmax()))
        if best is None or best[2] != cls:
            return cls, order, probs, best
        removed |= segments == best[0]
        order.append(best[0])
        probs.append(best[1])


def test_the_greedy_search_equals_a_brute_force_loop(tiny):
    lm, image, blocks = tiny
    x0 = lm.preprocessing.normalize(image)
    before = snapshot(lm.model, x0)
    r = simplify(lm, image, segments=blocks, device="cpu", progress=False)
    assert_untouched(lm.model, x0, before)
    cls, order, probs, stop = _brute_greedy(lm, image, blocks)
    k = r.params["removed"][0]
    assert r.params["classes"] == [cls] and k == len(order) >= 3, (k, order)
    assert r.order[0, :k].tolist() == order and np.all(r.order[0, k:] == -1)
    np.testing.assert_allclose(r.prob[0, :k + 1], probs, rtol=1e-5, atol=1e-7)
    assert r.fraction[0, k] == pytest.approx(np.isin(blocks, order).mean())
    if stop is not None:
        assert r.params["next_class"] == [stop[2]] and r.next_prob[0] == pytest.approx(stop[1], rel=1e-5)
    removed = np.isin(blocks, order)
    fill = np.round(np.array(lm.preprocessing.mean) * 255)
    assert np.abs(r.minimal[0][removed] - fill).max() <= 1 and np.array_equal(r.minimal[0][~removed], image[~removed])
    # the batch size changes nothing (every batch is padded to full groups)
    again = simplify(lm, image, segments=blocks, batch_size=3, device="cpu", progress=False)
    np.testing.assert_array_equal(again.order, r.order)
    np.testing.assert_array_equal(again.prob, r.prob)


def test_slic_superpixels_cover_the_image_with_consecutive_labels():
    image = np.asarray(cnnviz.load_model("resnet18", weights="none").prepare(sample_image(0))[0])
    seg = superpixels(image, 30)
    assert seg.shape == image.shape[:2] and seg.min() == 0
    assert set(np.unique(seg)) == set(range(seg.max() + 1)) and 15 <= seg.max() + 1 <= 45


@pytest.mark.slow
def test_lite0_keeps_the_class_of_real_photos_with_half_of_the_image_removed():
    """Zhou et al.: a small part of the image suffices for the class. Here with 8 superpixels
    requested (SLIC makes 5-6; to keep the test short; the README figure uses 40)."""
    lm = cnnviz.load_model("efficientnet_lite0")
    photos = [sample_image(8), sample_image(94)]  # hen, hummingbird
    r = simplify(lm, photos, n_segments=8, progress=False)
    for n in range(2):
        k = r.params["removed"][n]
        assert r.fraction[n, k] >= 0.5, (r.params["names"][n], r.fraction[n, k])
        top = lm.predict(lm.prepare(r.minimal[n])[1], top=1)[0][0][0]  # the saved minimal image, run again
        assert top == r.params["classes"][n] == int(lm.predict(lm.prepare(photos[n])[1], top=1)[0][0][0])
    import figure_checks

    figure_checks.check(r.render(), 7.0)
    figure_checks.check(r.render(width=3.5), 3.5)


def test_bad_arguments_are_one_line_errors(tiny):
    lm, image, blocks = tiny
    top = int(lm.predict(lm.prepare(image)[1], top=1)[0][0][0])
    other = lm.categories[(top + 1) % 3]
    for kw, error, fragment in ((dict(n_segments=1), ParameterError, "from 2 to 1000"),
                                (dict(compactness=0), ParameterError, "compactness 0"),
                                (dict(target=other), ParameterError, f"not {other!r}"),
                                (dict(target="zebra"), TargetError, "unknown class 'zebra'"),
                                (dict(segments=blocks[:8]), ParameterError, "32x32 label array per image")):
        with pytest.raises(error, match=fragment) as e:
            simplify(lm, image, device="cpu", progress=False, **kw)
        assert "\n" not in str(e.value)


def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["simplify", "--model", "resnet18", "--weights", "none", "--device", "cpu", "-q", "--segments", "5"]
    res = runner.invoke(cli, [*base, str(sample_image(2)), "--out", "f.png", "--save", "r.npz"])
    assert res.exit_code == 0, res.output
    assert "superpixels" in res.stdout and "% of the image" in res.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"f.png", "r.npz", "r.json"}
    again = cnnviz.load_result(tmp_path / "r.npz")
    assert again.segments.shape == (1, 224, 224) and again.params["segments_requested"] == 5

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    bad, _ = bad_image_file("text", tmp_path)
    for args, fragment in (([*base, str(bad)], bad.name), ([*base, "--segments", "1", str(sample_image(2))], "1"),
                           ([*base, "--target", "no-such-class", str(sample_image(2))], "unknown class 'no-such-class'")):
        one_line_error(runner.invoke(cli, args), fragment)
        assert_empty(empty)
