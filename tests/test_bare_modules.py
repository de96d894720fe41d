"""The Python API takes what a PyTorch user already has (issue 28): a bare `nn.Module` wherever a
`LoadedModel` is taken, and layers as module objects of the model.

Oracles: the same map from `cnnviz.wrap(model, ...)` with ImageNet's settings written out by hand;
timm's own `resolve_data_config` for a timm model's preprocessing; a layer's map under its name.
"""

import math

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.errors import LayerError, ParameterError
from cnnviz.loaded import IMAGENET_MEAN, IMAGENET_STD

from helpers import assert_untouched, sample_image, snapshot


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()  # 1000 outputs, random weights: not ImageNet's classes


@pytest.fixture(scope="module")
def photo():
    return sample_image(0)


def _by_hand(model):
    return cnnviz.wrap(model, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=256)


def test_a_bare_module_gives_the_map_of_the_module_wrapped_with_imagenet_settings(resnet, photo):
    bare = cnnviz.gradcam(resnet, photo)
    wrapped = cnnviz.gradcam(_by_hand(resnet), photo)
    np.testing.assert_array_equal(bare.map, wrapped.map)
    assert bare.params["preprocessing_assumed"].startswith("ImageNet mean/std, 224 px crop of a 256 px resize")
    assert "torchvision" in bare.params["preprocessing_assumed"]
    assert "preprocessing_assumed" not in wrapped.params  # said only where cnnviz chose
    assert bare.target_names[0] == f"class {bare.targets[0]}"  # no ImageNet names for a bare module

    occ = cnnviz.occlusion(resnet, photo, window=112, stride=112)
    occ_ref = cnnviz.occlusion(_by_hand(resnet), photo, window=112, stride=112)
    np.testing.assert_array_equal(occ.true_class_prob, occ_ref.true_class_prob)
    assert "ImageNet mean/std" in occ.params["preprocessing_assumed"]


def test_a_module_of_no_known_library_says_it_declares_none(photo):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5))
    r = cnnviz.saliency(model, photo)
    assert r.params["preprocessing_assumed"].endswith("(the module declares none)")
    assert r.image.shape[1:3] == (224, 224)
    assert list(r.params["class_names"].values()) == [f"class {int(r.top1[0])}"]


def test_compare_notes_the_assumption_on_every_result(resnet, photo):
    results = cnnviz.compare(resnet, photo, methods=["saliency", "gradcam"])
    assert all("ImageNet" in r.params["preprocessing_assumed"] for r in results)


def test_a_timm_module_runs_with_its_pretrained_cfg(photo):
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config

    # a config that is not ImageNet's, so that reading it cannot pass by chance
    model = timm.create_model("resnet18", pretrained=False, num_classes=7,
                              pretrained_cfg_overlay=dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                                                          input_size=(3, 160, 160), crop_pct=0.8,
                                                          interpolation="bicubic")).eval()
    want = resolve_data_config({}, model=model)
    lm = cnnviz.wrap(model)
    p = lm.preprocessing
    assert p.mean == pytest.approx(want["mean"]) and p.std == pytest.approx(want["std"])
    assert p.crop == tuple(want["input_size"][1:]) == (160, 160)
    assert p.resize == math.floor(160 / want["crop_pct"]) == 200
    assert p.interpolation == want["interpolation"] == "bicubic"
    assert lm.categories == [f"class {i}" for i in range(7)]
    assert cnnviz.wrap(model, mean=IMAGENET_MEAN).preprocessing.mean == IMAGENET_MEAN  # a setting given wins

    r = cnnviz.gradcam(model, photo)
    note = r.params["preprocessing_assumed"]
    assert note.startswith("timm pretrained_cfg") and "(0.5, 0.4, 0.3)" in note and "(0.2, 0.25, 0.3)" in note
    assert "160x160 px crop of a 200 px resize" in note and "bicubic" in note
    assert r.image.shape[1:3] == (160, 160)
    np.testing.assert_array_equal(r.map, cnnviz.gradcam(lm, photo).map)


@pytest.mark.parametrize("model, fragment", [
    ("no-such-model-xyz", "is not a model name"),
    (lambda x: x, "a function"),
    ({"conv.weight": torch.zeros(1)}, "state dict"),
    (3, "int"),
])
def test_a_wrong_model_type_is_a_one_line_error_naming_what_is_taken(model, fragment, photo):
    with pytest.raises(ParameterError) as e:
        cnnviz.gradcam(model, photo)
    msg = str(e.value)
    assert "\n" not in msg and fragment in msg and "nn.Module" in msg and "LoadedModel" in msg


