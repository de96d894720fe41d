"""Backprop engines: which pixels does an output depend on?

- saliency (Simonyan et al. 2014): the gradient of the class score (the logit) with respect to the
  input; the map is the maximum of |gradient| over colour channels;
- guided backprop (Springenberg et al. 2015) and the Zeiler-Fergus deconvnet (2014): the same
  backward pass with the rectifier rules of `cnnviz.engines.attribution.rules`;
- SmoothGrad (Smilkov et al. 2017) over any of these: the mean over noisy copies of the input, in
  one of two ways (`smooth_mode`): "mean" (the default) averages the signed signals and takes |.|
  for the map afterwards, which is the paper's definition (Eq. 3 averages the sensitivity maps
  M_c = dS_c/dx, the gradient itself; the absolute value is their visualization step);
  "mean-abs" averages |signal| per colour channel, as captum's NoiseTunnel over Saliency (abs=True)
  does. Averaging magnitudes cannot cancel, so "mean-abs" is more stable from seed to seed and
  brighter on the object's texture; "mean" keeps only what has a consistent sign under the noise
  (`benchmarks/gradients.py --stability` measures both);
- Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM;
- Integrated Gradients (Sundararajan et al. 2017), through captum;
- Grad-CAM++, LayerCAM, Score-CAM, RISE (`cnnviz.engines.attribution.cams`) and LRP (`cnnviz.engines.attribution.lrp`).

Each method is a `cnnviz.engines.attribution.methods.Method` in one registry (name, label, signed, needs a
layer, how to compute it); this module checks the options, batches the images and assembles the
result. `rules={"features": "guided", "": "gradient"}` chooses the backward rule per layer (the
longest prefix of a layer's name that ends at a dot; "" is every layer) for saliency, guided,
deconv and the LRP methods, in place of the method's own rule.

Targets: a class (index or name; default each image's top-1), or a unit of a layer: a whole
feature map, one position of it, or the strongest activation of the map. For a unit, every other
activation of the layer is set to zero before projecting down, as Zeiler & Fergus do: the signal
sent back is the unit's own activation at its position(s), zero elsewhere.
Images (for SmoothGrad: their noisy copies) go through the model in batches of `batch_size`,
chosen by measuring when not given (`cnnviz.batching.Batches`), bounded by the memory a forward +
backward pass needs per image (`backprop_item_bytes`). Every batch is padded to full groups
(`batching.pad`), so on a CPU the maps do not depend on the batch size, chosen or given; a call
with one image (one item: no SmoothGrad) runs it alone, unpadded and without a search for the
batch size (`batching.padder`): its maps agree with the same image's in a larger call to float32
rounding.
Integrated Gradients runs one image at a time, its scaled copies in internal batches of at most
IG_MEMORY_BUDGET bytes (`ig_internal_batch` overrides; the maps agree across internal batches to
float32 rounding, as captum sums the batches' partial attributions).

The deconvnet's backward pass ignores the forward pass at every rectifier: in a network without max
pooling (EfficientNet-Lite, MobileNets) nothing of the image reaches it, and its class map is the
same for every image. Every deconvnet result is therefore compared with the map of a uniform gray
image sent back from the same signal; when they agree (Pearson r >= 0.99) the result says so in
params["uninformative"] and params["uninformative_reason"], and the figure and the CLI repeat it.
Where the backward pass provably reads nothing of the forward pass (every step on its path is a
fixed linear map: `dependence.backward_ignores_image`, read from the pass's own graph) the gray
image's map is this very map and r = 1 without a second pass (params["gray_image_check"] "graph");
otherwise the gray image is sent back and r measured ("measured").

A frozen model (`requires_grad_(False)` on every parameter) gives the same maps: the graph is
recorded from the input, which always requires grad here, never from the parameters, and no
parameter's `.grad` is written.
"""

from __future__ import annotations

import math

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from ...bare import takes_model
from ...batching import Batches, memory_limit, model_work, pad, padder
from ...errors import ParameterError
from ...geometry import CropGeometry, params_of, stack_thumbnails
from ...inputs import read_batch
from ...layers import (LayerInfo, default_feature_layer, flattened_after, readable_name, require_maps, resolve_layer,
                       trace_layers)
