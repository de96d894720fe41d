"""Backprop methods as values: one small protocol, one registry.

A `Method` says what it is called (`name`, and `label` in figures), whether its map is signed,
whether it needs a layer of feature maps (the CAMs) or can project a unit of a layer, whether
SmoothGrad may average it, which colour-scale unit its values share (`scale_unit`: maps of one unit
can share a scale), and how to compute it: `compute(model, x, target, layer, **options)` with x a
normalized batch on the model's device and `target` a `cnnviz.engines.attribution.targets.Target`; it returns
{"input": N x 3 x H x W signal at the input | "cam": N x h x w at the layer | "heat": N x H x W,
"top1": the top-1 classes of the pass, or None}. `attribute`, the figures (names, scale groups) and
the CLI's checks read the registry (`REGISTRY`, `get`); `register` adds a method.

`signal_at_input` is the one backward pass of every gradient-like method (and of the top-k patches'
projections): the input's gradient under a rule (a name, a `cnnviz.engines.attribution.rules.Rule`, or rules per layer
{prefix: rule}), from the seed of `targets.seed`. `SmoothGrad(method)` wraps any method whose
output is per image: the mean over noisy copies of the input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ParameterError
from ...layers import StopForward, record
from .rules import BackwardRule, Gradient, as_rule
from .targets import Target, seed


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    compute: Callable
    scale_unit: str
    map_label: str = "attribution"  # "{of}" becomes "unit" or "score"
    signed: bool = False
    needs_layer: bool = False  # a layer of C x h x w feature maps (CAMs)
    units: bool = False  # can project a unit of a layer instead of a class
    smoothable: bool = False
    rgb: bool = False  # the figure also draws the signal as RGB
    rule: str = "gradient"  # recorded in the result's params
    one_pass: bool = False  # its own pass gives the top-1 classes (no pass before it)
    prepare: Callable | None = None  # (model, example, layer) -> (model to run, params to record)
    options: tuple = field(default=())  # option names compute takes beyond the common ones

    def to_map(self, signal: torch.Tensor) -> torch.Tensor:
        """The map of an input signal: the channel sum when signed, else max over RGB of |signal|."""
        return signal.sum(1) if self.signed else signal.abs().amax(1)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def canonical(name: str) -> str:
    """A method's name as the registry spells it, given with either separator ("lrp_epsilon" and
    "guided-gradcam" are "lrp-epsilon" and "guided_gradcam"), any case; unknown names as they are."""
    if not isinstance(name, str):
        return name
    key = name.strip().lower().replace("_", "-")
    return next((n for n in REGISTRY if n.replace("_", "-") == key), name)


def get(name: str) -> Method:
    name = canonical(name)
    if name not in REGISTRY:
        raise ParameterError(f"unknown method {name!r}; one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names(**flags) -> tuple[str, ...]:
    """The registered methods, in order, with every given flag equal (e.g. needs_layer=True)."""
    return tuple(n for n, m in REGISTRY.items() if all(getattr(m, k) == v for k, v in flags.items()))


# --------------------------------------------------------------------------------------------------
# The backward pass

def backward_mode(rule, model=None):
    """The mode of a rule (None: the plain gradient, no mode at all)."""
    if rule is None or (not isinstance(rule, dict) and isinstance(as_rule(rule), Gradient)):
        return contextlib.nullcontext()
    return BackwardRule(rule, model=model if isinstance(rule, dict) else None)


def signal_at_input(model, x: torch.Tensor, target: Target, rule=None, layer=None, inspect=None):
    """(signal N x 3 x H x W at the input, top-1 classes or None for a unit target): the gradient of
    `target` under `rule`. A class target with `classes=None` is each image's top-1; a unit target
    needs `layer` (a LayerInfo), where the forward pass stops. inspect: called with (the output
    the signal starts from, the input leaf) before the backward pass, e.g. to read the graph."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), backward_mode(rule, model):
        if not target.is_class:
            with record(model, [layer], stop=True) as store:
                with contextlib.suppress(StopForward):
                    model(x)
            act = store[layer.address]
            if inspect is not None:
                inspect(act, x)
            (g,) = torch.autograd.grad(act, x, grad_outputs=seed(act, target))
            return g.detach(), None
        out = model(x)
        top1 = out.detach().argmax(1)
        if target.classes is None:
            target = target.with_classes(top1)
        if inspect is not None:
            inspect(out, x)
        (g,) = torch.autograd.grad(out, x, grad_outputs=seed(out, target))
    return g.detach(), top1