def test_a_figure_of_a_bare_module_uses_class_numbers_not_imagenet_names(resnet, photo):
    from cnnviz.sources.torchvision import imagenet_categories

    imagenet = imagenet_categories()
    r = cnnviz.guided_gradcam(torchvision.models.resnet18(), photo, target=3)
    top1 = int(r.top1[0])
    assert top1 != 3, "the check below needs a top-1 other than the target"
    fig = r.render()  # (cnnviz.render is the package once a test has imported cnnviz.render.*)
    text = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "class 3" in text
    assert f"'class {top1}'" in text, text
    assert imagenet[3] not in text and imagenet[top1] not in text, text
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_user_module_is_untouched_after_a_call_that_raised(photo):
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.rand(1, 3, 64, 64)
    before = snapshot(model, x)
    with pytest.raises(LayerError):
        cnnviz.gradcam(model, photo, layer="layer9")
    assert_untouched(model, x, before)
    cnnviz.gradcam(model, photo, layer=model.layer4[-1])
    assert_untouched(model, x, before)


# ---- layers as module objects (item 3) ----

def test_a_layer_given_as_a_module_object_gives_the_map_of_its_name(resnet, photo):
    by_object = cnnviz.gradcam(resnet, photo, layer=resnet.layer3[-1])
    by_name = cnnviz.gradcam(resnet, photo, layer="layer3.1")
    assert by_object.params["layer"] == "layer3.1"
    np.testing.assert_array_equal(by_object.map, by_name.map)
    fm = cnnviz.feature_maps(resnet, photo, layer=resnet.layer1[0].conv1, top=4)
    fm_ref = cnnviz.feature_maps(resnet, photo, layer="layer1.0.conv1", top=4)
    np.testing.assert_array_equal(fm.maps, fm_ref.maps)


def test_layers_as_a_list_of_objects_and_names():
    from cnnviz.layers import layer_address

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    assert layer_address(model, [model.layer1, "layer2.0", (model.layer4[-1].conv2,)]) == \
        ["layer1", "layer2.0", ["layer4.1.conv2"]]
    info = cnnviz.resolve_layer(model, model.layer2[0].bn1, torch.rand(1, 3, 64, 64))
    assert info.name == "layer2.0.bn1"


@pytest.mark.parametrize("bad, fragment", [
    (torch.nn.Conv2d(512, 512, 3), "not part of the model"),
    ("whole", "whole model"),
])
def test_a_layer_module_not_of_the_model_is_a_one_line_error(resnet, photo, bad, fragment):
    layer = resnet if bad == "whole" else bad
    with pytest.raises(LayerError) as e:
        cnnviz.gradcam(resnet, photo, layer=layer)
    assert "\n" not in str(e.value) and fragment in str(e.value)


# ---- inputs (item 2): one rule, cnnviz.inputs ----

def _lm():
    torch.manual_seed(0)
    return cnnviz.wrap(torchvision.models.resnet18(num_classes=4), input_size=64)  # resize 73


def test_a_numpy_photo_of_any_size_is_read_as_the_same_pil_image():
    from PIL import Image

    lm = _lm()
    photo = Image.open(sample_image(2)).convert("RGB").resize((150, 97))
    arr = np.array(photo)
    px_pil, x_pil = lm.prepare(photo)
    px_arr, x_arr = lm.prepare(arr)
    assert x_arr.shape == (1, 3, 64, 64)
    np.testing.assert_array_equal(px_arr, px_pil)
    assert torch.equal(x_arr, x_pil)
    # floats in [0, 1] and a channels-first tensor of the same pixels: the same input
    assert torch.equal(lm.prepare(arr / 255.0)[1], x_pil)
    assert torch.equal(lm.prepare(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)[1], x_pil)
    # at the input size: taken as it is (a float tensor without rounding to 8 bits)
    t = torch.rand(3, 64, 64)
    mean, std = torch.tensor(lm.preprocessing.mean).view(3, 1, 1), torch.tensor(lm.preprocessing.std).view(3, 1, 1)
    torch.testing.assert_close(lm.prepare(t)[1][0], (t - mean) / std, rtol=0, atol=1e-6)


