"""Every engine on the timm architectures the issue names (issue 9): ConvNeXt-T, RegNetY,
EfficientNet-B0 (SiLU), MobileNetV3 (Hardswish), ResNet-50, with random weights at 96 x 96 px.

Each must give what a wrong layer choice or a broken hook spoils: maps of the input's size that
are finite and not all zero, a receptive-field table whose last spatial layer covers the input, a
top-k scan whose values equal a plain forward hook's spatial maxima, feature visualization that
raises its objective (plain pixel ascent: no random transforms in the way), and the model left
as it was."""

import numpy as np
import pytest
import torch

import cnnviz
from cnnviz.layers import default_feature_layer
from cnnviz.models import Preprocessing, load_model

from helpers import assert_untouched, sample_image, snapshot

pytest.importorskip("timm")

ARCHS = ["convnext_tiny", "regnety_002", "efficientnet_b0", "mobilenetv3_small_050", "resnet50"]
METHODS = {"saliency": {}, "guided": {}, "deconv": {}, "gradcam": {}, "guided_gradcam": {}, "gradcampp": {},
           "layercam": {}, "ig": {"ig_steps": 4}, "smoothgrad": {"smooth": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_engine_runs_on_the_timm_architecture(arch, tmp_path):
    torch.manual_seed(0)
    lm = load_model(f"timm:{arch}", weights="none", preprocessing=Preprocessing(crop=(96, 96), resize=110))
    photos = [sample_image(i) for i in (0, 2, 4)]
    pixels = np.asarray(lm.prepare(photos[0])[0])
    x = lm.prepare(pixels)[1]
    before = snapshot(lm.model, x)

    occ = cnnviz.occlusion(lm, pixels, window=32, stride=32, progress=False)
    assert np.isfinite(occ.true_class_prob).all() and occ.true_class_prob.shape == (3, 3)

    for method, options in METHODS.items():
        name = "saliency" if method == "smoothgrad" else method
        r = cnnviz.attribute(lm, pixels, name, **options)
        assert r.map.shape == (1, 96, 96) and np.isfinite(r.map).all(), method
        assert float(np.abs(r.map).max()) > 0, f"{method}: an all-zero map on {arch}"

    rf = cnnviz.receptive_field(lm)
    assert len(rf.layers) > 10 and int(rf.rf.max()) >= 96, "the deepest maps must see the whole 96 px input"

    layer = default_feature_layer(lm.model, x)
    scan = cnnviz.scan(lm, photos, layer.address, units="0:3", k=2, batch_size=4, progress=False)
    feats = []
    handle = dict(lm.model.named_modules())[layer.name].register_forward_hook(
        lambda m, i, o: feats.append(o.detach()))
    try:
        with torch.no_grad():
            lm.model.eval()(torch.cat([lm.prepare(p)[1] for p in photos]))
    finally:
        handle.remove()
    peaks = feats[layer.call or 0][:, :3].flatten(2).amax(2).numpy()
    for unit in range(3):
        np.testing.assert_allclose(sorted((v for _, v, _ in scan.top(unit)), reverse=True),
                                   np.sort(peaks[:, unit])[::-1][:2], rtol=1e-4, atol=1e-5)

    vis = cnnviz.featvis.visualize_units(lm, layer.address, "0:2", steps=6, size=64, seed=0, priors="none")
    hist = np.asarray(vis.history)
    assert hist.shape[1] == 2 and np.isfinite(vis.objective).all()
    assert (hist[-1] > hist[0]).all(), f"feature visualization did not raise the objective on {arch}"
    assert_untouched(lm.model, x, before)
