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

Rules are values: `GRADIENT`, `GUIDED`, `DECONV` (instances of `Rule`; a name is looked up in
`RULE_OBJECTS`), and the LRP rules of `cnnviz.engines.attribution.lrp`, which also act on convolutions, linear
layers, average pooling, batch norms and additions (`Rule.linear`). A rule is chosen per layer:
`BackwardRule({"features": "guided", "": "gradient"}, model=model)` applies, at each torch function
the mode sees, the rule of the layer that is running, found from forward pre-hooks on the model's
modules (removed when the block ends): the innermost module running, matched against the keys by
the longest prefix that ends at a dot ("features" covers "features" and "features.3", not
"features2"; "" covers every layer). A layer no key covers gets the plain gradient. A key that names
no module of the model is refused.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Mapping

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("gradient", "guided", "deconv")


_CALL = threading.local()  # .in_place: the rectifier being replaced overwrites its input


class _Rectify(torch.autograd.Function):
    # Few passes over memory: these run at every rectifier. An out-of-place ReLU / ReLU6 / Hardtanh
    # saves its input, as torch's own hardtanh does, and its backward is one fused kernel
    # (threshold_backward, hardtanh_backward: the signal where lo < x < hi, else 0). An in-place
    # call (or a LeakyReLU) saves boolean masks instead, since x is overwritten; the deconv rule
    # ignores x and saves nothing.
    @staticmethod
    def forward(ctx, x, lo, hi, slope, rule):
        ctx.slope, ctx.rule = slope, rule
        ctx.lo, ctx.hi, ctx.fused = lo, hi, False
        y = x.clamp(min=lo if lo > -math.inf else None, max=hi if hi < math.inf else None)
        if slope:
            below = x <= lo
            y = torch.where(below, lo + slope * (x - lo), y)
        if rule in ("deconv", "pass"):
            return y
        if not slope and lo > -math.inf and not getattr(_CALL, "in_place", True):
            ctx.fused = True
            ctx.save_for_backward(x)
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
        if ctx.rule == "pass":  # LRP: relevance passes the activation unchanged
            return g, None, None, None, None
        if ctx.rule == "deconv":
            return (g.clamp(min=0) if not a else torch.where(g > 0, g, a * g)), None, None, None, None
        (inside,) = ctx.saved_tensors
        if ctx.fused:  # inside: the saved input x itself; guided rectifies the fresh result in place
            out = (torch.ops.aten.threshold_backward(g, inside, ctx.lo) if ctx.hi == math.inf
                   else torch.ops.aten.hardtanh_backward(g, inside, ctx.lo, ctx.hi))
            return (out.clamp_(min=0) if ctx.rule == "guided" else out), None, None, None, None
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
        if ctx.rule == "pass":
            return g, None, None, None
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


_QUIET = threading.local()  # set while a rule's own backward calls torch functions: the mode lets them through


class quiet:
    """`with quiet():` the mode passes every call through unchanged (a rule's backward computing
    with torch functions while the mode is still active on the thread)."""

    def __enter__(self):
        self.was = getattr(_QUIET, "on", False)
        _QUIET.on = True

    def __exit__(self, *exc):
        _QUIET.on = self.was


class Rule:
    """What the backward pass does at the functions `BackwardRule` sees, where this rule is chosen.
    Each hook returns the output to use, or None for the plain function (its plain gradient).

    rectifier(x, lo, hi, slope, in_place): ReLU, ReLU6, Hardtanh, LeakyReLU (y = clip(x, lo, hi),
      slope below lo); smooth(func, args, kwargs): SiLU, GELU, Mish, Hardswish, ELU, ...;
      linear(kind, func, args, kwargs): "conv", "linear", "avgpool", "add", "batchnorm"; called only
      when `acts_on_linear`. `warns_on_gates`: the gates (sigmoid, hard sigmoid, tanh) are named in a
      warning, as an activation without a rule."""

    name = "rule"
    acts_on_linear = False
    warns_on_gates = False

    def rectifier(self, x, lo, hi, slope):
        return None

    def smooth(self, func, args, kwargs):
        return None

    def linear(self, kind, func, args, kwargs):
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gradient(Rule):
    """The plain gradient everywhere."""

    name = "gradient"


