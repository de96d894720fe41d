"""Every backprop engine on a frozen model (`model.requires_grad_(False)`, how most users hold a
trained model): the same maps as on the unfrozen model, and the model left frozen, with no `.grad`
written. The oracle is the same engine on the unfrozen model, whose graph reaches the layers
through the parameters; on the frozen model only the input can carry it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.engines.attribution.gradients import attribute
from cnnviz.engines.units.patches import deconv_projections
from cnnviz.engines.attribution.sanity import sanity
from cnnviz.models import LoadedModel, Preprocessing

from helpers import assert_untouched, sample_image, snapshot

PHOTO = sample_image(10)  # a brambling

# (label, method, options); layer names filled in per model
CALLS = [("saliency", "saliency", {}), ("guided", "guided", {}), ("deconv", "deconv", {}),
         ("smoothgrad", "saliency", {"smooth": 2, "seed": 3}),
         ("smoothgrad mean-abs", "guided", {"smooth": 2, "smooth_mode": "mean-abs"}),
         ("gradcam", "gradcam", {}), ("guided_gradcam", "guided_gradcam", {}), ("ig", "ig", {"ig_steps": 4}),
         ("deconv unit", "deconv", {"unit": "UNIT"}), ("saliency unit", "saliency", {"unit": "UNIT"})]


@pytest.fixture(scope="module")
def lite0():
    return cnnviz.load_model()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(5)
    model = torchvision.models.resnet18().eval()
    return LoadedModel(model, "resnet18", "random", Preprocessing(crop=(96, 96), resize=110),
                       [str(i) for i in range(1000)])


MODELS = {"lite0": ("lite0", "_blocks.10", "5:max"), "resnet18": ("resnet18", "layer3", "7:4,4")}


def _flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _run_all(lm, layer, unit):
    out = {}
    for label, method, options in CALLS:
        kw = dict(options)
        if kw.get("unit") == "UNIT":
            kw.update(unit=unit, layer=layer)
        out[label] = attribute(lm, PHOTO, method, device="cpu", **kw)
    x = lm.prepare(PHOTO)[1]
    c, where = unit.split(":")
    pos = torch.tensor([[int(v) for v in where.split(",")] if "," in where else [2, 2]])
    out["patches projection"] = deconv_projections(lm, x, layer, int(c), pos, "cpu")
    out["sanity"] = sanity(lm, PHOTO, methods=("gradcam", "guided"), steps=1, classes=1, device="cpu")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("which", list(MODELS))
def test_every_engine_gives_the_same_maps_on_a_frozen_model_and_leaves_it_frozen(which, request):
    name, layer, unit = MODELS[which]
    lm = request.getfixturevalue(name)
    model = lm.model
    x = lm.prepare(PHOTO)[1]
    model.requires_grad_(True)
    try:
        expected = _run_all(lm, layer, unit)
        assert all(p.grad is None for p in model.parameters()), "the unfrozen model got a .grad"
        model.requires_grad_(False)
        before = snapshot(model, x)
        got = _run_all(lm, layer, unit)
        assert_untouched(model, x, before)
        assert not any(_flags(model).values()), "a parameter was unfrozen"
        assert all(p.grad is None for p in model.parameters()), "the frozen model got a .grad"
    finally:
        model.requires_grad_(False)
    for label, want in expected.items():
        have = got[label]
        if label == "patches projection":
            assert np.abs(want).max() > 0
            np.testing.assert_array_equal(have, want, err_msg=label)
        elif label == "sanity":
            assert np.abs(want.maps).max() > 0
            np.testing.assert_array_equal(have.maps, want.maps)
            np.testing.assert_array_equal(have.class_maps, want.class_maps)
        else:
            assert np.abs(want.map).max() > 0, f"{label}: the map is zero, the comparison would be vacuous"
            np.testing.assert_array_equal(have.attribution, want.attribution, err_msg=label)
            np.testing.assert_array_equal(have.map, want.map, err_msg=label)


def test_grad_cam_on_a_frozen_model_equals_the_hand_computation(resnet18):
    """Quick (not slow) check of the reported crash: Grad-CAM on a frozen ResNet-18 against the
    weights-by-mean-gradient formula computed by hand with hooks on the unfrozen copy."""
    import copy

    lm = resnet18
    x = lm.prepare(PHOTO)[1]
    ref = copy.deepcopy(lm.model).requires_grad_(True)
    store = {}
    h = ref.layer4.register_forward_hook(lambda m, i, o: store.update(a=o))
    out = ref(x)
    h.remove()
    t = int(out.argmax(1))
    (g,) = torch.autograd.grad(out[0, t], store["a"])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * store["a"]).sum(1))
    cam = torch.nn.functional.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    lm.model.requires_grad_(False)
    r = attribute(lm, PHOTO, "gradcam", layer="layer4", device="cpu")
    assert not any(_flags(lm.model).values())
    assert all(p.grad is None for p in lm.model.parameters())
    assert float(cam.abs().max()) > 0
    np.testing.assert_allclose(r.map[0], cam.detach().numpy(), rtol=0, atol=1e-5 * float(cam.abs().max()))
