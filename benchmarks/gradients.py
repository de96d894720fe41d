"""Backprop engines: cnnviz against captum's counterpart, per image, on the same model, images and
device, in one process.

    python benchmarks/gradients.py [--model efficientnet_lite0] [--images 8] [--repeats 3] [--device auto]
    python benchmarks/gradients.py --stability [--images 8] [--samples 16] [--seeds 3]

Both sides get the same normalized batch of N real photos in one call (captum with the top-1
classes given, cnnviz finding them itself). Rounds are interleaved so that a slow
spell of a shared machine hits every contender alike; the table shows medians per image and the
ratio cnnviz / captum (the issue's bar: at most 1.2). Note that on models with ReLU6 (such as
EfficientNet-Lite) captum's GuidedBackprop and Deconvolution silently compute the plain gradient,
so their timing there is that of a cheaper, wrong computation.

With --stability: SmoothGrad's seed-to-seed stability instead of speed, for both ways of averaging
(`smooth_mode` mean: signed signals averaged, the paper's definition, and mean-abs: |signal|
averaged, captum's NoiseTunnel over Saliency): per image, the Pearson correlation between the maps
of every pair of seeds; the table shows their median and minimum over images and pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from machine import sample_images  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = sample_images()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="e.g. none: random weights (a ReLU model such as resnet18, "
                                                    "where captum's guided backprop and deconvnet are right)")
    ap.add_argument("--images", type=int, default=8, help="batch of real photos from the ImageNet sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=16, help="SmoothGrad samples")
    ap.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    ap.add_argument("--methods", default="", help="comma-separated subset (prefixes of the table's names)")
    ap.add_argument("--stability", action="store_true", help="SmoothGrad seed-to-seed stability, both modes")
    ap.add_argument("--seeds", type=int, default=3, help="seeds compared pairwise with --stability")
    args = ap.parse_args(argv)
    if args.stability:
        return stability(args)

    import captum
    from captum.attr import (Deconvolution, GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam,
                             NoiseTunnel, Saliency)

    import cnnviz
    from cnnviz.engines.common import resolve_device
    from cnnviz.engines.gradients import attribute
    from cnnviz.layers import default_feature_layer

    dev = resolve_device(args.device)
    lm = cnnviz.load_model(args.model, weights=args.weights)
    model = lm.model.eval().to(dev)
    files = sorted(SAMPLE.glob("*.jpg"))[: args.images] if SAMPLE.is_dir() else [ROOT / "assets" / "rocket.jpg"]
    pics = [cnnviz.load_image(f) for f in files]
    x = torch.cat([lm.prepare(p)[1] for p in pics]).to(dev)
    n = len(pics)
    with torch.no_grad():
        targets = model(x).argmax(1)
    info = default_feature_layer(model, x[:1])
    layer_module = dict(model.named_modules())[info.name]
    black = lm.preprocessing.fill_value("black").to(dev).expand_as(x).contiguous()
    print(f"model {lm.name}; {n} images per call; device {dev}; torch {torch.__version__}, captum {captum.__version__}, "
          f"cnnviz {cnnviz.__version__}; Grad-CAM layer {info.address}; {torch.get_num_threads()} threads", flush=True)

    def ours(method, **kw):  # the same normalized batch captum gets; each image's top-1 found by cnnviz
        return lambda: attribute(lm, x, method, device=str(dev), **kw)

    def theirs(make):
        def run():
            xi = x.clone().requires_grad_(True)
            make(xi)
        return run

    gradcam = LayerGradCam(model, layer_module)
    pairs = {
        "saliency": (ours("saliency"), theirs(lambda xi: Saliency(model).attribute(xi, target=targets, abs=False))),
        "guided": (ours("guided"), theirs(lambda xi: GuidedBackprop(model).attribute(xi, target=targets))),
        "deconv": (ours("deconv"), theirs(lambda xi: Deconvolution(model).attribute(xi, target=targets))),
        "gradcam": (ours("gradcam"), theirs(lambda xi: LayerAttribution.interpolate(
            gradcam.attribute(xi, target=targets, relu_attributions=True), xi.shape[2:], "bilinear"))),
        f"smoothgrad x{args.samples}": (
            ours("saliency", smooth=args.samples),
            theirs(lambda xi: NoiseTunnel(Saliency(model)).attribute(xi, nt_type="smoothgrad", nt_samples=args.samples,
                                                                     stdevs=0.15 * float(x.max() - x.min()),
                                                                     target=targets, abs=False,
                                                                     nt_samples_batch_size=args.samples))),
        f"ig x{args.steps}": (
            ours("ig", ig_steps=args.steps),
            theirs(lambda xi: IntegratedGradients(model).attribute(xi, baselines=black, target=targets,
                                                                   n_steps=args.steps,
                                                                   internal_batch_size=args.steps))),
    }
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        pairs = {k: v for k, v in pairs.items() if any(k.startswith(w) for w in wanted)}
    times = {k: ([], []) for k in pairs}
    for k, (a, b) in pairs.items():  # warm-up
        a()
        b()
    for _ in range(args.repeats):
        for k, (a, b) in pairs.items():
            for fn, store in zip((a, b), times[k]):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                store.append(time.perf_counter() - t0)
    print(f"\n{'method':<16}{'cnnviz ms/img':>15}{'captum ms/img':>15}{'ratio':>8}")
    worst = 0.0
    for k, (ta, tb) in times.items():
        a, b = statistics.median(ta) / n * 1e3, statistics.median(tb) / n * 1e3
        worst = max(worst, a / b)
        print(f"{k:<16}{a:>15.1f}{b:>15.1f}{a / b:>8.2f}")
    print(f"\nworst ratio cnnviz / captum = {worst:.2f} (bar: 1.2)")
    return 0


def stability(args) -> int:
    """Seed-to-seed Pearson r of SmoothGrad maps (saliency and guided), mean vs mean-abs."""
    import itertools

    import numpy as np

    import cnnviz
    from cnnviz.engines.gradients import attribute

    lm = cnnviz.load_model(args.model, weights=args.weights)
    files = sorted(SAMPLE.glob("*.jpg"))[: args.images] if SAMPLE.is_dir() else [ROOT / "assets" / "rocket.jpg"]
    pics = [cnnviz.load_image(f) for f in files]
    print(f"model {lm.name}; {len(pics)} photos; {args.samples} noisy copies; noise 0.15; seeds 0..{args.seeds - 1}",
          flush=True)
    print(f"\n{'method':<10}{'mode':<10}{'median r':>10}{'min r':>8}")
    for method in ("saliency", "guided"):
        for mode in ("mean", "mean-abs"):
            maps = [attribute(lm, pics, method, smooth=args.samples, seed=s, smooth_mode=mode, device=args.device).map
                    for s in range(args.seeds)]
            rs = [float(np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1])
                  for a, b in itertools.combinations(maps, 2) for i in range(len(pics))]
            print(f"{method:<10}{mode:<10}{np.median(rs):>10.3f}{min(rs):>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
