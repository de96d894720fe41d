"""Evolution of features over training (Zeiler & Fergus Fig. 4), on a tiny CNN trained here for a
few epochs on scikit-learn's digits: each checkpoint's strongest activation per unit against a
brute-force forward over the data, units that change between epochs, the user's model untouched,
a resumed run equal to an uninterrupted one, and bad input."""

import glob

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz
from cnnviz.engines.experiments.evolution import evolution, find_checkpoints
from cnnviz.errors import LayerError, ModelError, ParameterError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import assert_empty, assert_untouched, one_line_error, snapshot

SIDE = 16  # the 8 x 8 digits, doubled
NET = '''
from torch import nn


def digits_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
'''
LAYER, UNITS, SCANNED, EPOCHS = "4", [0, 3, 5, 9], 120, 2


def _net(tmp):
    ns = {}
    exec(NET, ns)  # noqa: S102 (the test's own model)
    return ns["digits_cnn"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits as 16 x 16 RGB PNGs (the first SCANNED are the scanned data), and checkpoints
    ckpt_0.pt (initial) .. ckpt_2.pt of two epochs of training."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    pixels = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((SIDE, SIDE),
                                                                                          Image.Resampling.NEAREST))
                       for im in d.images])
    pixels = np.repeat(pixels[..., None], 3, axis=3)
    data = root / "data"
    data.mkdir()
    for i in range(SCANNED):
        Image.fromarray(pixels[i]).save(data / f"d{i:04d}.png")
    (root / "net.py").write_text(NET)
    make = _net(root)
    pre = Preprocessing(crop=(SIDE, SIDE), resize=None)
    x = pre.normalize(pixels)
    y = torch.as_tensor(d.target)
    torch.manual_seed(0)
    model = make()
    torch.save(model.state_dict(), root / "ckpt_0.pt")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small: one thread is 10-40x faster on a busy machine (no spinning)
    try:
        for epoch in range(1, EPOCHS + 1):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            torch.save(model.state_dict(), root / f"ckpt_{epoch}.pt")
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.8, accuracy  # it learned something: features had reason to change
    torch.manual_seed(1)
    lm = LoadedModel(make(), "digits_cnn", "random", pre, [str(i) for i in range(10)])
    return root, lm, make


