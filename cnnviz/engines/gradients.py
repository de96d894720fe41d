"""Backprop engines: which pixels does an output depend on?

- saliency (Simonyan et al. 2014): the gradient of the class score (the logit) with respect to the
  input; the map is the maximum of |gradient| over colour channels;
- guided backprop (Springenberg et al. 2015) and the Zeiler-Fergus deconvnet (2014): the same
  backward pass with the rectifier rules of `cnnviz.rules`;
- SmoothGrad (Smilkov et al. 2017) over any of these: the mean over noisy copies of the input, in
  one of two ways (`smooth_mode`): "mean" (the default) averages the signed signals and takes |.|
  for the map afterwards, which is the paper's definition (Eq. 3 averages the sensitivity maps
  M_c = dS_c/dx, the gradient itself; the absolute value is their visualization step);
  "mean-abs" averages |signal| per colour channel, as captum's NoiseTunnel over Saliency (abs=True)
  does. Averaging magnitudes cannot cancel, so "mean-abs" is more stable from seed to seed and
  brighter on the object's texture; "mean" keeps only what has a consistent sign under the noise
  (`benchmarks/gradients.py --stability` measures both);
- Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM;
- Integrated Gradients (Sundararajan et al. 2017), through captum.

Targets: a class (index or name; default each image's top-1), or a unit of a layer: a whole
feature map, one position of it, or the strongest activation of the map. For a unit, every other
activation of the layer is set to zero before projecting down, as Zeiler & Fergus do: the signal
sent back is the unit's own activation at its position(s), zero elsewhere.
Images (for SmoothGrad: their noisy copies) go through the model in batches of `batch_size`,
chosen by measuring when not given (`cnnviz.batching.Batches`), bounded by the memory a forward +
backward pass needs per image (`backprop_item_bytes`). Every batch is padded to full groups
(`batching.pad`), so on a CPU the maps do not depend on the batch size, chosen or given.
Integrated Gradients runs one image at a time, its scaled copies in internal batches of at most
IG_MEMORY_BUDGET bytes (`ig_internal_batch` overrides; the maps agree across internal batches to
float32 rounding, as captum sums the batches' partial attributions).

The deconvnet's backward pass ignores the forward pass at every rectifier: in a network without max
pooling (EfficientNet-Lite, MobileNets) nothing of the image reaches it, and its class map is the
same for every image. Every deconvnet result is therefore compared with the map of a uniform gray
image sent back from the same signal; when they agree (Pearson r >= 0.99) the result says so in
params["uninformative"] and params["uninformative_reason"], and the figure and the CLI repeat it.

A frozen model (`requires_grad_(False)` on every parameter) gives the same maps: the graph is
recorded from the input, which always requires grad here, never from the parameters, and no
parameter's `.grad` is written.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..batching import Batches, check_batch_size, memory_limit, model_work, pad
from ..errors import ParameterError
from ..geometry import CropGeometry, params_of, stack_thumbnails
from ..layers import (LayerInfo, StopForward, default_feature_layer, flattened_after, record, resolve_layer,
                      trace_layers)
from ..models import LoadedModel
from ..results import GradientResult, provenance
from ..rules import BackwardRule
from .common import model_on_device, resolve_device
from .dependence import UNINFORMATIVE_R, image_dependence, _uninformative  # noqa: F401
from .ig import _baseline, _integrated_gradients, check_baseline

METHODS = ("saliency", "guided", "deconv", "gradcam", "guided_gradcam", "ig", "gradcampp", "layercam", "scorecam",
           "rise")
_RULE = {"saliency": "gradient", "guided": "guided", "deconv": "deconv"}
SIGNED = {"ig"}
CAM = ("gradcam", "guided_gradcam", "gradcampp", "layercam", "scorecam")  # a layer's maps, weighted
# the class activation maps of cnnviz.engines.cams (Grad-CAM++, LayerCAM, Score-CAM), and RISE (no layer)
_CAMS = {"gradcampp": "grad_cam_pp", "layercam": "layer_cam", "scorecam": "score_cam"}
SMOOTH_MODES = ("mean", "mean-abs")
DEFAULT_NOISE = 0.15
DEFAULT_IG_STEPS = 50
IG_MEMORY_BUDGET = 1 << 30  # bytes the scaled copies of one IG forward + backward pass may take


@dataclass(frozen=True)
class Unit:
    """A unit of a layer: channel `channel`, and where in its map: all of it (`where="map"`), one
    position (`where=(y, x)`) or its strongest activation (`where="max"`)."""

    channel: int
    where: str | tuple[int, int] = "max"

    @classmethod
    def parse(cls, text: str | int | "Unit") -> "Unit":
        """`12` or `12:max` (strongest activation of channel 12), `12:map` (whole map), `12:3,4`."""
        if isinstance(text, Unit):
            return text
        if isinstance(text, (int, np.integer)):
            return cls(int(text))
        ch, _, where = str(text).strip().partition(":")
        try:
            channel = int(ch)
            if where in ("", "max"):
                return cls(channel, "max")
            if where == "map":
                return cls(channel, "map")
            y, x = (int(v) for v in where.split(","))
            return cls(channel, (y, x))
        except ValueError:
            raise ParameterError(f"bad unit {text!r}; use CHANNEL, CHANNEL:max, CHANNEL:map or CHANNEL:Y,X") from None

    def describe(self) -> str:
        where = self.where if isinstance(self.where, str) else f"({self.where[0]}, {self.where[1]})"
        return f"channel {self.channel} {where}"


def _unit_seed(act: torch.Tensor, unit: Unit) -> torch.Tensor:
    """The signal sent down from a layer for a unit: its activation(s), zero everywhere else."""
    c = unit.channel
    seed = torch.zeros_like(act)
    a = act.detach()
    if act.ndim == 2:  # a fully connected layer: the unit is one output
        seed[:, c] = a[:, c]
        return seed
    if unit.where == "map":
        seed[:, c] = a[:, c]
    elif unit.where == "max":
        flat = a[:, c].flatten(1)
        idx = flat.argmax(1)
        rows = torch.arange(len(idx), device=act.device)
        w = a.shape[-1]
        seed[rows, c, idx // w, idx % w] = flat[rows, idx]
    else:
        y, x = unit.where
        seed[:, c, y, x] = a[:, c, y, x]
    return seed


def input_signal(model, x: torch.Tensor, rule: str, targets: torch.Tensor | None = None,
                 layer: LayerInfo | None = None, unit: Unit | None = None) -> torch.Tensor:
    """The backward signal at the input (N x 3 x H x W) under `rule`, from the class scores
    `targets` (one per image) or from `unit` of `layer`."""
    return _input_signal(model, x, rule, targets, layer, unit)[0]


def _input_signal(model, x, rule, targets, layer, unit):
    """input_signal, plus the top-1 classes of the same forward pass (None for a unit target);
    `targets=None` with a class target means each image's top-1."""
    x = x.detach().clone().requires_grad_(True)
    mode = BackwardRule(rule) if rule != "gradient" else contextlib.nullcontext()
    with torch.enable_grad(), mode:
        if unit is not None:
            with record(model, [layer], stop=True) as store:
                with contextlib.suppress(StopForward):
                    model(x)
            act = store[layer.address]
            (g,) = torch.autograd.grad(act, x, grad_outputs=_unit_seed(act, unit))
            return g.detach(), None
        out = model(x)
        top1 = out.detach().argmax(1)
        targets = top1 if targets is None else targets
        seed = torch.zeros_like(out)
        seed[torch.arange(len(targets)), targets] = 1.0
        (g,) = torch.autograd.grad(out, x, grad_outputs=seed)
    return g.detach(), top1