class _Modified(Rule):
    def rectifier(self, x, lo, hi, slope):
        return _Rectify.apply(x, lo, hi, slope, self.name)

    def smooth(self, func, args, kwargs):
        y, slope = _smooth_slope(func, args, kwargs)
        return _Smooth.apply(args[0], y, slope, self.name)


class Guided(_Modified):
    """Guided backprop: g * phi'(x) * [g > 0] at rectifiers, phi'(x) * max(g, 0) at smooth activations."""

    name = "guided"


class Deconv(_Modified):
    """Zeiler-Fergus deconvnet: the signal rectified at every activation, whatever x was."""

    name = "deconv"


GRADIENT, GUIDED, DECONV = Gradient(), Guided(), Deconv()
RULE_OBJECTS = {"gradient": GRADIENT, "guided": GUIDED, "deconv": DECONV}


def as_rule(value) -> Rule:
    """A Rule from a Rule or one of the names in RULE_OBJECTS."""
    if isinstance(value, Rule):
        return value
    if isinstance(value, str) and value in RULE_OBJECTS:
        return RULE_OBJECTS[value]
    raise ValueError(f"unknown rule {value!r}; one of {tuple(RULE_OBJECTS)} or a cnnviz.engines.attribution.rules.Rule "
                     "(LRP rules: cnnviz.engines.attribution.lrp)")