from ...models import LoadedModel
from ...results import GradientResult, provenance
from . import methods as M
from .cams import (CHANNEL_MEASURE, DEFAULT_MASKS, RISE_BATCH, SCORECAM_BATCH, check_max_channels)
from ..common import model_on_device, progress_bar, resolve_device
from .checks import _check_rule_keys, check_options, resolve_rules  # noqa: F401 (check_options: public here too)
from .dependence import UNINFORMATIVE_R, backward_ignores_image, image_dependence, _uninformative  # noqa: F401
from .ig import _baseline
from .methods import SmoothGrad, signal_at_input
from .targets import Target, Unit

__api__ = ("attribute",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

METHODS = tuple(M.REGISTRY)
SIGNED = set(M.names(signed=True))
CAM = M.names(needs_layer=True)  # a layer's maps, weighted
DEFAULT_NOISE = 0.15
DEFAULT_SAMPLES = 25  # method="smoothgrad" without smooth=
DEFAULT_IG_STEPS = 50
IG_MEMORY_BUDGET = 1 << 30  # bytes the scaled copies of one IG forward + backward pass may take


def _target(targets: torch.Tensor | None, unit: Unit | None) -> Target:
    return Target.of_unit(unit) if unit is not None else Target.of_class(targets)


def input_signal(model, x: torch.Tensor, rule, targets: torch.Tensor | None = None,
                 layer: LayerInfo | None = None, unit: Unit | None = None) -> torch.Tensor:
    """The backward signal at the input (N x 3 x H x W) under `rule` (a name, a Rule or rules per
    layer), from the class scores `targets` (one per image) or from `unit` of `layer`."""
    return signal_at_input(model, x, _target(targets, unit), rule, layer)[0]


def grad_cam(model, x: torch.Tensor, targets: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """Grad-CAM maps (N x h x w at the layer's resolution): ReLU of the feature maps weighted by
    the spatial mean of the class score's gradient."""
    return M.grad_cam(model, x, Target.of_class(targets), layer)["cam"]


def backprop_item_bytes(model, example: torch.Tensor) -> int:
    """Memory one image needs in a forward + backward pass, estimated from the model's layer
    outputs (one forward pass of `example`, cached): each leaf module's output kept for the backward
    pass plus its gradient, in float32. Measured on EfficientNet-Lite0 (CPU, max RSS) the real
    cost is about 0.6 of this: a safe bound."""
    infos = trace_layers(model, example[:1])  # on the model's device, before the engine moves it
    leaves = {name for name, m in model.named_modules() if next(m.children(), None) is None}
    elems = sum(math.prod(i.shape) for i in infos if i.shape and i.name in leaves)
    return max(1, 8 * (elems + example[:1].numel()))


@takes_model
def attribute(lm: LoadedModel, images, method: str = "saliency", **options) -> GradientResult:
    """Attribution maps of `lm` (a LoadedModel, or any nn.Module) for `images`.

    images: one image or several, by the rule of `cnnviz.inputs`: a path, a PIL image, an HxWx3
      numpy array (uint8, or floats in [0, 1]), a 3xHxW tensor of pixels in [0, 1], a list of these,
      or an Nx3xHxW tensor of pixels in [0, 1]. Arrays and tensors at the model's input size are its
      input as they are; any other size is a photo, resized and centre-cropped as a PIL image is.
    normalized: True for an Nx3xHxW tensor already normalized by the model's mean and std.

    method: a name of the registry (`cnnviz.engines.attribution.methods.REGISTRY`): saliency, guided, deconv,
      gradcam, guided_gradcam, ig, gradcampp, layercam, scorecam, rise, lrp-epsilon, lrp-zplus,
      lrp-alphabeta, lrp-alpha1beta0; or "smoothgrad" with `base` (default saliency): SmoothGrad over
      that method with `smooth` copies (default 25).
    rules: backward rules per layer, {layer prefix: rule} (saliency, guided, deconv, lrp-*), in
      place of the method's own: e.g. {"features": "guided", "": "gradient"}. A layer takes the rule
      of the longest key that is its name or a prefix of it ending at a dot ("" covers every layer);
      a layer no key covers takes the plain gradient. Rules: gradient, guided, deconv, the lrp-*
      names, or `cnnviz.engines.attribution.rules.Rule` values (e.g. `cnnviz.engines.attribution.lrp.LRP`).
    target: class index or name for every image (default: each image's top-1).
    layer, unit: the unit of `layer` to project instead of a class (saliency, guided, deconv), or
      Grad-CAM's layer (default: the last convolutional block). A layer is refused where it would
      not be used.
    smooth: SmoothGrad with this many noisy copies (0: off); noise: their std as a fraction of the
      input's range (default 0.15); seed: the noise's seed (default 0); smooth_mode: "mean"
      (default; the paper's definition: signed signals averaged, |.| taken for the map) or
      "mean-abs" (|signal| averaged per channel, as captum's NoiseTunnel over Saliency). noise,
      seed and smooth_mode are refused without smooth.
    ig_steps, baseline: Integrated Gradients' steps (default 50) and baseline image ("black"
      (default), "mean", "white", "blur", a gray level or R,G,B in [0, 1]); refused for the other
      methods. ig_internal_batch: scaled copies per forward + backward pass (default: as many as
      fit in IG_MEMORY_BUDGET, at most ig_steps; recorded in params["ig_internal_batch"]).
    batch_size: images (SmoothGrad: noisy copies) per pass, for every method but ig (default:
      chosen by measuring, see `cnnviz.batching`; the maps do not depend on it on a CPU).
    masks: RISE's random masks per image (default 2000; 1..100000), recorded in params["masks"].
    max_channels: Score-CAM over only the k channels of the layer with the largest spatial mean
      activation, per image (an approximation; default: every channel; 1..the layer's channels),
      recorded in params (max_channels, channels_used, channel_measure).
    progress: Score-CAM and RISE (thousands of masked copies) show a progress bar on stderr when
      they last more than a second (None, default), always (True) or never (False).
    Works also when called inside the caller's `torch.no_grad()` or `torch.inference_mode()`, and on
    a frozen model (no parameter requiring grad), which is left frozen with no `.grad` written.
    A deconvnet result carries params["uninformative"] (see the module's docstring).
    """
    unknown = sorted(set(options) - set(inspect.signature(_attribute).parameters))
    if unknown:
        raise ParameterError(f"attribute takes no {', '.join(map(repr, unknown))}; its options are "
                             f"{', '.join(k for k in inspect.signature(_attribute).parameters if k not in ('lm', 'images', 'method'))}")
    with torch.inference_mode(False), torch.enable_grad():
        return _attribute(lm, images, method, **options)


def _attribute(lm: LoadedModel, images, method: str = "saliency", *, target=None, layer: str | None = None,
               unit: str | int | Unit | None = None, smooth: int = 0, noise: float | None = None,
               seed: int | None = None, smooth_mode: str | None = None, ig_steps: int | None = None,
               baseline: str | None = None, batch_size: int | None = None, ig_internal_batch: int | None = None,
               base: str | None = None, rules=None, masks: int | None = None, max_channels: int | None = None,
               progress: bool | None = None, normalized: bool = False, device: str = "auto") -> GradientResult:
    method, base = M.canonical(method), M.canonical(base)  # either separator: "lrp_epsilon" is "lrp-epsilon"
    if method == "smoothgrad":  # SmoothGrad over the method `base`
        method, smooth = base or "saliency", DEFAULT_SAMPLES if smooth in (0, None) else smooth
    elif base is not None:
        raise ParameterError(f"base={base!r} is used only with method='smoothgrad'; drop it")
    check_options(method, target=target, layer=layer, unit=unit, smooth=smooth, noise=noise, seed=seed,
                  smooth_mode=smooth_mode, ig_steps=ig_steps, baseline=baseline, batch_size=batch_size,
                  ig_internal_batch=ig_internal_batch, rules=rules, masks=masks, max_channels=max_channels)
    m = M.get(method)
    rule_map = resolve_rules(rules) if rules is not None else None
    if rule_map is not None:
        _check_rule_keys(lm.model, rule_map)
    noise = DEFAULT_NOISE if noise is None else noise
    seed = 0 if seed is None else seed
    smooth_mode = smooth_mode or "mean"
    ig_steps = DEFAULT_IG_STEPS if ig_steps is None else ig_steps
    baseline = baseline or "black"
    images = read_batch(images, normalized)  # the rule of cnnviz.inputs
    if isinstance(images, torch.Tensor):  # a batch already normalized, N x 3 x H x W
        x = images
        pixels = lm.preprocessing.denormalize(x)
        geos = [CropGeometry.identity(*x.shape[2:], source="tensor")] * len(x)
    else:
        prepared = [lm.prepare(im, geometry=True) for im in images]
        pixels = np.stack([p for p, _, _ in prepared])
        x = torch.cat([t for _, t, _ in prepared])
        geos = [g for _, _, g in prepared]
    n = len(x)
    dev = resolve_device(device)
    unit_obj = Unit.parse(unit) if unit is not None else None
    info, layer_note = _layer(lm, m, x, layer, unit_obj)
    gen = torch.Generator().manual_seed(seed)
    fixed = None if target is None else lm.class_index(target)
    dependence = None
    single = n * (smooth or 1) == 1 and method != "ig"  # one item: run alone, nothing to choose or pad
    item_bytes = None if single else backprop_item_bytes(lm.model, x[:1])
    if method == "ig":
        internal, internal_auto = ig_internal_batch, ig_internal_batch is None
        if internal is None:
            internal = memory_limit(dev, item_bytes, max(1, min(ig_steps, IG_MEMORY_BUDGET // item_bytes)))
        batches = None
    elif single:
        batches = Batches(1, batch_size, device=dev, start=1, limit=1)
    else:
        # on CUDA, Batches measures the memory of the first batch itself
        work = model_work(lm.model, x, engine="gradients", method=method, smooth=bool(smooth),
                          unit=unit_obj is not None, layer=info.address if info else None)
        batches = Batches(n * (smooth or 1), batch_size, device=dev,
                          item_bytes=item_bytes if dev.type != "cuda" else None, work=work)
    prep = {}
    with model_on_device(lm.model, dev) as model:
        x = x.to(dev)
        if m.prepare is not None:  # e.g. LRP: batch norms folded, on a copy
            model, prep = m.prepare(model, x[:1], info)
        # the pass of a one-pass method also gives the top-1 classes; the others need them before they start
        top1 = None
        if not (m.one_pass and not smooth and unit_obj is None):
            with torch.inference_mode():
                top1 = torch.cat([model(padder(n)(x[i:i + 32])).argmax(1)[:len(x[i:i + 32])].clone()
                                  for i in range(0, n, 32)])
        if unit_obj is None:
            targets = torch.full((n,), fixed, dtype=torch.long, device=dev) if fixed is not None else top1
        else:
            targets = None
        tgt = _target(targets, unit_obj)
        extra = {"rules": rule_map} if rule_map is not None else {}
        proofs: list[bool] = []  # deconv: per batch, whether its backward pass reads nothing of the forward pass
        if method == "deconv" and rule_map is None and not smooth:
            extra["inspect"] = lambda out, leaf: proofs.append(backward_ignores_image(out, leaf))
        if method == "ig":
            signal = m.compute(model, x, tgt, baseline=_baseline(lm, x, baseline), steps=ig_steps, smooth=smooth,
                               noise=noise, gen=gen, internal=internal)
        elif smooth:
            signal = SmoothGrad(m, smooth, noise, smooth_mode).compute(model, x, tgt, info, gen=gen, batches=batches,
                                                                       **extra)
        elif method in ("scorecam", "rise"):  # thousands of masked copies: a progress bar after a second
            if method == "rise":
                masks = DEFAULT_MASKS if masks is None else masks
                extra, total, unit = {"masks": masks}, n * masks, "mask"
            else:
                max_channels = check_max_channels(max_channels, info.shape[0], info.address)
                extra, total, unit = {"max_channels": max_channels}, n * min(max_channels or info.shape[0],
                                                                               info.shape[0]), "ch"
            with progress_bar(total, method, progress, unit=unit) as bar:
                signal = _run(model, m, x, tgt, info, batches, {**extra, "bar": bar}, fill=lambda t: t)
        else:
            signal = _run(model, m, x, tgt, info, batches, extra, padder(n))
        if top1 is None:
            top1 = signal["top1"]
            if targets is None and unit_obj is None:
                targets = top1
        relevance = _relevance(model, x, signal, targets) if (
            m.scale_unit == "relevance" and unit_obj is None and targets is not None) else None
        if method == "deconv" and rule_map is None:
            if proofs and all(proofs):  # the gray image's map is this very map: nothing to measure
                dependence, check = ([1.0] * n, 0), "graph"
            else:
                dependence, check = image_dependence(model, x, targets, info, unit_obj,
                                                     lm.preprocessing.fill_value("mean").to(dev),
                                                     _half_batch(batches), padder(n)), "measured"
    if "heat" in signal:
        attr, amap = signal["heat"][:, None], signal["heat"]
    elif "cam" in signal:
        heat = F.interpolate(signal["cam"][:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        if "guided" in signal:
            attr = signal["guided"] * heat[:, None]
            amap = M.get("guided").to_map(attr)
        else:
            attr, amap = heat[:, None], heat
    else:
        attr = signal["input"]
        amap = m.to_map(attr)
    names = [lm.class_name(int(t)) for t in targets] if targets is not None else [unit_obj.describe()] * n
    params = {"method": method, "rule": m.rule if rule_map is None else "per-layer",
              "layer": info.address if info else None, "layer_type": info.type if info else None,
              "unit": unit_obj.describe() if unit_obj else None, "target_given": target is not None,
              "smooth": smooth, "noise": noise if smooth else None, "seed": seed if smooth else None,
              "smooth_mode": smooth_mode if smooth else None,
              "ig_steps": ig_steps if method == "ig" else None, "baseline": baseline if method == "ig" else None,
              "signed": m.signed, "geometry": params_of(geos),
              "class_names": {str(i): lm.class_name(i) for i in sorted({int(t) for t in top1.tolist()})}}
    if rule_map is not None:
        params["rules"] = {k: v.name for k, v in rule_map.items()}
    params.update(prep)
    if layer_note:
        params["layer_note"] = layer_note
    if method == "ig":
        params.update({"ig_internal_batch": int(internal), "ig_internal_batch_auto": bool(internal_auto),
                       "ig_item_bytes": int(item_bytes), "ig_memory_budget": IG_MEMORY_BUDGET})
    else:
        params.update(batches.record())
    if dependence is not None:
        params.update(_uninformative(lm.name, *dependence, unit=unit_obj is not None))
        params["gray_image_check"] = check
    if method == "rise":
        params.update({"masks": int(masks), "rise_grid": 7, "rise_keep": 0.5, "masked_batch": RISE_BATCH})
    if method == "scorecam":
        used = min(max_channels or info.shape[0], info.shape[0])
        params.update({"max_channels": max_channels, "channels_used": int(used), "layer_channels": int(info.shape[0]),
                       "channel_measure": CHANNEL_MEASURE if used < info.shape[0] else None,
                       "masked_batch": SCORECAM_BATCH})
    if relevance is not None:
        params.update(relevance)
        _warn_leak(method, params)
    return GradientResult(
        params=params, provenance=provenance(lm.identity(), str(dev)), image=pixels, original=stack_thumbnails(geos),
        attribution=attr.float().cpu().numpy(), map=amap.float().cpu().numpy(),
        targets=(targets.cpu().numpy() if targets is not None else np.full(n, -1)).astype(np.int32),
        target_names=np.array(names, dtype=str),
        top1=top1.cpu().numpy().astype(np.int32))


def _layer(lm, m, x, layer, unit_obj):
    """(the layer of a unit or of a CAM's maps, a note on it), checked against the model."""
    if unit_obj is None and not m.needs_layer:
        return None, None
    info = layer_note = None
    info = resolve_layer(lm.model, layer, x[:1]) if layer else (
        default_feature_layer(lm.model, x[:1]) if m.needs_layer else None)
    if info is None:
        raise ParameterError("a --unit needs a --layer")
    if m.needs_layer:  # CxHxW maps, or a channels-last / token layer read as maps (layers.require_maps)
        info = require_maps(info)
    if m.needs_layer and layer and info.view is None:  # named by the user: drawn, with a warning where it cannot be a spatial map
        lost = flattened_after(lm.model, x[:1], info)
        layer_note = None if lost is None else (
            f"layer {info.address!r} becomes a sequence of tokens by {lost.address!r} "
            f"({'x'.join(map(str, lost.shape))}) before the output: its map's positions need not be where the "
            "class evidence is")
    if unit_obj is not None and not 0 <= unit_obj.channel < info.shape[0]:
        raise ParameterError(f"unit channel {unit_obj.channel} is out of range: layer {info.address!r} has "
                             f"channels 0..{info.shape[0] - 1}")
    if unit_obj is not None and isinstance(unit_obj.where, tuple):
        y, xx = unit_obj.where
        if len(info.shape) != 3 or not (0 <= y < info.shape[1] and 0 <= xx < info.shape[2]):
            raise ParameterError(f"unit position ({y}, {xx}) is outside layer {info.address!r} of shape "
                                 f"{'x'.join(map(str, info.shape))}")
    return info, layer_note


def _to_map(method: str, signal: torch.Tensor) -> torch.Tensor:
    return M.get(method).to_map(signal)


def _relevance(model, x, signal, targets) -> dict:
    """What an LRP result records of its conservation: each image's relevance at the input as a share
    of its target score (`relevance_share`, attribution.sum() / score; under SmoothGrad, the mean
    over the noisy copies over the clean image's score) and, from the pass's `Ledger`, the mean over
    the images of the share entering and leaving each layer a rule acted on (`relevance_layers`,
    from the output to the input; "lost" = entering - leaving, the share its bias and stabilizer
    took)."""
    from .lrp import MIN_SHARE

    total = signal["input"].detach().double().flatten(1).sum(1)
    score = signal.get("score")
    if score is None:  # SmoothGrad: the clean images' scores
        with torch.inference_mode():
            out = torch.cat([model(pad(x[i:i + 32]))[:len(x[i:i + 32])].double() for i in range(0, len(x), 32)])
        score = out[torch.arange(len(x)), targets.to(out.device)]
    share = (total / score.to(total.device)).cpu()
    out = {"relevance_share": [_sig(v) for v in share], "relevance_min_share": MIN_SHARE,
           "relevance_score": [_sig(v) for v in score.cpu()]}
    layers = signal.get("relevance_layers")
    if layers is not None and signal.get("relevance_rows"):
        mean = layers.double().mean(0).cpu()
        out["relevance_layers"] = [
            {"layer": name, "kind": kind, "in": _sig(a), "out": _sig(b), "lost": _sig(a - b)}
            for (name, kind), (a, b) in zip(signal["relevance_rows"][0], mean.tolist())]
    return out


def _sig(v) -> float:
    return float(f"{float(v):.7g}")


def relevance_note(params: dict, i: int | None = None, detail: bool = True) -> str | None:
    """One line on an LRP result's conservation (all images, or image i): the share of the target
    score that reaches the input and (`detail`), where it falls short, the layer that took the most
    (from the table's mean over the images)."""
    shares = params.get("relevance_share")
    if not shares:
        return None
    vals = shares if i is None else shares[i:i + 1]
    pct = ", ".join(f"{100 * v:.3g} %" for v in vals)
    text = f"relevance reaching the input: {pct} of the target score"
    low = min(vals) < params.get("relevance_min_share", 0.5)
    if not detail:
        return text + (f" (below {100 * params.get('relevance_min_share', 0.5):.0f} %)" if low else "")
    rows = params.get("relevance_layers") or []
    if low and rows:
        worst = max(rows, key=lambda r: r["lost"])
        text += (f" (below {100 * params.get('relevance_min_share', 0.5):.0f} %: the layers' biases and stabilizers "
                 f"took the rest; the largest loss at {readable_name(worst['layer']) if worst['layer'] else 'the model'} ({worst['kind']}), "
                 f"{100 * worst['lost']:.3g} % of the score)")
    elif low:
        text += f" (below {100 * params.get('relevance_min_share', 0.5):.0f} %)"
    return text


def _warn_leak(method: str, params: dict) -> None:
    import warnings

    from .lrp import RelevanceLeakWarning

    if min(params["relevance_share"]) < params["relevance_min_share"]:
        warnings.warn(f"{method}: {relevance_note(params)}; the map's values are not a decomposition of the score "
                      "(params['relevance_layers'] has the share entering and leaving each layer)",
                      RelevanceLeakWarning, stacklevel=3)


def _half_batch(batches: Batches) -> int:
    """The deconvnet's image-dependence check sends each image together with a gray one: half the
    batch size of the main pass, rounded down to full groups (at least one group)."""
    return max(4, (batches.size // 2) // 4 * 4)


def _run(model, m: M.Method, x, target: Target, info, batches, extra, fill=pad):
    """A method over `batches` of images. Each batch is padded to full groups (`fill`: `pad`, or
    nothing for a call with one image, or for a method that runs each image on its own, Score-CAM
    and RISE, whose padding rows would cost as much as real images) and the padding's rows dropped."""
    parts: dict[str, list] = {}
    for lo, hi in batches:
        k = hi - lo
        tb = target.with_classes(fill(target.classes[lo:hi])) if target.classes is not None else target
        out = m.compute(model, fill(x[lo:hi]), tb, info, **extra)
        for key, v in out.items():
            parts.setdefault(key, []).append(None if v is None else v[:k])
    return {key: None if any(v is None for v in vs) else torch.cat(vs) if isinstance(vs[0], torch.Tensor)
            else [a for v in vs for a in v] for key, vs in parts.items()}