def grad_cam(model, x: torch.Tensor, targets: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """Grad-CAM maps (N x h x w at the layer's resolution): ReLU of the feature maps weighted by
    the spatial mean of the class score's gradient."""
    return _grad_cam(model, x, targets, layer)[0]


def _grad_cam(model, x, targets, layer):
    from .cams import activations_and_gradients  # the same forward and backward as the other CAMs

    act, g, top1 = activations_and_gradients(model, x, targets, layer)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * act).sum(1)), top1


def check_options(method: str, *, target=None, layer: str | None = None, unit=None, smooth: int = 0,
                  noise: float | None = None, seed: int | None = None, smooth_mode: str | None = None,
                  ig_steps: int | None = None, baseline: str | None = None, batch_size: int | None = None,
                  ig_internal_batch: int | None = None) -> None:
    """Refuse, with one line naming the option and the fix, every option `method` would not use
    and every impossible value; needs no model (the CLI calls it before loading one). Layer names
    and channels are checked against the model by `attribute`, before anything is computed."""
    if method not in METHODS:
        raise ParameterError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if unit is not None and method not in _RULE:
        raise ParameterError(f"--unit works with saliency, guided and deconv, not {method}; "
                             "give a class --target instead")
    if unit is not None and target is not None:
        raise ParameterError(f"--target {target!r} and --unit {unit!r} exclude each other: a unit is projected "
                             "instead of a class; drop one")
    if layer is not None and unit is None and method not in CAM:
        raise ParameterError(f"--layer {layer!r} is used by {method} only with --unit (the unit's layer); "
                             "add --unit C or drop --layer")
    if not isinstance(smooth, (int, np.integer)) or isinstance(smooth, bool) or smooth < 0:
        raise ParameterError(f"smooth={smooth!r}: SmoothGrad takes a whole number of noisy copies (0: off)")
    if smooth and method not in ("saliency", "guided", "deconv", "ig"):
        raise ParameterError(f"--samples {smooth}: SmoothGrad works with saliency, guided, deconv and ig, "
                             f"not {method}; drop --samples")
    for name, value in (("--noise", noise), ("--seed", seed), ("--smooth", smooth_mode)):
        if value is not None and not smooth:
            raise ParameterError(f"{name} {value!r} is used only by SmoothGrad; add --samples N or drop {name}")
    if noise is not None and not 0 < noise < 1:
        raise ParameterError(f"noise {noise!r} must be between 0 and 1 (a fraction of the input's range)")
    if smooth_mode is not None and smooth_mode not in SMOOTH_MODES:
        raise ParameterError(f"unknown SmoothGrad mode {smooth_mode!r}; one of {', '.join(SMOOTH_MODES)}")
    if smooth_mode == "mean-abs" and method in SIGNED:
        raise ParameterError(f"--smooth mean-abs would drop the sign of {method}'s map; use --smooth mean")
    for name, value in (("ig_steps", ig_steps), ("baseline", baseline), ("ig_internal_batch", ig_internal_batch)):
        if value is not None and method != "ig":
            raise ParameterError(f"{name}={value!r} is used only by ig, not {method}; drop it")
    if ig_steps is not None and (isinstance(ig_steps, bool) or not isinstance(ig_steps, (int, np.integer))
                                 or ig_steps < 1):
        raise ParameterError(f"ig_steps {ig_steps!r} must be a positive whole number")
    check_baseline(baseline)
    check_batch_size(ig_internal_batch, "the internal batch (scaled copies per pass)")
    if batch_size is not None and method == "ig":
        raise ParameterError(f"batch_size={batch_size!r}: ig runs one image at a time and batches its scaled copies; "
                             "use ig_internal_batch (--internal-batch) instead")
    check_batch_size(batch_size)


