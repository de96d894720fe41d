"""Layers whose outputs are not C x H x W (issue 9, item 5): a channels-last block and the patch
tokens of a vision transformer are addressed as maps through `layers.require_maps`. The maps that
`capture` and `record` give, and the gradients reaching them, are checked against the raw output
taken by a plain forward hook and rearranged by hand; a top-k scan of a transformer block against
a direct computation; ordinary CNN layers are left as they are."""

import numpy as np
import pytest
import torch
from torch import nn

import cnnviz
from cnnviz.errors import LayerError
from cnnviz.layers import capture, map_view, record, require_maps, resolve_layer

from helpers import sample_image


class ChannelsLast(nn.Module):
    """conv to 16 x 8 x 8, then a block working channels last (N x H x W x C), then a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.mix = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        t = self.stem(x).permute(0, 2, 3, 1)  # N x 8 x 8 x 16
        t = torch.relu(self.mix(self.norm(t)))  # N x 8 x 8 x 24: the channels-last layer
        return self.head(t.mean(dim=(1, 2)))


def _raw_output(model, name, x, grad_of=None):
    """The module's output as it is (and, with grad_of, the gradient of grad_of(logits) on it)."""
    seen = {}
    module = dict(model.named_modules())[name]

    def hook(mod, inp, out):
        if grad_of is not None:
            out.retain_grad()
        seen["out"] = out

    h = module.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad_of is not None):
            logits = model(x)
            if grad_of is not None:
                grad_of(logits).backward()
    finally:
        h.remove()
    out = seen["out"]
    return out.detach(), (out.grad.detach() if grad_of is not None else None)


def test_views_are_found_only_where_the_layout_says_so():
    assert map_view((8, 8, 24)) == ("hwc", (24, 8, 8), 0)
    assert map_view((197, 768)) == ("tokens", (768, 14, 14), 1)
    assert map_view((196, 768)) == ("tokens", (768, 14, 14), 0)
    assert map_view((198, 192)) == ("tokens", (192, 14, 14), 2), "class and distillation tokens"
    assert map_view((64, 56, 56)) is None and map_view((1280,)) is None and map_view((7, 7, 7)) is None


def test_a_channels_last_block_is_captured_and_differentiated_as_maps():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    x = torch.randn(3, 3, 32, 32)
    info = require_maps(resolve_layer(model, "mix", x[:1]))
    assert info.shape == (24, 8, 8) and info.view == "hwc"

    raw, raw_grad = _raw_output(model, "mix", x, grad_of=lambda out: out[:, 2].sum())
    with torch.no_grad(), capture(model, info) as cap:
        model(x)
    torch.testing.assert_close(cap.values[0], raw.permute(0, 3, 1, 2))

    with record(model, [info]) as store:
        out = model(x)
        maps = store[info.address]
        (g,) = torch.autograd.grad(out[:, 2].sum(), maps)
    torch.testing.assert_close(maps.detach(), raw.permute(0, 3, 1, 2))
    torch.testing.assert_close(g, raw_grad.permute(0, 3, 1, 2))
    torch.testing.assert_close(out.detach(), model(x).detach(), msg="recording must not change the output")
    assert not model._forward_hooks and not model.mix._forward_hooks


@pytest.fixture(scope="module")
def vit():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return cnnviz.load_model("timm:vit_tiny_patch16_224", weights="none")


def test_vit_patch_tokens_are_maps_with_the_class_token_set_aside(vit):
    model = vit.model.eval()
    _, x = vit.prepare(sample_image(0))
    x = torch.cat([x, x.flip(-1)])
    info = require_maps(resolve_layer(model, "blocks.11", x[:1]))
    assert info.shape == (192, 14, 14) and info.view == "tokens" and info.prefix == 1

    raw, raw_grad = _raw_output(model, "blocks.11", x, grad_of=lambda out: out[:, 7].sum())
    by_hand = raw[:, 1:].reshape(2, 14, 14, 192).permute(0, 3, 1, 2)
    with torch.no_grad(), capture(model, info) as cap:
        model(x)
    torch.testing.assert_close(cap.values[0], by_hand)
    # patch (i, j) is token 1 + 14 i + j: the map keeps the image's layout, not a transposed one
    torch.testing.assert_close(cap.values[0][:, :, 3, 5], raw[:, 1 + 14 * 3 + 5])

    with record(model, [info]) as store:
        out = model(x)
        (g,) = torch.autograd.grad(out[:, 7].sum(), store[info.address])
    torch.testing.assert_close(g, raw_grad[:, 1:].reshape(2, 14, 14, 192).permute(0, 3, 1, 2))


