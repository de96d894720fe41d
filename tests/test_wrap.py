"""`cnnviz.wrap`: a network already in memory, used by every engine through the top-level names.

Oracles: the same network loaded by name (its preprocessing and class names known to be right)
must give the same predictions and maps when wrapped by hand; a model in training mode with
batch norms is left exactly as it was (its running statistics would move in a training-mode
forward pass)."""

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.errors import ParameterError

from helpers import assert_untouched, sample_image, sample_rows, snapshot


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model("efficientnet_lite0")


def test_a_wrapped_network_predicts_and_explains_as_the_same_network_loaded_by_name(lite0, tmp_path):
    p = lite0.preprocessing
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lite0.categories) + "\n")
    mine = cnnviz.wrap(lite0.model, labels, input_size=p.crop, mean=p.mean, std=p.std, resize=p.resize, name="mine")
    rows = sample_rows()[:6]
    for r in rows:
        _, x_ref = lite0.prepare(sample_image(int(r["class_index"])))
        _, x = mine.prepare(sample_image(int(r["class_index"])))
        assert torch.equal(x, x_ref)
        assert mine.predict(x, top=1)[0][0][:2] == lite0.predict(x_ref, top=1)[0][0][:2]
    hits = sum(mine.predict(mine.prepare(sample_image(int(r["class_index"])))[1], top=5)[0][i][0]
               == int(r["class_index"]) for r in rows for i in range(5))
    assert hits >= 4, "the wrapped model should recognize most of these photos (top-5)"

    image = sample_image(int(rows[0]["class_index"]))
    a = cnnviz.attribute(mine, image, "gradcam")
    b = cnnviz.attribute(lite0, image, "gradcam")
    np.testing.assert_array_equal(a.map, b.map)
    assert a.target_names[0] == b.target_names[0] == lite0.categories[int(b.targets[0])]


def test_a_model_in_training_mode_is_left_as_it_was():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()  # batch norms in training mode
    lm = cnnviz.wrap(model, [f"kind {i}" for i in range(10)], input_size=64)
    x = torch.rand(1, 3, 64, 64)
    before = snapshot(model, x)
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    r = cnnviz.attribute(lm, pixels, "saliency", target="kind 3")
    assert int(r.targets[0]) == 3 and r.target_names[0] == "kind 3" and r.map.shape[-2:] == (64, 64)
    cnnviz.occlusion(lm, pixels, window=16, stride=16, progress=False)
    assert model.training
    assert_untouched(model, x, before)


def test_default_class_names_follow_the_output_count():
    lm = cnnviz.wrap(torchvision.models.alexnet(num_classes=7))
    assert lm.categories == [f"class {i}" for i in range(7)] and lm.name == "AlexNet"
    assert lm.preprocessing.crop == (224, 224) and lm.preprocessing.resize == 256


@pytest.mark.parametrize("kw, fragment", [
    (dict(model="resnet18"), "torch.nn.Module, got str"),
    (dict(input_size=0), "input_size"),
    (dict(input_size=(224,)), "input_size"),
    (dict(mean=(0.5, 0.5)), "mean must be three numbers"),
    (dict(std=(0.2, 0.0, 0.2)), "std must be three positive numbers"),
    (dict(classes=["a", "b"]), "2 class names for a model with 10 outputs"),
    (dict(classes="no/such/labels.txt"), "is not a file"),
    (dict(classes=[1, 2]), "list of names"),
    (dict(resize=100), "resize must be"),
])
def test_bad_arguments_are_one_line_errors(kw, fragment):
    kw = {"model": torchvision.models.resnet18(num_classes=10), **kw}
    with pytest.raises(ParameterError, match=fragment) as e:
        cnnviz.wrap(**kw)
    assert "\n" not in str(e.value)


def test_every_top_level_name_resolves():
    for name in cnnviz.__all__:
        assert getattr(cnnviz, name) is not None, name
    with pytest.raises(AttributeError):
        cnnviz.no_such_engine
