"""Backward rules for rectifying activations, applied for the duration of a `with` block.

Guided backprop (Springenberg et al. 2015) and the Zeiler-Fergus deconvnet differ from the plain
gradient only in what the backward pass does at each rectifier. cnnviz applies the rule at the
level of torch functions (a TorchFunctionMode), not module hooks, so it reaches every rectifier a
forward pass calls: `nn.ReLU` (also in place), `F.relu` / `torch.relu` / `Tensor.relu` called in a
forward, `nn.ReLU6` / `F.relu6` / `Hardtanh`, `LeakyReLU`, and modules reused several times. The
mode is popped when the block ends, also on error; nothing is left on the model.

The rules, for y = clip(x, lo, hi) with slope a below lo (a = 0 except LeakyReLU), upstream signal g:
- gradient: g * phi'(x), phi'(x) = 1 on (lo, hi), a below lo, 0 above hi;
- guided:   g * phi'(x) * [g > 0]  (the gradient rule and the deconvnet rule together);
- deconv:   the rectifier applied to the signal itself, ignoring x: max(g, 0) for ReLU, ReLU6 and
  Hardtanh with lo = 0; a*g for g < 0 with LeakyReLU. The upper clip of ReLU6 is not applied
  to the signal: the deconvnet rectifies, it does not reproduce saturation.
Smooth activations (SiLU/swish, GELU, Mish, Hardswish, ELU, SELU, CELU, Softplus, PReLU), with
phi'(x) their own derivative (taken by autograd on the forward input):
- gradient: g * phi'(x) (unchanged);
- guided:   phi'(x) * max(g, 0): the activation's own gradient, applied only to the positive part of
  the signal, which for every piecewise-linear rectifier above is exactly the guided rule;
- deconv:   max(g, 0): the signal rectified, whatever x was, as for ReLU.
Gates that scale features rather than rectify them (sigmoid, hard sigmoid, tanh: the squeeze-and-
excitation branches of EfficientNet and MobileNetV3) keep the plain gradient under every rule, by
declaration. An activation the mode knows but has no rule for (softsign, tanhshrink, log-sigmoid,
hard/soft shrink, threshold, RReLU, GLU) keeps its plain gradient and the mode warns once, naming
it: a "guided" map of such a model is not guided there.
Max pooling needs no rule: its backward already sends each value to the position of the maximum
recorded in the forward pass, which is exactly the deconvnet's unpooling with switches. The mode
counts those max-pool calls (`switches`): under the deconv rule they are the only place where the
image enters the backward pass of a network of convolutions, rectifiers, normalization and
average pooling, so a network without them gives every image the same deconvnet map.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("gradient", "guided", "deconv")


class _Rectify(torch.autograd.Function):
    # Saves boolean masks, not x, so that an in-place call may overwrite x afterwards; the deconv
    # rule ignores x and saves nothing. Few passes over memory: these run at every rectifier.
    @staticmethod
    def forward(ctx, x, lo, hi, slope, rule):
        ctx.slope, ctx.rule = slope, rule
        y = x.clamp(min=lo if lo > -math.inf else None, max=hi if hi < math.inf else None)
        if slope:
            below = x <= lo
            y = torch.where(below, lo + slope * (x - lo), y)
        if rule == "deconv":
            return y
        if hi == math.inf:
            inside = y > lo if not slope else ~below
        else:
            inside = (y > lo) & (y < hi)
        ctx.save_for_backward(inside)
        return y

    @staticmethod
    def backward(ctx, g):
        a = ctx.slope
        if ctx.rule == "deconv":
            return (g.clamp(min=0) if not a else torch.where(g > 0, g, a * g)), None, None, None, None
        (inside,) = ctx.saved_tensors
        if ctx.rule == "guided":
            g = g.clamp(min=0)
        out = g * inside if not a else torch.where(inside, g, a * g)
        return out, None, None, None, None


def _param(args, kwargs, index, name, default):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _relu(args, kwargs):
    return 0.0, math.inf, 0.0


def _hardtanh(args, kwargs):
    return float(_param(args, kwargs, 1, "min_val", -1.0)), float(_param(args, kwargs, 2, "max_val", 1.0)), 0.0


def _relu6(args, kwargs):
    return 0.0, 6.0, 0.0


def _leaky(args, kwargs):
    return 0.0, math.inf, float(_param(args, kwargs, 1, "negative_slope", 0.01))


_TABLE = {
    F.relu: _relu, F.relu_: _relu, torch.relu: _relu, torch.relu_: _relu,
    torch.Tensor.relu: _relu, torch.Tensor.relu_: _relu,
    F.relu6: _relu6, F.hardtanh: _hardtanh, F.hardtanh_: _hardtanh,
    F.leaky_relu: _leaky, F.leaky_relu_: _leaky,
}
_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_, F.hardtanh_, F.leaky_relu_}
for _name in ("relu6",):
    _f = getattr(torch._C._nn, _name, None)
    if _f is not None:
        _TABLE[_f] = _relu6


class _Smooth(torch.autograd.Function):
    """A smooth activation under the guided or deconv rule (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, y, slope, rule):
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward(slope)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.rule == "deconv":
            return g.clamp(min=0), None, None, None
        (slope,) = ctx.saved_tensors
        return slope * g.clamp(min=0), None, None, None


