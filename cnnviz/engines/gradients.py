"""Backprop engines: which pixels does an output depend on?

- saliency (Simonyan et al. 2014): the gradient of the class score (the logit) with respect to the
  input; the map is the maximum of |gradient| over colour channels;
- guided backprop (Springenberg et al. 2015) and the Zeiler-Fergus deconvnet (2014): the same
  backward pass with the rectifier rules of `cnnviz.rules`;
- SmoothGrad (Smilkov et al. 2017) over any of these: the mean over noisy copies of the input;
- Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM;
- Integrated Gradients (Sundararajan et al. 2017), through captum.

Targets: a class (index or name; default each image's top-1), or a unit of a layer: a whole
feature map, one position of it, or the strongest activation of the map. For a unit, every other
activation of the layer is set to zero before projecting down, as Zeiler & Fergus do: the signal
sent back is the unit's own activation at its position(s), zero elsewhere.
Several images go through one forward and one backward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..geometry import CropGeometry, params_of, stack_thumbnails
from ..layers import LayerInfo, StopForward, default_feature_layer, record, resolve_layer
from ..models import LoadedModel
from ..results import GradientResult, provenance
from ..rules import BackwardRule
from .common import model_on_device, resolve_device

METHODS = ("saliency", "guided", "deconv", "gradcam", "guided_gradcam", "ig")
_RULE = {"saliency": "gradient", "guided": "guided", "deconv": "deconv"}
SIGNED = {"ig"}


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
    x = x.detach()
    with torch.enable_grad(), record(model, [layer]) as store:
        out = model(x.requires_grad_(False))
        act = store[layer.address]
        top1 = out.detach().argmax(1)
        targets = top1 if targets is None else targets
        seed = torch.zeros_like(out)
        seed[torch.arange(len(targets)), targets] = 1.0
        (g,) = torch.autograd.grad(out, act, grad_outputs=seed)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * act.detach()).sum(1)), top1


def _to_map(method: str, signal: torch.Tensor) -> torch.Tensor:
    if method in SIGNED:
        return signal.sum(1)
    return signal.abs().amax(1)


def attribute(lm: LoadedModel, images, method: str = "saliency", **options) -> GradientResult:
    """Attribution maps of `lm` for `images` (a path, a PIL image, or a list of them).

    method: saliency, guided, deconv, gradcam, guided_gradcam or ig.
    target: class index or name for every image (default: each image's top-1), or with `unit`
      the unit of `layer` to project (saliency, guided, deconv only).
    smooth: SmoothGrad with this many noisy copies (noise std = `noise` x the input's range).
    ig_steps, baseline: Integrated Gradients' steps and baseline image ("black" or "mean").
    Works also when called inside the caller's `torch.no_grad()` or `torch.inference_mode()`.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _attribute(lm, images, method, **options)


def _attribute(lm: LoadedModel, images, method: str = "saliency", *, target=None, layer: str | None = None,
              unit: str | int | Unit | None = None, smooth: int = 0, noise: float = 0.15, seed: int = 0,
              ig_steps: int = 50, baseline: str = "black", batch_size: int | None = None,
              device: str = "auto") -> GradientResult:
    if method not in METHODS:
        raise ParameterError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if unit is not None and method not in _RULE:
        raise ParameterError(f"--unit works with saliency, guided and deconv, not {method}; "
                             "give a class --target instead")
    if smooth < 0 or (smooth and method not in ("saliency", "guided", "deconv", "ig")):
        raise ParameterError(f"smooth={smooth!r}: SmoothGrad takes a positive count and works with "
                             "saliency, guided, deconv and ig")
    if not 0 < noise < 1:
        raise ParameterError(f"noise {noise!r} must be between 0 and 1 (a fraction of the input's range)")
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
    info = None
    if unit_obj is not None or method in ("gradcam", "guided_gradcam"):
        info = resolve_layer(lm.model, layer, x[:1]) if layer else (
            default_feature_layer(lm.model, x[:1]) if method != "saliency" or unit_obj is None else None)
        if info is None:
            raise ParameterError("a --unit needs a --layer")
        if method in ("gradcam", "guided_gradcam") and len(info.shape) != 3:
            raise ParameterError(f"Grad-CAM needs a layer with CxHxW feature maps; {info.address!r} outputs "
                                 f"{'x'.join(map(str, info.shape))}")
        if unit_obj is not None and not 0 <= unit_obj.channel < info.shape[0]:
            raise ParameterError(f"unit channel {unit_obj.channel} is out of range: layer {info.address!r} has "
                                 f"channels 0..{info.shape[0] - 1}")
        if unit_obj is not None and isinstance(unit_obj.where, tuple):
            y, xx = unit_obj.where
            if len(info.shape) != 3 or not (0 <= y < info.shape[1] and 0 <= xx < info.shape[2]):
                raise ParameterError(f"unit position ({y}, {xx}) is outside layer {info.address!r} of shape "
                                     f"{'x'.join(map(str, info.shape))}")
    gen = torch.Generator().manual_seed(seed)
    fixed = None if target is None or unit_obj is not None else lm.class_index(target)
    with model_on_device(lm.model, dev) as model:
        x = x.to(dev)
        # the gradient pass of saliency, guided, deconv and Grad-CAM also gives the top-1 classes;
        # the other methods need them before they start
        one_pass = not smooth and method in ("saliency", "guided", "deconv", "gradcam") and unit_obj is None
        top1 = None
        if not one_pass:
            with torch.inference_mode():
                top1 = model(x).argmax(1).clone()
        if unit_obj is None:
            targets = torch.full((n,), fixed, dtype=torch.long, device=dev) if fixed is not None else top1
        else:
            targets = None
        signal = _run(model, x, method, targets, info, unit_obj, smooth, noise, gen, ig_steps,
                      lm.preprocessing.fill_value(baseline).to(dev), batch_size or n)
        if top1 is None:
            top1 = signal["top1"]
            if targets is None:
                targets = top1
    if method in ("gradcam", "guided_gradcam"):
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
              "smooth": smooth, "noise": noise if smooth else None, "seed": seed,
              "ig_steps": ig_steps if method == "ig" else None, "baseline": baseline if method == "ig" else None,
              "signed": method in SIGNED, "geometry": params_of(geos)}
    return GradientResult(
        params=params, provenance=provenance(lm.identity(), str(dev)), image=pixels, original=stack_thumbnails(geos),
        attribution=attr.float().cpu().numpy(), map=amap.float().cpu().numpy(),
        targets=(targets.cpu().numpy() if targets is not None else np.full(n, -1)).astype(np.int32),
        target_names=np.array(names, dtype=str),
        top1=top1.cpu().numpy().astype(np.int32))


def _run(model, x, method, targets, info, unit, smooth, noise, gen, ig_steps, baseline, batch):
    if method in ("gradcam", "guided_gradcam"):
        parts = [_grad_cam(model, x[i:i + batch], None if targets is None else targets[i:i + batch], info)
                 for i in range(0, len(x), batch)]
        out = {"cam": torch.cat([c for c, _ in parts]), "top1": torch.cat([t for _, t in parts])}
        if method == "guided_gradcam":
            out["guided"] = torch.cat([input_signal(model, x[i:i + batch], "guided", targets[i:i + batch])
                                       for i in range(0, len(x), batch)])
        return out
    if method == "ig":
        return {"input": _integrated_gradients(model, x, targets, baseline, ig_steps, smooth, noise, gen)}
    rule = _RULE[method]
    if not smooth:
        g, top1 = _input_signal(model, x, rule, targets, info, unit)
        return {"input": g, "top1": top1}
    acc = torch.zeros_like(x)
    for i in range(len(x)):  # each image's noisy copies go through together
        xi = x[i:i + 1]
        sigma = noise * float(xi.max() - xi.min())
        noisy = xi + sigma * torch.randn((smooth, *xi.shape[1:]), generator=gen).to(x.device)
        t = targets[i:i + 1].expand(smooth) if targets is not None else None
        acc[i] = input_signal(model, noisy, rule, t, info, unit).mean(0)
    return {"input": acc}


def _integrated_gradients(model, x, targets, baseline, steps, smooth, noise, gen):
    from captum.attr import IntegratedGradients, NoiseTunnel

    ig = IntegratedGradients(model)
    base = baseline.expand_as(x[:1]).expand_as(x).contiguous()
    with torch.enable_grad():
        if smooth:  # captum draws its noise from the global generator: seed a forked copy of it
            devs = [x.device.index or 0] if x.device.type == "cuda" else []
            out = []
            with torch.random.fork_rng(devices=devs):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                for i in range(len(x)):  # noise scaled to each image's own range, as for the other methods
                    xi = x[i:i + 1]
                    sd = noise * float(xi.max() - xi.min())
                    out.append(NoiseTunnel(ig).attribute(xi, nt_type="smoothgrad", nt_samples=smooth, stdevs=sd,
                                                         baselines=base[i:i + 1], target=targets[i:i + 1],
                                                         n_steps=steps, internal_batch_size=steps).detach())
            return torch.cat(out)
        return ig.attribute(x, baselines=base, target=targets, n_steps=steps, internal_batch_size=steps).detach()