def _brute_force(root, make, ckpt, files):
    """Per unit, the largest activation over every image and position, and the first image with it."""
    model = make()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    pix = np.stack([np.asarray(Image.open(root / "data" / f).convert("RGB")) for f in files]).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.as_tensor(((pix / 255 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        act = model[:int(LAYER) + 1](x)  # the Sequential's first five modules: conv, relu, pool, conv, relu
    per_image = act[:, UNITS].amax(dim=(2, 3)).numpy()  # N x U
    return per_image.max(0), per_image.argmax(0), per_image


@pytest.fixture(scope="module")
def fresh(digits):
    """An uninterrupted run, and whether the user's model came out of it untouched."""
    root, lm, make = digits
    x0 = lm.preprocessing.normalize(np.zeros((SIDE, SIDE, 3), np.uint8))
    before = snapshot(lm.model, x0)
    r = evolution(lm, str(root / "ckpt_*.pt"), root / "data", LAYER, units=UNITS, device="cpu", show_progress=False)
    assert_untouched(lm.model, x0, before)  # every checkpoint went into a copy
    return r


def test_the_strongest_activation_per_checkpoint_equals_a_brute_force_forward(digits, fresh):
    root, lm, make = digits
    r = fresh
    C = EPOCHS + 1
    assert list(r.checkpoints) == [f"ckpt_{i}.pt" for i in range(C)] and r.params["labels"][0] == "ckpt_0"
    assert r.values.shape == (C, 4) and r.projections.shape[:2] == (C, 4)
    for c in range(C):
        best, where, per_image = _brute_force(root, make, root / f"ckpt_{c}.pt", list(r.files))
        np.testing.assert_allclose(r.values[c], best, rtol=1e-5, atol=1e-6)
        for u in range(4):  # the image: the brute force's, or one whose value ties with it
            assert per_image[r.image_index[c, u], u] == pytest.approx(best[u], rel=1e-5, abs=1e-6)
    # units change between epochs: the strongest activations and their projections move
    for c in range(C - 1):
        assert not np.allclose(r.values[c], r.values[c + 1], rtol=0.05), (c, r.values)
    change = np.abs(r.projections[0].astype(float) - r.projections[-1].astype(float)).mean(axis=(1, 2, 3))
    assert (change > 5).sum() >= 3, change
    assert r.params["rf"] == [8, 8] and r.projections.shape[2:4] == (8, 8)
    # max pooling on the path: the deconvnet's projections follow the image, so they stay (ZF's Fig. 4),
    # at the receptive field, which fits in the 16 px image
    assert r.params["projection"] == "deconv" and not r.params["deconv_uninformative"] and r.params["crop"] == "rf"
    import figure_checks

    figure_checks.check(r.render(), 7.0)
    figure_checks.check(r.render(width=3.5, patches=True), 3.5)


def test_a_stopped_run_resumes_to_the_same_result(digits, fresh, tmp_path):
    root, lm, _ = digits
    progress = tmp_path / "r.npz.partial"

    class Stop(Exception):
        pass

    def stop_after_two(c, total, row):
        if c == 1:
            raise Stop  # as a kill after the second checkpoint

    args = (lm, str(root / "ckpt_*.pt"), root / "data", LAYER)
    with pytest.raises(Stop):
        evolution(*args, units=UNITS, device="cpu", progress=progress, on_checkpoint=stop_after_two,
                  show_progress=False)
    assert progress.exists()
    seen = []
    resumed = evolution(*args, units=UNITS, device="cpu", progress=progress, show_progress=False,
                        on_checkpoint=lambda c, total, row: seen.append(c))
    assert resumed.params["resumed_checkpoints"] == 2 and seen == list(range(2, EPOCHS + 1))
    assert not progress.exists() and not list(tmp_path.iterdir())
    np.testing.assert_array_equal(resumed.values, fresh.values)
    np.testing.assert_array_equal(resumed.projections, fresh.projections)


def test_checkpoints_sort_in_training_order_and_bad_input_is_one_line(digits, tmp_path):
    root, lm, _ = digits
    for name in ("ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_checkpoints(str(tmp_path / "ckpt_*.pt"))] == ["ckpt_1.pt", "ckpt_2.pt", "ckpt_10.pt"]
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), other)
    cases = ((dict(checkpoints=str(tmp_path / "none_*.pt")), ParameterError, "match no file"),
             (dict(checkpoints=str(other)), ModelError, "does not fit the model"),
             (dict(checkpoints=str(tmp_path / "ckpt_1.pt")), ModelError, "cannot read checkpoint"),
             (dict(layer="9"), LayerError, "unknown layer '9'"),
             (dict(units="0:99"), LayerError, "out of range: the layer has channels 0..15"))
    for kw, error, fragment in cases:
        args = {"checkpoints": str(root / "ckpt_*.pt"), "layer": LAYER, "units": UNITS, **kw}
        with pytest.raises(error, match=fragment) as e:
            evolution(lm, data=root / "data", device="cpu", **args)
        assert "\n" not in str(e.value)


def test_the_command_draws_the_figure_saves_and_refuses_bad_input(digits, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    root, _, _ = digits
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["evolution", "--model", f"{root / 'net.py'}:digits_cnn", "--layer", LAYER, "--input-size", str(SIDE),
            "--device", "cpu", "-q"]
    ckpts = sorted(glob.glob(str(root / "ckpt_*.pt")))
    # an unquoted pattern: the shell hands over every file, the rest land before DATA
    res = runner.invoke(cli, [*base, "--units", "0:3", "--checkpoints", ckpts[0], *ckpts[1:], str(root / "data"),
                              "--out", "f.png", "--save", "r.npz"])
    assert res.exit_code == 0, res.output
    assert f"ckpt_{EPOCHS}.pt ({EPOCHS + 1}/{EPOCHS + 1}): strongest 0:" in res.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"f.png", "r.npz", "r.json"}
    again = cnnviz.load_result(tmp_path / "r.npz")
    assert again.values.shape == (EPOCHS + 1, 3) and list(again.checkpoints)[-1] == f"ckpt_{EPOCHS}.pt"
    res = runner.invoke(cli, ["render", "r.npz", "--out", "g.png", "--width", "3.5"])
    assert res.exit_code == 0, res.output

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), other)
    for args, fragment in (([*base, "--checkpoints", str(root / "nope_*.pt"), str(root / "data")], "match no file"),
                           ([*base, "--checkpoints", str(other), str(root / "data")], "does not fit the model"),
                           ([*base, "--checkpoints", str(root / "ckpt_*.pt"), "--units", "20", str(root / "data")],
                            "out of range"),
                           ([*base, "--checkpoints", str(root / "ckpt_*.pt"), "--layer", "x9", str(root / "data")],
                            "unknown layer 'x9'"),
                           ([*base, str(root / "data")], "no checkpoints given"),
                           ([*base, "--weights", "IMAGENET1K_V1", "--checkpoints", str(root / "ckpt_*.pt"),
                             str(root / "data")], "--weights has no effect on `cnnviz evolution`"),
                           ([*base, "--weights-file", str(other), "--checkpoints", str(root / "ckpt_*.pt"),
                             str(root / "data")], "--weights-file has no effect"),
                           # --trust-checkpoint is for --checkpoints: it gets past the options to the misfit
                           ([*base, "--trust-checkpoint", "--checkpoints", str(other), str(root / "data")],
                            "does not fit the model")):
        one_line_error(runner.invoke(cli, args), fragment)
        assert_empty(empty)
    text = runner.invoke(cli, ["evolution", "--help"]).stdout
    assert "--weights" not in text and "--trust-checkpoint" in text  # not offered: the weights come from --checkpoints