def test_a_batch_of_pixels_and_a_normalized_batch_give_the_same_maps():
    lm = _lm()
    torch.manual_seed(3)
    pixels = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(lm.preprocessing.mean).view(1, 3, 1, 1), torch.tensor(lm.preprocessing.std).view(1, 3, 1, 1)
    a = cnnviz.saliency(lm, pixels, target=1)
    b = cnnviz.saliency(lm, (pixels - mean) / std, target=1, normalized=True)
    c = cnnviz.saliency(lm, [pixels[0], pixels[1].numpy().transpose(1, 2, 0)], target=1)
    np.testing.assert_allclose(a.map, b.map, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(a.map, c.map)
    big = cnnviz.saliency(lm, torch.rand(1, 3, 100, 90), target=1)  # not at the input size: a photo
    assert big.map.shape == (1, 64, 64)


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
    (np.zeros((64, 64), np.uint8), "HxWx3"),
    (torch.zeros(4, 64, 64), "3xHxW"),
    (torch.full((3, 64, 64), 2.0), "[0, 1]"),
    (np.full((64, 64, 3), -0.5), "[0, 1]"),
    (np.zeros((64, 64, 3), np.int64), "int64"),
    (42, "type int"),
])
def test_a_bad_image_is_a_one_line_error_naming_the_rule(bad, fragment):
    lm = _lm()
    with pytest.raises(ParameterError) as e:
        cnnviz.saliency(lm, bad)
    msg = str(e.value)
    assert "\n" not in msg and fragment in msg and "normalized=True" in msg, msg


def test_a_normalized_batch_outside_0_1_needs_normalized_true():
    lm = _lm()
    with pytest.raises(ParameterError, match=r"\[0, 1\].*normalized=True"):
        cnnviz.saliency(lm, torch.randn(2, 3, 64, 64) * 3)
    with pytest.raises(ParameterError, match="normalized=True takes an Nx3xHxW tensor"):
        cnnviz.saliency(lm, [sample_image(0)], normalized=True)


# ---- one spelling (item 5 of the issue): methods, captum's parameter names, 0-d tensor targets ----

def test_method_names_take_either_separator_and_store_one():
    lm = _lm()
    x = torch.rand(1, 3, 64, 64)
    for given, stored in [("lrp_epsilon", "lrp-epsilon"), ("lrp-epsilon", "lrp-epsilon"),
                          ("guided-gradcam", "guided_gradcam"), ("Guided_GradCAM", "guided_gradcam")]:
        r = cnnviz.attribute(lm, x, given, target=1)
        assert r.params["method"] == stored
    ref = cnnviz.attribute(lm, x, "lrp-epsilon", target=1).map
    np.testing.assert_array_equal(cnnviz.attribute(lm, x, "lrp_epsilon", target=1).map, ref)
    assert [p["method"] for p in cnnviz.compare(lm, x, ["lrp_epsilon", "guided-gradcam"])[0].params["method_params"]] \
        == ["lrp-epsilon", "guided_gradcam"]


def test_captum_parameter_names_are_taken_or_refused_in_one_line():
    lm = _lm()
    x = torch.rand(1, 3, 64, 64)
    a = cnnviz.attribute(lm, x, "ig", target=2, n_steps=8)
    b = cnnviz.attribute(lm, x, "ig", target=2, ig_steps=8)
    assert a.params["ig_steps"] == 8
    np.testing.assert_array_equal(a.map, b.map)
    s = cnnviz.saliency(lm, x, target=2, nt_samples=3)
    assert s.params["smooth"] == 3
    for call, fragment in [(lambda: cnnviz.ig(lm, x, baselines=torch.zeros(1, 3, 64, 64)), "baseline="),
                           (lambda: cnnviz.occlusion(lm, x[0], sliding_window_shapes=(3, 8, 8)), "window="),
                           (lambda: cnnviz.occlusion(lm, x[0], strides=(3, 4, 4)), "stride="),
                           (lambda: cnnviz.ig(lm, x, n_steps=4, ig_steps=4), "both given"),
                           (lambda: cnnviz.gradcam(lm, x, relu_attributions=True), "relu_attributions")]:
        with pytest.raises(ParameterError) as e:
            call()
        assert "\n" not in str(e.value) and fragment in str(e.value), str(e.value)


def test_a_0d_tensor_target_is_its_class_and_an_unknown_name_gives_no_command_line_hint():
    lm = _lm()
    x = torch.rand(1, 3, 64, 64)
    np.testing.assert_array_equal(cnnviz.gradcam(lm, x, target=torch.tensor(3)).map,
                                  cnnviz.gradcam(lm, x, target=3).map)
    from cnnviz.errors import TargetError

    with pytest.raises(TargetError) as e:
        cnnviz.gradcam(lm, x, target="zebra")
    assert "cnnviz predict" not in str(e.value) and "0..3" in str(e.value)


def test_the_command_line_and_the_audit_take_method_names_with_either_separator():
    from cnnviz.engines.audit.engine import check_methods
    from cnnviz_cli.attribution.compare import _methods

    assert check_methods("guided-gradcam,saliency") == ("guided_gradcam", "saliency")
    assert _methods("lrp_epsilon, guided-gradcam") == ["lrp-epsilon", "guided_gradcam"]