def backprop_item_bytes(model, example: torch.Tensor) -> int:
    """Memory one image needs in a forward + backward pass, estimated from the model's layer
    outputs (one forward pass of `example`, cached): each leaf module's output kept for the backward
    pass plus its gradient, in float32. Measured on EfficientNet-Lite0 (CPU, max RSS) the real
    cost is about 0.6 of this: a safe bound."""
    infos = trace_layers(model, example[:1])  # on the model's device, before the engine moves it
    leaves = {name for name, m in model.named_modules() if next(m.children(), None) is None}
    elems = sum(math.prod(i.shape) for i in infos if i.shape and i.name in leaves)
    return max(1, 8 * (elems + example[:1].numel()))


def attribute(lm: LoadedModel, images, method: str = "saliency", **options) -> GradientResult:
    """Attribution maps of `lm` for `images` (a path, a PIL image, or a list of them).

    method: saliency, guided, deconv, gradcam, guided_gradcam or ig.
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
    Works also when called inside the caller's `torch.no_grad()` or `torch.inference_mode()`, and on
    a frozen model (no parameter requiring grad), which is left frozen with no `.grad` written.
    A deconvnet result carries params["uninformative"] (see the module's docstring).
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _attribute(lm, images, method, **options)


def _attribute(lm: LoadedModel, images, method: str = "saliency", *, target=None, layer: str | None = None,
               unit: str | int | Unit | None = None, smooth: int = 0, noise: float | None = None,
               seed: int | None = None, smooth_mode: str | None = None, ig_steps: int | None = None,
               baseline: str | None = None, batch_size: int | None = None, ig_internal_batch: int | None = None,
               device: str = "auto") -> GradientResult:
    check_options(method, target=target, layer=layer, unit=unit, smooth=smooth, noise=noise, seed=seed,
                  smooth_mode=smooth_mode, ig_steps=ig_steps, baseline=baseline, batch_size=batch_size,
                  ig_internal_batch=ig_internal_batch)
    noise = DEFAULT_NOISE if noise is None else noise
    seed = 0 if seed is None else seed
    smooth_mode = smooth_mode or "mean"
    ig_steps = DEFAULT_IG_STEPS if ig_steps is None else ig_steps
    baseline = baseline or "black"
    if isinstance(images, torch.Tensor):  # an already normalized batch N x 3 x H x W
        if images.ndim != 4 or images.shape[1] != 3:
            raise ParameterError(f"a tensor of images must be N x 3 x H x W, got {tuple(images.shape)}")
        x = images.detach().float().cpu()
        pixels = lm.preprocessing.denormalize(x)
        geos = [CropGeometry.identity(*x.shape[2:], source="tensor")] * len(x)
    else:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ParameterError("no images given")
        prepared = [lm.prepare(im, geometry=True) for im in images]
        pixels = np.stack([p for p, _, _ in prepared])
        x = torch.cat([t for _, t, _ in prepared])
        geos = [g for _, _, g in prepared]
    n = len(x)
    dev = resolve_device(device)
    unit_obj = Unit.parse(unit) if unit is not None else None
    info = layer_note = None
    if unit_obj is not None or method in CAM:
        info = resolve_layer(lm.model, layer, x[:1]) if layer else (
            default_feature_layer(lm.model, x[:1]) if method in CAM else None)
        if info is None:
            raise ParameterError("a --unit needs a --layer")
        if method in CAM and len(info.shape) != 3:
            raise ParameterError(f"Grad-CAM needs a layer with CxHxW feature maps; {info.address!r} outputs "
                                 f"{'x'.join(map(str, info.shape))}")
        if method in CAM and layer:  # named by the user: drawn, with a warning where it cannot be a spatial map
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
    gen = torch.Generator().manual_seed(seed)
    fixed = None if target is None else lm.class_index(target)
    dependence = None
    item_bytes = backprop_item_bytes(lm.model, x[:1])
    if method == "ig":
        internal, internal_auto = ig_internal_batch, ig_internal_batch is None
        if internal is None:
            internal = memory_limit(dev, item_bytes, max(1, min(ig_steps, IG_MEMORY_BUDGET // item_bytes)))
        batches = None
    else:
        # on CUDA, Batches measures the memory of the first batch itself
        work = model_work(lm.model, x, engine="gradients", method=method, smooth=bool(smooth),
                          unit=unit_obj is not None, layer=info.address if info else None)
        batches = Batches(n * (smooth or 1), batch_size, device=dev,
                          item_bytes=item_bytes if dev.type != "cuda" else None, work=work)
    with model_on_device(lm.model, dev) as model:
        x = x.to(dev)
        # the gradient pass of saliency, guided, deconv and Grad-CAM also gives the top-1 classes;
        # the other methods need them before they start
        one_pass = not smooth and method in ("saliency", "guided", "deconv", "gradcam") and unit_obj is None
        top1 = None
        if not one_pass:
            with torch.inference_mode():
                top1 = torch.cat([model(pad(x[i:i + 32])).argmax(1)[:len(x[i:i + 32])].clone()
                                  for i in range(0, n, 32)])
        if unit_obj is None:
            targets = torch.full((n,), fixed, dtype=torch.long, device=dev) if fixed is not None else top1
        else:
            targets = None
        if method == "ig":
            signal = {"input": _integrated_gradients(model, x, targets, _baseline(lm, x, baseline), ig_steps, smooth,
                                                     noise, gen, internal)}
        else:
            signal = _run(model, x, method, targets, info, unit_obj, smooth, noise, gen, batches, smooth_mode)
        if top1 is None:
            top1 = signal["top1"]
            if targets is None and unit_obj is None:
                targets = top1
        if method == "deconv":
            dependence = image_dependence(model, x, targets, info, unit_obj,
                                          lm.preprocessing.fill_value("mean").to(dev), _half_batch(batches))
    if method == "rise":
        attr, amap = signal["heat"][:, None], signal["heat"]
    elif method in CAM:
        cam = signal["cam"]
        heat = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        if method == "guided_gradcam":
            attr = signal["guided"] * heat[:, None]
            amap = _to_map("guided", attr)
        else:
            attr, amap = heat[:, None], heat
    else:
        attr = signal["input"]
        amap = _to_map(method, attr)
    names = [lm.class_name(int(t)) for t in targets] if targets is not None else [unit_obj.describe()] * n
    params = {"method": method, "rule": _RULE.get(method, "gradient"), "layer": info.address if info else None,
              "unit": unit_obj.describe() if unit_obj else None, "target_given": target is not None,
              "smooth": smooth, "noise": noise if smooth else None, "seed": seed if smooth else None,
              "smooth_mode": smooth_mode if smooth else None,
              "ig_steps": ig_steps if method == "ig" else None, "baseline": baseline if method == "ig" else None,
              "signed": method in SIGNED, "geometry": params_of(geos)}
    if layer_note:
        params["layer_note"] = layer_note
    if method == "ig":
        params.update({"ig_internal_batch": int(internal), "ig_internal_batch_auto": bool(internal_auto),
                       "ig_item_bytes": int(item_bytes), "ig_memory_budget": IG_MEMORY_BUDGET})
    else:
        params.update(batches.record())
    if dependence is not None:
        params.update(_uninformative(lm.name, *dependence, unit=unit_obj is not None))
    return GradientResult(
        params=params, provenance=provenance(lm.identity(), str(dev)), image=pixels, original=stack_thumbnails(geos),
        attribution=attr.float().cpu().numpy(), map=amap.float().cpu().numpy(),
        targets=(targets.cpu().numpy() if targets is not None else np.full(n, -1)).astype(np.int32),
        target_names=np.array(names, dtype=str),
        top1=top1.cpu().numpy().astype(np.int32))


def _to_map(method: str, signal: torch.Tensor) -> torch.Tensor:
    if method in SIGNED:
        return signal.sum(1)
    return signal.abs().amax(1)


def _half_batch(batches: Batches) -> int:
    """The deconvnet's image-dependence check sends each image together with a gray one: half the
    batch size of the main pass, rounded down to full groups (at least one group)."""
    return max(4, (batches.size // 2) // 4 * 4)


def _run(model, x, method, targets, info, unit, smooth, noise, gen, batches, smooth_mode):
    """Every method but ig, over `batches` (of images; with SmoothGrad, of noisy copies). Each
    batch is padded to full groups and the padding's rows dropped."""
    if smooth:
        return {"input": _smooth_signal(model, x, _RULE[method], targets, info, unit, smooth, noise, gen, batches,
                                        smooth_mode)}
    parts: dict[str, list] = {}
    for lo, hi in batches:
        k = hi - lo
        xb = pad(x[lo:hi])
        tb = None if targets is None else pad(targets[lo:hi])
        if method in _CAMS or method == "rise":
            from . import cams

            if method == "rise":
                heat, top1 = cams.rise(model, xb, tb)
                out = {"heat": heat, "top1": top1}
            else:
                cam, top1 = getattr(cams, _CAMS[method])(model, xb, tb, info)
                out = {"cam": cam, "top1": top1}
        elif method in CAM:
            cam, top1 = _grad_cam(model, xb, tb, info)
            out = {"cam": cam, "top1": top1}
            if method == "guided_gradcam":
                out["guided"] = input_signal(model, xb, "guided", tb)
        else:
            g, top1 = _input_signal(model, xb, _RULE[method], tb, info, unit)
            out = {"input": g, "top1": top1}
        for key, v in out.items():
            parts.setdefault(key, []).append(None if v is None else v[:k])
    return {key: None if any(v is None for v in vs) else torch.cat(vs) for key, vs in parts.items()}


