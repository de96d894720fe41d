"""One-image calls do only the work of one image (issue 25, item 4): no padding to a group, one
pass where one suffices, the deconvnet's gray-image check proved from the graph where it can be,
the folded copy of LRP remembered and refreshed from the model's current weights."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cnnviz.engines.attribution.dependence import backward_ignores_image, image_dependence
from cnnviz.engines.attribution.gradients import attribute
from cnnviz.fold import folded
from cnnviz.models import LoadedModel, Preprocessing
from cnnviz.engines.attribution.rules import BackwardRule

from helpers import assert_untouched, sample_image, snapshot

SIZE = 48
PRE = Preprocessing(crop=(SIZE, SIZE), resize=56)


def _lm(model, name="net", classes=10):
    return LoadedModel(model.eval(), name, "random", PRE, [f"c{i}" for i in range(classes)])


class _Plain(nn.Module):
    """Convolutions, eval batch norms, ReLU6, average pooling and a linear head: under the deconv
    rule no backward step reads the forward pass."""

    def __init__(self, gate=False, maxpool=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.gate = nn.Linear(8, 8) if gate else None
        self.pool = nn.MaxPool2d(2) if maxpool else nn.Identity()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x))) + x[:, :, ::2, ::2]
        if self.gate is not None:  # squeeze-and-excitation: a product of two feature maps
            x = x * torch.sigmoid(self.gate(x.mean((2, 3))))[:, :, None, None]
        return self.fc(self.pool(x).mean((2, 3)))


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = _Plain(**kw)
    with torch.no_grad():  # batch-norm statistics far from identity
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


def _passes(model):
    """A forward hook counting the model's passes; returns (counter list, handle)."""
    count = []
    return count, model.register_forward_hook(lambda *a: count.append(1))


# --------------------------------------------------------------------------------------------------
# one image: run alone, one pass

def test_a_one_image_call_is_the_gradient_of_that_image_alone():
    """The oracle: torch's gradient of the class score for the image as a batch of one."""
    lm = _lm(_model())
    photo = sample_image(10)
    r = attribute(lm, photo, "saliency", target=3)
    x = lm.prepare(photo)[1].requires_grad_(True)
    (g,) = torch.autograd.grad(lm.model(x)[0, 3], x)
    np.testing.assert_array_equal(r.attribution, g.numpy())
    assert r.params["batch_size"] == 1


@pytest.mark.parametrize("method", ["saliency", "guided", "gradcam", "gradcampp", "layercam", "deconv"])
def test_a_one_image_call_runs_the_model_once(method):
    """Each of these needs one forward pass of one image (the top-1 class from the same pass; the
    deconvnet's gray-image check read off the graph on a model without max pooling or gates). The
    count is of the second call: the first also traces the layers once per model."""
    lm = _lm(_model())
    photo = sample_image(12)
    attribute(lm, photo, method)
    count, handle = _passes(lm.model)
    seen = []
    h2 = lm.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        attribute(lm, photo, method)
    finally:
        handle.remove()
        h2.remove()
    assert len(count) == 1 and seen == [1], (method, len(count), seen)


def test_one_image_and_the_same_image_in_a_batch_agree_and_the_model_is_untouched():
    lm = _lm(_model())
    photos = [sample_image(i) for i in (14, 16)]
    x = lm.prepare(photos[0])[1]
    before = snapshot(lm.model, x)
    for method in ("saliency", "guided", "deconv", "gradcampp", "lrp-zplus"):
        alone = attribute(lm, photos[0], method, target=2)
        both = attribute(lm, photos, method, target=2)
        scale = np.abs(both.attribution[0]).max()
        np.testing.assert_allclose(alone.attribution[0], both.attribution[0], atol=1e-5 * scale, err_msg=method)
    assert_untouched(lm.model, x, before)


# --------------------------------------------------------------------------------------------------
# the deconvnet's gray-image check

def test_deconv_on_a_model_whose_backward_reads_nothing_of_the_forward_is_proved_uninformative():
    lm = _lm(_model())
    photos = [sample_image(20), sample_image(22)]
    r = attribute(lm, photos, "deconv", target=4)
    assert r.params["gray_image_check"] == "graph" and r.params["gray_image_r"] == [1.0, 1.0]
    assert r.params["uninformative"] is True
    # the oracle: the gray image really is sent back, and its map is the same map
    x = torch.cat([lm.prepare(p)[1] for p in photos])
    rs, switches = image_dependence(lm.model, x, torch.tensor([4, 4]), None, None,
                                    PRE.fill_value("mean"), 4)
    assert min(rs) > 0.99999 and switches == 0
    gray = PRE.fill_value("mean").expand(1, 3, SIZE, SIZE).clone()
    g = attribute(lm, gray, "deconv", target=4, normalized=True).attribution[0]
    np.testing.assert_allclose(r.attribution[0], g, atol=1e-6 * np.abs(g).max())