_SMOOTH = {f for f in (getattr(F, n, None) for n in ("silu", "gelu", "mish", "hardswish", "elu", "elu_", "selu",
                                                       "celu", "celu_", "softplus", "prelu"))
           if f is not None}
_SMOOTH |= {f for f in (getattr(torch, n, None) for n in ("selu", "selu_", "celu", "celu_", "prelu"))
            if f is not None}
_SMOOTH |= {f for f in (getattr(torch._C._nn, n, None) for n in ("silu", "gelu", "mish", "hardswish", "elu",
                                                                   "softplus", "silu_", "mish_", "hardswish_"))
            if f is not None}
_SMOOTH_IN_PLACE = {f for f in (getattr(F, "elu_", None), getattr(F, "celu_", None), getattr(torch, "selu_", None),
                                getattr(torch, "celu_", None), getattr(torch._C._nn, "silu_", None),
                                getattr(torch._C._nn, "mish_", None), getattr(torch._C._nn, "hardswish_", None))
                    if f is not None}
# gates: the plain gradient under every rule, on purpose
_GATES = {f for f in (getattr(F, n, None) for n in ("sigmoid", "hardsigmoid", "tanh")) if f is not None}
_GATES |= {torch.sigmoid, torch.tanh, torch.Tensor.sigmoid, torch.Tensor.tanh}
# known activations without a rule: plain gradient, with a warning
_UNRULED = {f: n for n, f in ((n, getattr(F, n, None)) for n in (
    "softsign", "tanhshrink", "logsigmoid", "hardshrink", "softshrink", "threshold", "threshold_", "rrelu",
    "rrelu_", "glu")) if f is not None}


def _smooth_slope(func, args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi(x), phi'(x)) of an elementwise activation, by autograd on a detached copy of x (other
    tensor arguments, PReLU's weight, enter as constants)."""
    with torch.enable_grad():
        xd = args[0].detach().requires_grad_(True)
        rest = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[1:])
        y = func(xd.clone(), *rest, **kwargs)  # on a copy: an in-place variant may write into it
        (d,) = torch.autograd.grad(y, xd, grad_outputs=torch.ones_like(y))
    return y.detach(), d


# max pooling as modules and functions call it (F.max_pool2d dispatches on return_indices, so the
# mode sees the inner functions)
_MAX_POOLS = {f for f in (getattr(F, n, None) for n in (
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "_max_pool1d", "_max_pool2d", "_max_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "_adaptive_max_pool1d",
    "_adaptive_max_pool2d", "_adaptive_max_pool3d", "fractional_max_pool2d", "fractional_max_pool3d"))
    if f is not None}
_MAX_POOLS |= {f for f in (getattr(torch, n, None) for n in ("max_pool1d", "max_pool2d", "max_pool3d",
                                                             "max_pool1d_with_indices", "adaptive_max_pool1d"))
               if f is not None}


class BackwardRule(TorchFunctionMode):
    """`with BackwardRule("guided"): ...` makes every rectifier called in the block use that rule
    in its backward pass. Forward values are unchanged. Counts the rectifier calls it replaced
    (`replaced`) and the max-pool calls whose switches the backward pass follows (`switches`)."""

    def __init__(self, rule: str):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; one of {RULES}")
        self.rule = rule
        self.replaced = 0
        self.switches = 0
        self.unruled: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.rule != "gradient" and func in _SMOOTH and args and isinstance(args[0], torch.Tensor) \
                and args[0].requires_grad and torch.is_grad_enabled():
            return self._smooth(func, args, kwargs)
        if self.rule != "gradient" and func in _UNRULED and _UNRULED[func] not in self.unruled:
            self.unruled.add(_UNRULED[func])
            warnings.warn(f"{_UNRULED[func]} has no {self.rule} rule in cnnviz: the {self.rule} signal passes it as "
                          "the plain gradient", stacklevel=2)
        spec = _TABLE.get(func)
        if spec is None or not args or not isinstance(args[0], torch.Tensor):
            if (args and isinstance(args[0], torch.Tensor) and args[0].requires_grad and torch.is_grad_enabled()
                    and func in _MAX_POOLS):
                self.switches += 1
            return func(*args, **kwargs)
        x = args[0]
        if not (x.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        lo, hi, slope = spec(args, kwargs)
        self.replaced += 1
        y = _Rectify.apply(x, lo, hi, slope, self.rule)
        if func in _IN_PLACE or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True):
            return x.copy_(y)  # callers of an in-place op may ignore the return value
        return y

    def _smooth(self, func, args, kwargs):
        x = args[0]
        y, slope = _smooth_slope(func, args, kwargs)
        self.replaced += 1
        out = _Smooth.apply(x, y, slope, self.rule)
        if func in _SMOOTH_IN_PLACE or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True):
            return x.copy_(out)
        return out