# --------------------------------------------------------------------------------------------------
# The methods' computations

def _backprop(rule):
    def compute(model, x, target, layer=None, rules=None, inspect=None):
        g, top1 = signal_at_input(model, x, target, rules if rules is not None else rule, layer, inspect)
        return {"input": g, "top1": top1}
    return compute


def grad_cam(model, x, target, layer):
    from .cams import activations_and_gradients  # the same forward and backward as the other CAMs

    act, g, top1 = activations_and_gradients(model, x, target.classes, layer)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return {"cam": F.relu((weights * act).sum(1)), "top1": top1}


def _guided_grad_cam(model, x, target, layer):
    out = grad_cam(model, x, target, layer)
    out["guided"] = signal_at_input(model, x, target.with_classes(target.classes), "guided")[0]
    return out


def _cam(name):
    def compute(model, x, target, layer, **options):
        from . import cams

        cam, top1 = getattr(cams, name)(model, x, target.classes, layer, **options)
        return {"cam": cam, "top1": top1}
    return compute


def _rise(model, x, target, layer=None, **options):
    from .cams import rise

    heat, top1 = rise(model, x, target.classes, **options)
    return {"heat": heat, "top1": top1}


def _ig(model, x, target, layer=None, *, baseline, steps, smooth, noise, gen, internal):
    from .ig import _integrated_gradients

    return {"input": _integrated_gradients(model, x, target.classes, baseline, steps, smooth, noise, gen, internal),
            "top1": None}


def _lrp(name):
    def compute(model, x, target, layer=None, rules=None):
        from .lrp import Ledger, lrp_rule, share_table

        rule = rules if rules is not None else lrp_rule(name)
        if not target.is_class:
            g, top1 = signal_at_input(model, x, target, rule, layer)
            return {"input": g, "top1": top1}
        t = Target.of_class(target.classes, value="score")
        with Ledger(model) as led:  # the relevance entering and leaving each layer, as a share of the score
            g, top1 = signal_at_input(model, x, t, rule, layer)
        score, rows, shares = share_table(led, target.classes if target.classes is not None else top1)
        return {"input": g, "top1": top1, "score": score, "relevance_rows": [rows] * len(x),
                "relevance_layers": shares}
    return compute


def _lrp_prepare(model, example, layer=None):
    from .lrp import prepare

    return prepare(model, example, layer)


_GRADIENT = "gradient"
for _m in (
    Method("saliency", "Saliency", _backprop("gradient"), _GRADIENT, "max over RGB |∂{of}/∂x|", units=True,
           smoothable=True, one_pass=True, options=("rules",)),
    Method("guided", "Guided backprop", _backprop("guided"), _GRADIENT, "max over RGB |signal|", units=True,
           smoothable=True, rgb=True, rule="guided", one_pass=True, options=("rules",)),
    Method("deconv", "Deconvnet", _backprop("deconv"), "deconvnet projection", "max over RGB |signal|", units=True,
           smoothable=True, rgb=True, rule="deconv", one_pass=True, options=("rules",)),
    Method("gradcam", "Grad-CAM", grad_cam, "Grad-CAM", "Grad-CAM (upsampled)", needs_layer=True, one_pass=True),
    Method("guided_gradcam", "Guided Grad-CAM", _guided_grad_cam, "guided Grad-CAM", "max over RGB |guided × CAM|",
           needs_layer=True, rgb=True),
    Method("ig", "Integrated Gradients", _ig, "input × gradient", "attribution (sum over RGB)", signed=True,
           smoothable=True, options=("baseline", "steps", "smooth", "noise", "gen", "internal")),
    Method("gradcampp", "Grad-CAM++", _cam("grad_cam_pp"), "Grad-CAM++", "Grad-CAM++ (upsampled)", needs_layer=True,
           one_pass=True),
    Method("layercam", "LayerCAM", _cam("layer_cam"), "LayerCAM", "LayerCAM (upsampled)", needs_layer=True,
           one_pass=True),
    Method("scorecam", "Score-CAM", _cam("score_cam"), "Score-CAM", "Score-CAM (upsampled)", needs_layer=True,
           options=("max_channels", "bar")),
    Method("rise", "RISE", _rise, "RISE probability", "RISE: E[P(class) | pixel kept]", options=("masks", "bar")),
):
    register(_m)