def _smooth_signal(model, x, rule, targets, info, unit, smooth, noise, gen, batches, smooth_mode):
    """SmoothGrad: item k of `batches` is copy k % smooth of image k // smooth. Each image's noise is
    drawn when its first copy is needed, image after image (the same draws in any batching), and
    its copies averaged once all have come back."""
    n = len(x)
    acc = torch.zeros_like(x)
    noisy: dict[int, torch.Tensor] = {}
    done: dict[int, list] = {}
    drawn = 0
    for lo, hi in batches:
        while drawn < n and drawn * smooth < hi:
            xi = x[drawn:drawn + 1]
            sigma = noise * float(xi.max() - xi.min())
            noisy[drawn] = xi + sigma * torch.randn((smooth, *xi.shape[1:]), generator=gen).to(x.device)
            drawn += 1
        rows, tgts, spans = [], [], []
        for i in range(lo // smooth, (hi - 1) // smooth + 1):
            a, b = max(lo, i * smooth) - i * smooth, min(hi, (i + 1) * smooth) - i * smooth
            rows.append(noisy[i][a:b])
            if targets is not None:
                tgts.append(targets[i:i + 1].expand(b - a))
            spans.append((i, b - a))
        t = pad(torch.cat(tgts)) if targets is not None else None
        g = input_signal(model, pad(torch.cat(rows)), rule, t, info, unit)[:hi - lo]
        at = 0
        for i, m in spans:
            done.setdefault(i, []).append(g[at:at + m])
            at += m
            if sum(len(p) for p in done[i]) == smooth:
                gi = torch.cat(done.pop(i))
                acc[i] = (gi if smooth_mode == "mean" else gi.abs()).mean(0)
                del noisy[i]
    return acc