def covers(prefix: str, name: str) -> bool:
    """Whether the rule key `prefix` covers the layer `name`: "" covers all, "a.b" covers "a.b" and
    "a.b.c", not "a.bc"."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def rule_for(rules: Mapping[str, Rule], name: str) -> Rule:
    """The rule of the longest key covering `name` (the plain gradient where none does)."""
    best = None
    for key in rules:
        if covers(key, name) and (best is None or len(key) > len(best)):
            best = key
    return GRADIENT if best is None else rules[best]


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


def _funcs(owner, names):
    return [f for f in (getattr(owner, n, None) for n in names) if f is not None]


# the functions an LRP rule acts on (Rule.linear), by kind
_LINEAR = {f: "conv" for f in _funcs(F, ("conv1d", "conv2d", "conv3d"))}
_LINEAR.update({f: "linear" for f in _funcs(F, ("linear",))})
_LINEAR.update({f: "avgpool" for f in _funcs(F, ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                                                 "adaptive_avg_pool2d", "adaptive_avg_pool3d"))})
_LINEAR.update({f: "batchnorm" for f in _funcs(F, ("batch_norm",))})
_LINEAR.update({f: "add" for f in (torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
                                   torch.Tensor.__iadd__, torch.Tensor.__radd__)})
_LINEAR_IN_PLACE = {torch.Tensor.add_, torch.Tensor.__iadd__}
# every function the mode does anything with; the others (most calls of a pass: shapes, views,
# indexing) go straight through
_WATCHED = frozenset(_TABLE) | frozenset(_SMOOTH) | frozenset(_LINEAR) | frozenset(_UNRULED) | frozenset(_GATES) \
    | frozenset(_MAX_POOLS)


class BackwardRule(TorchFunctionMode):
    """`with BackwardRule("guided"): ...` makes every rectifier called in the block use that rule
    in its backward pass. Forward values are unchanged. Counts the rectifier calls it replaced
    (`replaced`) and the max-pool calls whose switches the backward pass follows (`switches`).

    rule: a name ("gradient", "guided", "deconv"), a `Rule`, or a mapping {layer prefix: rule}
      chosen per layer (see the module's docstring); a mapping needs `model`, whose modules get
      forward pre-hooks (and forward hooks) for the block's duration only."""

    def __init__(self, rule, model=None):
        super().__init__()
        if isinstance(rule, Mapping):
            if model is None:
                raise ValueError("rules per layer need the model: BackwardRule({...}, model=model)")
            names = [n for n, _ in model.named_modules()]
            for key in rule:
                if not isinstance(key, str) or not any(covers(key, n) for n in names):
                    raise ValueError(f"rules key {key!r} names no layer of the model; use a module name from "
                                     "`cnnviz layers` (its sub-layers included) or \"\" for every layer")
            self.rules = {k: as_rule(v) for k, v in rule.items()}
            self._single = None
            self.rule = "per-layer"
        else:
            if isinstance(rule, str) and rule not in RULE_OBJECTS:
                raise ValueError(f"unknown rule {rule!r}; one of {RULES}")
            self._single = as_rule(rule)
            self.rules = {"": self._single}
            self.rule = self._single.name
        self.model = model if isinstance(rule, Mapping) else None
        self.replaced = 0
        self.switches = 0
        self.unruled: set[str] = set()
        self._stack: list[str] = []
        self._handles: list = []

    # which layer is running: pre-hooks push its name, forward hooks (always called) pop it
    def __enter__(self):
        if self.model is not None:
            for name, m in self.model.named_modules():
                self._handles.append(m.register_forward_pre_hook(self._push(name)))
                self._handles.append(m.register_forward_hook(self._pop(name), always_call=True))
        try:
            return super().__enter__()
        except BaseException:
            self._remove()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._remove()

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()

    def _push(self, name):
        def hook(module, args):
            if not name:
                self._stack.clear()  # a new pass of the whole model
            self._stack.append(name)
        return hook

    def _pop(self, name):
        def hook(module, args, out):
            while self._stack:
                if self._stack.pop() == name:
                    break
        return hook

    def current(self) -> Rule:
        """The rule of the layer running now."""
        if self._single is not None:
            return self._single
        return rule_for(self.rules, self._stack[-1] if self._stack else "")

    def _warn(self, what: str, rule: Rule):
        if what not in self.unruled:
            self.unruled.add(what)
            warnings.warn(f"{what} has no {rule.name} rule in cnnviz: the {rule.name} signal passes it as the plain "
                          "gradient", stacklevel=3)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _WATCHED:
            return func(*args, **kwargs)
        if getattr(_QUIET, "on", False):
            return func(*args, **kwargs)
        tracked = bool(args) and isinstance(args[0], torch.Tensor) and args[0].requires_grad \
            and torch.is_grad_enabled()
        if not tracked:
            return func(*args, **kwargs)
        rule = self.current()
        if isinstance(rule, Gradient):
            if func in _MAX_POOLS:
                self.switches += 1
            return func(*args, **kwargs)
        in_place = kwargs.get("inplace") or (len(args) > 1 and args[-1] is True)
        if func in _SMOOTH:
            out = rule.smooth(func, args, kwargs)
            if out is not None:
                self.replaced += 1
                return args[0].copy_(out) if (func in _SMOOTH_IN_PLACE or in_place) else out
        elif func in _TABLE:
            lo, hi, slope = _TABLE[func](args, kwargs)
            _CALL.in_place = func in _IN_PLACE or bool(in_place)
            try:
                y = rule.rectifier(args[0], lo, hi, slope)
            finally:
                _CALL.in_place = True
            if y is not None:
                self.replaced += 1
                # callers of an in-place op may ignore the return value
                return args[0].copy_(y) if (func in _IN_PLACE or in_place) else y
        elif rule.acts_on_linear and func in _LINEAR:
            out = rule.linear(_LINEAR[func], func, args, kwargs)
            if out is not None:
                self.replaced += 1
                return args[0].copy_(out) if func in _LINEAR_IN_PLACE else out
        elif func in _UNRULED:
            self._warn(_UNRULED[func], rule)
        elif rule.warns_on_gates and func in _GATES:
            self._warn(getattr(func, "__name__", str(func)), rule)
        elif func in _MAX_POOLS:
            self.switches += 1
        return func(*args, **kwargs)