_LRP_LABELS = {"lrp-epsilon": "LRP-ε", "lrp-zplus": "LRP-z⁺", "lrp-alphabeta": "LRP-α2β1",
               "lrp-alpha1beta0": "LRP-α1β0"}
for _name, _label in _LRP_LABELS.items():
    register(Method(_name, _label, _lrp(_name), "relevance", "relevance (sum over RGB)", signed=True, smoothable=True,
                    rule=_name, one_pass=True, prepare=_lrp_prepare, options=("rules",)))


# --------------------------------------------------------------------------------------------------
# SmoothGrad over any method

SMOOTH_MODES = ("mean", "mean-abs")


@dataclass(frozen=True)
class SmoothGrad:
    """SmoothGrad (Smilkov et al. 2017) over `base`: the mean of its output over `samples` noisy
    copies of each image (noise std `noise` times the image's range), signed ("mean", the paper's
    Eq. 3) or of magnitudes ("mean-abs"). `compute` takes the copies in `batches` (item k is copy
    k % samples of image k // samples); each image's noise is drawn from `gen` when its first copy
    is needed, image after image, so the maps do not depend on the batching."""

    base: Method
    samples: int = 25
    noise: float = 0.15
    mode: str = "mean"

    def __post_init__(self):
        if self.mode not in SMOOTH_MODES:
            raise ParameterError(f"unknown SmoothGrad mode {self.mode!r}; one of {', '.join(SMOOTH_MODES)}")

    @property
    def name(self) -> str:
        return self.base.name

    def compute(self, model, x, target, layer=None, *, gen=None, batches=None, **options):
        from ...batching import pad as pad_rows

        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        n, smooth = len(x), self.samples
        batches = batches if batches is not None else [(0, n * smooth)]
        acc = None
        key = None
        noisy: dict[int, torch.Tensor] = {}
        done: dict[int, list] = {}
        drawn = 0
        for lo, hi in batches:
            while drawn < n and drawn * smooth < hi:
                xi = x[drawn:drawn + 1]
                sigma = self.noise * float(xi.max() - xi.min())
                noisy[drawn] = xi + sigma * torch.randn((smooth, *xi.shape[1:]), generator=gen).to(x.device)
                drawn += 1
            rows, tgts, spans = [], [], []
            for i in range(lo // smooth, (hi - 1) // smooth + 1):
                a, b = max(lo, i * smooth) - i * smooth, min(hi, (i + 1) * smooth) - i * smooth
                rows.append(noisy[i][a:b])
                if target.is_class:
                    tgts.append(target.classes[i:i + 1].expand(b - a))
                spans.append((i, b - a))
            t = target.with_classes(pad_rows(torch.cat(tgts))) if target.is_class else target
            out = self.base.compute(model, pad_rows(torch.cat(rows)), t, layer, **options)
            key = key or next(k for k in ("input", "cam", "heat") if k in out)
            g = out[key][:hi - lo]
            if acc is None:
                acc = torch.zeros((n, *g.shape[1:]), dtype=g.dtype, device=g.device)
            at = 0
            for i, m in spans:
                done.setdefault(i, []).append(g[at:at + m])
                at += m
                if sum(len(p) for p in done[i]) == smooth:
                    gi = torch.cat(done.pop(i))
                    acc[i] = (gi if self.mode == "mean" else gi.abs()).mean(0)
                    del noisy[i]
        return {key: acc, "top1": None}


def smooth(method: str | Method, samples: int = 25, noise: float = 0.15, mode: str = "mean") -> SmoothGrad:
    """SmoothGrad over a method of the registry (or any Method)."""
    return SmoothGrad(get(method) if isinstance(method, str) else method, samples, noise, mode)


__all__ = ["Method", "REGISTRY", "register", "get", "names", "signal_at_input", "SmoothGrad", "smooth"]