def test_a_topk_scan_of_a_transformer_block_finds_the_strongest_patches(vit, tmp_path):
    photos = [sample_image(i) for i in (0, 2, 4, 6)]
    result = cnnviz.scan(vit, photos, "blocks.11", units="0:3", k=2, batch_size=4, progress=False)
    model = vit.model.eval()
    x = torch.cat([vit.prepare(p)[1] for p in photos])
    raw, _ = _raw_output(model, "blocks.11", x)
    per_image = raw[:, 1:, :3].amax(dim=1).numpy()  # max over patches, class token excluded
    for unit in range(3):
        best = np.argsort(-per_image[:, unit], kind="stable")[:2]
        top = result.top(unit)
        assert [t[0] for t in top] == [str(photos[i]) for i in best]
        np.testing.assert_allclose([t[1] for t in top], per_image[best, unit], rtol=1e-5)


def test_ordinary_maps_and_vectors_are_left_as_they_are_and_others_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 30))
    x = torch.randn(1, 3, 16, 16)
    conv = resolve_layer(model, "0", x)
    assert require_maps(conv) is conv
    vec = resolve_layer(model, "3", x)
    assert require_maps(vec, vector_ok=True) is vec
    with pytest.raises(LayerError, match="not CxHxW"):
        require_maps(vec)


def test_occlusion_follows_a_token_layer_as_a_map_and_the_incremental_mode_says_it_cannot(vit):
    from cnnviz.errors import ParameterError

    photo = sample_image(0)
    r = cnnviz.occlusion(vit, photo, window=112, stride=112, layer="blocks.11", channel=5, batch_size=4,
                         progress=False)
    assert r.feature_map.shape == (14, 14)
    raw, _ = _raw_output(vit.model.eval(), "blocks.11", vit.prepare(photo)[1])
    np.testing.assert_allclose(r.params["baseline_activation"], float(raw[0, 1:, 5].sum()), rtol=1e-4)
    with pytest.raises(ParameterError, match="mode 'incremental' follows layers that output CxHxW maps"):
        cnnviz.occlusion(vit, photo, window=112, stride=112, layer="blocks.11", mode="incremental", progress=False)


def test_grad_cam_on_a_transformer_block_equals_pytorch_grad_cam_with_its_reshape(vit):
    """pytorch-grad-cam reads a ViT block through a `reshape_transform` (class token dropped, the
    patches laid out 14 x 14); cnnviz reads it through its token view: the maps must agree. The
    layer is the last block's first norm, as pytorch-grad-cam's guide takes it: at the block's
    output the class score (read from the class token alone) has no gradient on the patches."""
    gc = pytest.importorskip("pytorch_grad_cam")
    photo = sample_image(0)
    r = cnnviz.attribute(vit, photo, "gradcam", layer="blocks.11.norm1", target=3)
    model = vit.model.eval()
    x = vit.prepare(photo)[1]

    def reshape(t):
        return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

    with gc.GradCAM(model=model, target_layers=[model.blocks[11].norm1], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=x, targets=[gc.utils.model_targets.ClassifierOutputTarget(3)])[0]
    ours = r.map[0]
    assert float(theirs.max()) > 0 and float(ours.max()) > 0
    ours = (ours - ours.min()) / max(float(ours.max() - ours.min()), 1e-12)
    assert float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]) > 0.99


def test_feature_visualization_of_a_token_layer_raises_the_unit_read_as_a_map(vit):
    from cnnviz import featvis

    vis = featvis.visualize_units(vit, "blocks.10", "0:2", steps=6, seed=0, priors="none", progress=False)
    hist = np.asarray(vis.history)
    assert vis.images.shape[1:3] == (224, 224) and hist.shape[1] == 2
    assert (hist[-1] > hist[0]).all(), "the units' mean over the patch tokens must rise"
