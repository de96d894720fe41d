"""Backprop engines: cnnviz against captum's counterpart, per image, on the same model, images and
device, in one process.

    python benchmarks/gradients.py [--model efficientnet_lite0] [--images 8] [--repeats 3] [--device auto]
    python benchmarks/gradients.py --stability [--images 8] [--samples 16] [--seeds 3]
    python benchmarks/gradients.py --per-call [--rounds 5] [--firsts 3] [--methods saliency,lrp] [--scorecam]

Both sides get the same normalized batch of N real photos in one call (captum with the top-1
classes given, cnnviz finding them itself). Rounds are interleaved so that a slow
spell of a shared machine hits every contender alike; the table shows medians per image and the
ratio cnnviz / captum (the issue's bar: at most 1.2). Note that on models with ReLU6 (such as
EfficientNet-Lite) captum's GuidedBackprop and Deconvolution silently compute the plain gradient,
so their timing there is that of a cheaper, wrong computation.

With --per-call: one image at a time, as a notebook user calls them, the whole call from a path
on both sides, for every method against its peer: captum (saliency, guided, deconv, IG,
SmoothGrad), pytorch-grad-cam (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM with --scorecam), zennit
(LRP-ε, z+, α2β1, α1β0). See `per_call` for exactly what each side's timed region holds.

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
    ap.add_argument("--per-call", action="store_true", help="one image per call, from a path, every method vs its peer")
    ap.add_argument("--rounds", type=int, default=5, help="--per-call: repeated calls timed per method and side")
    ap.add_argument("--firsts", type=int, default=3, help="--per-call: first calls timed (each on a fresh model copy)")
    ap.add_argument("--scorecam", action="store_true", help="--per-call: also Score-CAM (a forward pass per channel)")
    args = ap.parse_args(argv)
    if args.stability:
        return stability(args)
    if args.per_call:
        return per_call(args)

    import captum
    from captum.attr import (Deconvolution, GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam,
                             NoiseTunnel, Saliency)

    import cnnviz
    from cnnviz.engines.common import resolve_device
    from cnnviz.engines.attribution.gradients import attribute
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


def per_call(args) -> int:
    """One image per call, whole call from a path, cnnviz against its peer, interleaved in one process.

    Timed region, both sides: from the image's path to the finished map. cnnviz: `cnnviz.attribute(lm,
    path, method)`, nothing else given (it reads and crops the photo, finds the top-1 class and the
    layer itself, returns the maps, the crop and the result's records). The peer: PIL open + convert,
    torchvision Resize/CenterCrop/ToTensor/Normalize with the model's own preprocessing, then the
    library's attribution of the top-1 class. captum needs the class as an argument: the strict
    comparison ("peer") is given it, known beforehand (not timed); the column "peer+top1" adds the
    no-grad forward pass that a captum user needs to find it. pytorch-grad-cam (targets=None) and
    zennit (the output seed as a function of the output) find the top-1 in their own pass. zennit runs
    as its users call it: on the model itself, with a composite of the same rules (EpsilonPlus for z+,
    EpsilonAlpha2Beta1 for α2β1; for LRP-epsilon and α1β0, zennit's base layer map (Pass on
    activations, Norm on sums and average pooling) with epsilon, or AlphaBeta(1, 0), on convolutions
    and epsilon on linear layers) whose canonizers are applied at call time (inside
    the timed call: zennit merges the batch norms into the convolutions when the composite is
    registered and undoes it after). The canonizers: zennit's own where they cover the model
    (ResNetCanonizer, VGGCanonizer for torchvision's ResNets and VGGs); for EfficientNet-Lite, which
    zennit does not cover, what a zennit user writes once (untimed): a NamedMergeBatchNorm naming
    every (convolution, batch norm) pair, and an AttributeCanonizer that makes the MBConv skip
    addition a `zennit.layer.Sum` (without it zennit's relevance is not the same LRP: see
    cnnviz/engines/lrp.py); SequentialMergeBatchNorm for any other model. cnnviz gets the model as it
    is and folds the batch norms itself on its first call (remembered for later calls).
    pytorch-grad-cam's layer is the head's batch norm (`_bn1`): its hooks cannot address the head's
    call of Lite0's shared ReLU6 (`_swish@1`, cnnviz's default layer), whose pass costs the same.

    First call: each side's first call on a fresh copy of the model (no cache of either side warm
    for it), after the process has run the model once at this shape outside both libraries; the
    median of --firsts such calls. Repeated: the median of --rounds calls on one model after the
    first. Sides alternate which goes first, method after method."""
    import copy
    import os
    import tempfile

    import numpy as np
    from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency
    from PIL import Image
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
    from torchvision import transforms
    from zennit.attribution import Gradient as ZGradient
    from zennit.composites import EpsilonAlpha2Beta1, EpsilonPlus, LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta as ZAlphaBeta, Epsilon as ZEpsilon
    from zennit.types import Convolution

    import cnnviz
    from cnnviz.engines.attribution.gradients import DEFAULT_IG_STEPS, DEFAULT_NOISE, DEFAULT_SAMPLES
    from machine import cpu_model

    os.environ["CNNVIZ_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnviz-bench-")  # no batch size remembered
    torch.manual_seed(0)
    lm = cnnviz.load_model(args.model, weights=args.weights)
    pre = lm.preprocessing
    interp = {"bilinear": transforms.InterpolationMode.BILINEAR, "bicubic": transforms.InterpolationMode.BICUBIC,
              "nearest": transforms.InterpolationMode.NEAREST}[pre.interpolation]
    tf = transforms.Compose([transforms.Resize(pre.resize, interpolation=interp), transforms.CenterCrop(pre.crop),
                             transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    files = sorted(SAMPLE.glob("*.jpg")) if SAMPLE.is_dir() else [ROOT / "assets" / "rocket.jpg"]
    path = str(files[0])
    black = pre.fill_value("black")[None]

    def load(p):  # the peer's image loading
        with Image.open(p) as im:
            return tf(im.convert("RGB"))[None]

    x0 = load(path)
    with torch.no_grad():
        top1 = int(lm.model.eval()(x0).argmax(1))
        xg = x0.clone().requires_grad_(True)
    with torch.enable_grad():  # the model once at this shape, outside both libraries (oneDNN's first-shape costs)
        torch.autograd.grad(lm.model(xg)[0, top1], xg)
    # which peer, and what it is given (captum: the class, known beforehand; the others find it)
    onehot = lambda out: torch.eye(out.shape[1])[out.argmax(1)]  # noqa: E731
    score = lambda out: onehot(out) * out  # noqa: E731  LRP's seed: the class score itself
    eps_layers = layer_map_base(1e-6) + [(Convolution, ZEpsilon(1e-6)), (torch.nn.Linear, ZEpsilon(1e-6))]
    ab10_layers = layer_map_base(1e-6) + [(Convolution, ZAlphaBeta(1.0, 0.0)), (torch.nn.Linear, ZEpsilon(1e-6))]
    canonizers = zennit_canonizers(lm.model)  # written once by a zennit user; applied in each call

    def captum_call(make, **kw):
        def run(model, find_top1=False):
            x = load(path)
            if find_top1:
                with torch.no_grad():
                    t = int(model(x).argmax(1))
            else:
                t = top1
            return make(model).attribute(x.requires_grad_(True), target=t, **kw)
        return run

    def cam_call(cls, layer="_bn1"):
        def run(model, find_top1=False):
            with cls(model=model, target_layers=[model.get_submodule(layer)]) as cam:
                return cam(input_tensor=load(path), targets=None)
        return run

    def zennit_call(composite):
        def run(model, find_top1=False):
            with ZGradient(model=model, composite=composite()) as attributor:
                return attributor(load(path).requires_grad_(True), score)[1]
        return run

    x_sg = x0
    sg_sigma = DEFAULT_NOISE * float(x_sg.max() - x_sg.min())
    methods = {
        "saliency": ({}, "captum", captum_call(Saliency, abs=False)),
        "guided": ({}, "captum", captum_call(GuidedBackprop)),
        "deconv": ({}, "captum", captum_call(Deconvolution)),
        f"ig x{DEFAULT_IG_STEPS}": ({"method": "ig"}, "captum",
                                    captum_call(IntegratedGradients, baselines=black, n_steps=DEFAULT_IG_STEPS)),
        f"smoothgrad x{DEFAULT_SAMPLES}": ({"method": "smoothgrad"}, "captum",
                                           captum_call(lambda m: NoiseTunnel(Saliency(m)), nt_type="smoothgrad",
                                                       nt_samples=DEFAULT_SAMPLES, stdevs=sg_sigma, abs=False)),
        "gradcam": ({}, "grad-cam", cam_call(GradCAM)),
        "gradcampp": ({}, "grad-cam", cam_call(GradCAMPlusPlus)),
        "layercam": ({}, "grad-cam", cam_call(LayerCAM)),
        "lrp-epsilon": ({}, "zennit", zennit_call(lambda: LayerMapComposite(layer_map=eps_layers,
                                                                            canonizers=canonizers()))),
        "lrp-zplus": ({}, "zennit", zennit_call(lambda: EpsilonPlus(epsilon=1e-6, canonizers=canonizers()))),
        "lrp-alphabeta": ({}, "zennit", zennit_call(lambda: EpsilonAlpha2Beta1(epsilon=1e-6, canonizers=canonizers()))),
        "lrp-alpha1beta0": ({}, "zennit", zennit_call(lambda: LayerMapComposite(layer_map=ab10_layers,
                                                                                canonizers=canonizers()))),
    }
    if args.scorecam:
        methods["scorecam"] = ({}, "grad-cam", cam_call(ScoreCAM))
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        methods = {k: v for k, v in methods.items() if any(k.startswith(w) for w in wanted)}

    def fresh_lm():
        return cnnviz.models.LoadedModel(copy.deepcopy(lm.model), lm.name, lm.weights, lm.preprocessing,
                                         lm.categories)

    def peer_model(name, model):
        return model

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    if any(k.startswith("lrp") for k in methods):
        print("zennit: the model as it is, composite with canonizers applied in each call: "
              + ", ".join(type(c).__name__ for c in canonizers()), flush=True)
    print(f"model {lm.name}; one image per call ({Path(path).name}); {torch.get_num_threads()} threads; "
          f"{cpu_model()}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}", flush=True)
    first = {k: ([], [], []) for k in methods}
    rep = {k: ([], [], []) for k in methods}
    for j in range(args.firsts):
        for i, (name, (kw, lib, peer)) in enumerate(methods.items()):
            mine, theirs = fresh_lm(), fresh_lm().model
            ours = lambda: cnnviz.attribute(mine, path, kw.get("method", name))  # noqa: E731
            pm = peer_model(name, theirs)
            sides = [(0, ours), (1, lambda: peer(pm))]
            for side, fn in (sides if (i + j) % 2 == 0 else sides[::-1]):
                first[name][side].append(timed(fn))
            first[name][2].append(timed(lambda: peer(pm, True)) if lib == "captum" else float("nan"))
    theirs = fresh_lm().model
    for r in range(args.rounds + 1):  # round 0: the first call on this model, not counted
        for i, (name, (kw, lib, peer)) in enumerate(methods.items()):
            ours = lambda: cnnviz.attribute(lm, path, kw.get("method", name))  # noqa: E731
            pm = peer_model(name, theirs)
            calls = [(0, ours), (1, lambda: peer(pm))] + ([(2, lambda: peer(pm, True))] if lib == "captum" else [])
            for side, fn in (calls if (i + r) % 2 == 0 else calls[::-1]):
                t = timed(fn)
                if r:
                    rep[name][side].append(t)
    med = lambda v: statistics.median(v) if v and not any(np.isnan(v)) else float("nan")  # noqa: E731
    print(f"\n{'method':<16}{'peer':<10}{'':>4}{'cnnviz ms':>11}{'peer ms':>9}{'ratio':>7}"
          f"{'peer+top1':>11}{'ratio':>7}")
    worst = 0.0
    for name, (_, lib, _) in methods.items():
        for label, store in (("first", first[name]), ("again", rep[name])):
            a, b, c = (med(v) * 1e3 for v in store)
            worst = max(worst, a / b)
            extra = f"{c:>11.1f}{a / c:>7.2f}" if lib == "captum" else f"{'':>11}{'':>7}"
            print(f"{name:<16}{lib:<10}{label:>5}{a:>10.1f}{b:>9.1f}{a / b:>7.2f}{extra}", flush=True)
    print(f"\nworst ratio cnnviz / peer = {worst:.2f} (bar: 1.1); load average now {os.getloadavg()[0]:.2f}")
    return 0


def zennit_canonizers(model):
    """A function making the zennit canonizers for `model` (see `per_call`), fresh for each call."""
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.layer import Sum
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    names = dict(model.named_modules())
    if "_blocks.0" in names and "_conv_stem" in names:  # EfficientNet-Lite (efficientnet_lite_pytorch)
        from efficientnet_lite_pytorch.model import MBConvBlock

        pairs = [(["_conv_stem"], "_bn0"), (["_conv_head"], "_bn1")]
        for name, m in names.items():
            if isinstance(m, MBConvBlock):
                pairs += [([f"{name}.{c}"], f"{name}.{b}") for c, b in
                          (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
                          if f"{name}.{c}" in names and f"{name}.{b}" in names]

        def forward(self, inputs, drop_connect_rate=None):  # MBConvBlock.forward, its addition a Sum
            x = inputs
            if self._block_args.expand_ratio != 1:
                x = self._swish(self._bn0(self._expand_conv(inputs)))
            x = self._swish(self._bn1(self._depthwise_conv(x)))
            x = self._bn2(self._project_conv(x))
            a = self._block_args
            if self.id_skip and a.stride == 1 and a.input_filters == a.output_filters:
                x = self.canonizer_sum(torch.stack([x, inputs], dim=-1))
            return x

        def attributes(name, module):
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()} if isinstance(module, MBConvBlock) \
                else None

        return lambda: [NamedMergeBatchNorm(pairs), AttributeCanonizer(attributes)]
    if "layer1" in names and "fc" in names:
        return lambda: [ResNetCanonizer()]
    if "features" in names and "classifier" in names and not any(isinstance(m, torch.nn.BatchNorm2d)
                                                                   for m in model.modules()):
        return lambda: [VGGCanonizer()]
    return lambda: [SequentialMergeBatchNorm()]


def stability(args) -> int:
    """Seed-to-seed Pearson r of SmoothGrad maps (saliency and guided), mean vs mean-abs."""
    import itertools

    import numpy as np

    import cnnviz
    from cnnviz.engines.attribution.gradients import attribute

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
