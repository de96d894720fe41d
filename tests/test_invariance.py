"""Invariance curves (Zeiler & Fergus Fig. 5): the transforms against direct pixel operations, the
distances and probabilities against a hand computation with forward hooks, the paper's finding on
a real model and real photos, and bad input."""

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.engines.experiments.invariance import invariance, transform
from cnnviz.errors import LayerError, ParameterError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import sample_image


def test_translation_and_quarter_rotation_are_exact_pixel_moves():
    x = torch.randn(1, 3, 16, 16)
    down = transform(x, "translate", 5)
    torch.testing.assert_close(down[..., 5:, :], x[..., :-5, :])
    assert float(down[..., :5, :].abs().max()) == 0, "new pixels are the mean (0 in normalized space)"
    up = transform(x, "translate", -3)
    torch.testing.assert_close(up[..., :-3, :], x[..., 3:, :])
    torch.testing.assert_close(transform(x, "rotate", 90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(transform(x, "scale", 1.0), x)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    return LoadedModel(model, "resnet18", "random", Preprocessing(crop=(64, 64), resize=73), [f"k{i}" for i in range(7)])


def test_distances_and_probabilities_equal_a_hand_computation(small):
    pixels = [np.asarray(small.prepare(sample_image(i))[0]) for i in (0, 2)]
    values = {"translate": [-8, 0, 8], "rotate": [0, 45]}
    r = invariance(small, pixels, transforms=["translate", "rotate"], layers=["layer1", "avgpool"], values=values,
                   target="k4", device="cpu")
    assert r.params["layers"] == ["layer1", "avgpool"] and r.params["classes"] == [4, 4]
    store = {}
    hooks = [small.model.layer1.register_forward_hook(lambda m, i, o: store.__setitem__("layer1", o)),
             small.model.avgpool.register_forward_hook(lambda m, i, o: store.__setitem__("avgpool", o))]
    try:
        for n, px in enumerate(pixels):
            x = small.prepare(px)[1]
            with torch.no_grad():
                small.model(x)
                base = {k: v.clone() for k, v in store.items()}
                for ri, (kind, vals) in enumerate(values.items()):
                    for t, v in enumerate(vals):
                        out = small.model(transform(x, kind, v))
                        for li, name in enumerate(("layer1", "avgpool")):
                            d = (store[name] - base[name]).norm() / base[name].norm()
                            assert r.distance[n, ri, li, t] == pytest.approx(float(d), rel=1e-4, abs=1e-6)
                        assert r.prob[n, ri, t] == pytest.approx(float(torch.softmax(out, 1)[0, 4]), rel=1e-4)
    finally:
        for h in hooks:
            h.remove()
    # identity: 0 up to the rounding of a batch against a single image
    assert np.all(r.distance[:, 0, :, 1] < 1e-5) and np.all(r.distance[:, 1, :, 0] < 1e-5), "identity gives 0"
    assert np.isnan(r.values[1, 2]) and np.isnan(r.distance[0, 1, 0, 2]), "shorter ranges are NaN-padded"


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


def test_small_shifts_move_the_first_layer_more_than_the_top_features(lite0):
    """Zeiler & Fergus: small transformations have a dramatic effect in the first layer and a lesser
    one at the top feature layer."""
    r = invariance(lite0, [sample_image(i) for i in (0, 6)], transforms="translate", values={"translate": [-10, 0, 10]})
    first, top = r.distance[:, 0, 0][:, [0, 2]], r.distance[:, 0, 1][:, [0, 2]]
    assert r.params["layers"][0] == "_conv_stem" and "top features" in r.params["layer_labels"][1]
    assert np.all(first > top), (first, top)
    import figure_checks

    figure_checks.check(r.render(), 7.0)  # a page wide, text >= 7 pt, nothing outside, no overlaps
    figure_checks.check(r.render(width=3.5), 3.5)


@pytest.mark.parametrize("kw, error, fragment", [
    (dict(transforms="shear"), ParameterError, "unknown transform 'shear'"),
    (dict(transforms=[]), ParameterError, "no transform"),
    (dict(transforms="scale", values={"scale": [0.0, 1.0]}), ParameterError, "scale factors must be positive"),
    (dict(layers=["layer9"]), LayerError, "unknown layer 'layer9'"),
])
def test_bad_arguments_are_one_line_errors(small, kw, error, fragment):
    px = np.asarray(small.prepare(sample_image(0))[0])
    with pytest.raises(error, match=fragment) as e:
        invariance(small, px, **kw)
    assert "\n" not in str(e.value)


def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    from helpers import assert_empty, one_line_error

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["invariance", str(sample_image(0)), "--model", "resnet18", "--weights", "none",
                              "--transform", "translate", "--out", "f.pdf", "--save", "r.npz"])
    assert res.exit_code == 0, res.output
    assert "translate: last-layer distance up to" in res.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"f.pdf", "r.npz", "r.json"}
    again = cnnviz.load_result(tmp_path / "r.npz")
    assert again.params["transforms"] == ["translate"] and again.distance.shape[1] == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for bad, fragment in ((["--transform", "shear"], "unknown transform 'shear'"),
                          (["--layers", "layer9"], "unknown layer 'layer9'")):
        res = runner.invoke(cli, ["invariance", str(sample_image(0)), "--model", "resnet18", "--weights", "none",
                                  *bad])
        one_line_error(res, fragment)
        assert_empty(empty)