@pytest.mark.parametrize("kw", [{"gate": True}, {"maxpool": True}])
def test_deconv_where_the_backward_reads_the_forward_measures_the_gray_image(kw):
    """A squeeze-and-excitation gate (a product of two feature maps) or max-pool switches carry the
    image into the backward pass: no proof, the gray image is sent back and r measured."""
    lm = _lm(_model(**kw))
    photo = sample_image(24)
    r = attribute(lm, photo, "deconv", target=1)
    assert r.params["gray_image_check"] == "measured"
    x = lm.prepare(photo)[1]
    rs, _ = image_dependence(lm.model, x, torch.tensor([1]), None, None, PRE.fill_value("mean"), 4)
    assert r.params["gray_image_r"] == [round(rs[0], 6)]
    if kw.get("maxpool"):
        assert rs[0] < 0.999  # the map does depend on the image: a proof here would have been wrong


def test_the_graph_proof_refuses_other_rules_and_training_batch_norms():
    model = _model()
    x = torch.randn(1, 3, SIZE, SIZE, requires_grad=True)
    for rule, expected in (("deconv", True), ("guided", False), ("gradient", False)):
        with BackwardRule(rule):
            out = model(x)
        assert backward_ignores_image(out, x) is expected, rule
    model.train()
    with BackwardRule("deconv"):
        out = model(torch.cat([x, x * 2]))
    assert backward_ignores_image(out, x) is False  # batch statistics depend on the batch
    model.eval()


def test_deconv_on_lite0_is_proved_and_the_proof_agrees_with_the_measurement():
    """On the default model the deconvnet's gray-image map is this very map: proved from the graph,
    and the measurement (the gray image sent back) agrees."""
    import cnnviz

    lm = cnnviz.load_model()
    photo = sample_image(30)
    r = attribute(lm, photo, "deconv")
    assert r.params["gray_image_check"] == "graph" and r.params["uninformative"] is True
    x = lm.prepare(photo)[1]
    rs, switches = image_dependence(lm.model.eval(), x, torch.tensor(r.targets).long(), None, None,
                                    lm.preprocessing.fill_value("mean"), 4)
    assert rs[0] > 0.99999 and switches == 0


# --------------------------------------------------------------------------------------------------
# the folded copy, remembered

def test_the_folded_copy_is_remembered_and_follows_the_models_weights():
    model = _model()
    x = torch.randn(1, 3, SIZE, SIZE)
    a, info = folded(model, x)
    b, again = folded(model, x)
    assert info["folded"] and info == again and a is b
    with torch.no_grad():
        model.bn1.running_var.mul_(3.0)  # in place, version counted
        model.conv2.weight.data.mul_(-0.5)  # through .data: no version bump
        model.fc.bias = nn.Parameter(torch.randn(10))  # a new parameter object
    c, _ = folded(model, x)
    assert c is a
    with torch.no_grad():
        torch.testing.assert_close(c(x), model(x), rtol=1e-5, atol=1e-5)
    # the oracle for the refreshed numbers: a fold from scratch of a copy of the changed model
    fresh, _ = folded(copy.deepcopy(model), x)
    for (n, p), (m, q) in zip(c.state_dict().items(), fresh.state_dict().items()):
        assert n == m and torch.equal(p, q), n


def test_a_changed_structure_or_input_size_folds_afresh():
    model = _model()
    x = torch.randn(1, 3, SIZE, SIZE)
    a, _ = folded(model, x)
    b, _ = folded(model, torch.randn(1, 3, SIZE + 8, SIZE + 8))
    assert b is not a
    model.act = nn.ReLU()
    c, _ = folded(model, x)
    assert c is not a and isinstance(c.act, nn.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(c(x), model(x), rtol=1e-5, atol=1e-5)


def test_lrp_after_a_weight_change_equals_lrp_of_a_fresh_model():
    lm = _lm(_model())
    photo = sample_image(40)
    attribute(lm, photo, "lrp-zplus", target=5)
    with torch.no_grad():
        lm.model.conv1.weight.mul_(1.7)
        lm.model.bn2.running_mean.add_(0.2)
    after = attribute(lm, photo, "lrp-zplus", target=5)
    fresh = attribute(_lm(copy.deepcopy(lm.model)), photo, "lrp-zplus", target=5)
    np.testing.assert_array_equal(after.attribution, fresh.attribution)
    assert after.params["folded"] and after.params["folded_batch_norms"] == 2


def test_resnet_guided_with_in_place_relus_is_unchanged_by_the_fused_backward():
    """torchvision's ResNet calls its ReLUs in place (masks saved), Lite0-style modules out of place
    (the input saved, fused backward): both equal a hand-written guided backward."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    lm = _lm(model, "resnet18")
    photo = sample_image(44)
    r = attribute(lm, photo, "guided", target=6)

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g.clamp(min=0) * (x > 0)

    ref = copy.deepcopy(model)
    for name, m in list(ref.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, type("G", (nn.Module,), {"forward": lambda self, x: GuidedReLU.apply(x)})())
    x = lm.prepare(photo)[1].requires_grad_(True)
    (g,) = torch.autograd.grad(ref(x)[0, 6], x)
    np.testing.assert_allclose(r.attribution, g.numpy(), rtol=1e-5, atol=1e-6 * float(g.abs().max()))
