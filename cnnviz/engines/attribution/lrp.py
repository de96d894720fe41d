"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) as backward rules.

The relevance R of an output of a linear function z = f(x; W, b) (a convolution, a linear layer)
goes to its inputs by one of these rules (x+ = max(x, 0), x- = min(x, 0), likewise W+, W-, b+, b-;
stab(z) = z + eps * sign(z), sign(0) = 1; f^T the transpose of f's linear part, its vector-Jacobian
product with respect to x):
- epsilon (eps, default 1e-6):  R_in = x * f^T(R / stab(z)),  z = f(x; W, b);
- z+ (LRP alpha1-beta0 with negative inputs allowed):  z = f(x+; W+, b+) + f(x-; W-, 0),
  R_in = x+ * f^T_{W+}(R / stab(z)) + x- * f^T_{W-}(R / stab(z));
- alpha-beta (alpha - beta = 1): the positive contributions z_p = f(x+; W+, b+) + f(x-; W-, 0) and
  the negative ones z_n = f(x+; W-, b-) + f(x-; W+, 0) take
  R_in = alpha (x+ f^T_{W+}(R / stab(z_p)) + x- f^T_{W-}(R / stab(z_p)))
       - beta  (x+ f^T_{W-}(R / stab(z_n)) + x- f^T_{W+}(R / stab(z_n))),  stab with eps 1e-6.
Average pooling (also adaptive) and additions of two tensors (the residual connections of ResNets)
split relevance in proportion to the inputs' contributions: R_in = x * f^T(R / stab(z)) (zennit's
Norm rule); a batch norm that could not be folded takes the epsilon rule as an affine function.
Every activation (ReLU, and the smooth ones) passes relevance through unchanged; max pooling keeps
its gradient (relevance to the maximum), as in zennit's composites. Gates (sigmoid, tanh) keep the
plain gradient and are named in a warning.

Batch norms in eval mode that follow a convolution are folded into it first, on a copy
(`cnnviz.fold.folded`), so the rules see the convolution the network computes; the user's model
is not changed. Methods (each a rule per layer kind, as zennit's composites of the same rules):
lrp-epsilon: epsilon on convolutions and linear layers; lrp-zplus: z+ on convolutions, epsilon on
linear layers (zennit's EpsilonPlus); lrp-alphabeta: alpha 2, beta 1 on convolutions, epsilon on
linear layers (EpsilonAlpha2Beta1); lrp-alpha1beta0: alpha 1, beta 0 on convolutions.
The class relevance sent back is the class score itself (`Target(value="score")`).

These are zennit's published composites (zennit 0.5: `EpsilonPlus`, `EpsilonAlpha2Beta1`, no special
first layer), including their `Sum -> Norm` and `AvgPool -> Norm` entries: zennit applies the Norm
rule to a residual addition only where a canonizer has made it a `zennit.layer.Sum` module (its
ResNetCanonizer does so for torchvision's ResNets). Given a model whose additions are plain `+`
(EfficientNet-Lite's `x = x + inputs`), zennit sends the addition's plain gradient, the whole
relevance, into both branches, which counts it twice at every skip connection; that, not a
different rule, is why zennit without such a canonizer agrees with cnnviz's LRP-α2β1 on Lite0 only at
Spearman about 0.4. With a canonizer that wraps Lite0's additions in `Sum`, the two agree at
Spearman 1.000 (tests/test_lrp.py).

Relevance is not conserved where a layer has a bias (or a folded batch norm's shift): the bias
takes its share of each output's relevance, and the epsilon stabilizer absorbs a little more.
`Ledger` records, in a pass, the relevance entering and leaving every function a rule acts on, and
`attribute` keeps in every LRP result the share of the target score that reaches the input
(`params["relevance_share"]`, per image: attribution.sum() / target score), the per-layer table
(`params["relevance_layers"]`) and warns (`RelevanceLeakWarning`) where less than `MIN_SHARE` (50 %)
reaches the input: its colour bar is then not a decomposition of the score.
"""

from __future__ import annotations

import threading

import torch

from ...errors import ParameterError
from .rules import Rule, quiet

STABILIZER = 1e-6
MIN_SHARE = 0.5  # below this share of the target score reaching the input, `attribute` warns


class RelevanceLeakWarning(UserWarning):
    """Less than MIN_SHARE of the target score's relevance reached the input."""


_TRACK = threading.local()  # the Ledger of the pass running on this thread, if any


class Ledger:
    """`with Ledger(model) as led:` records, for every forward pass of `model` in the block, the
    relevance entering (R at the output) and leaving (summed over its inputs) each function an LRP
    rule acts on, per image, in the backward pass that follows; the function is named by the
    innermost module running when it was called (forward pre-hooks, removed when the block ends)
    and its kind (conv, linear, avgpool, add, batchnorm). `passes`: one dict per forward pass of the
    model, {"out": its output (detached), "rows": [[name, kind, R in (N,), R out (N,)], ...] in
    forward order}."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.passes: list[dict] = []
        self._stack: list[str] = []
        self._handles: list = []

    def __enter__(self):
        for name, m in self.model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._push(name)))
            self._handles.append(m.register_forward_hook(self._pop(name), always_call=True))
        self._was = getattr(_TRACK, "ledger", None)
        _TRACK.ledger = self
        return self

    def __exit__(self, *exc):
        _TRACK.ledger = self._was
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _push(self, name):
        def hook(module, args):
            if not name:
                self._stack.clear()
                self.passes.append({"out": None, "rows": []})
            self._stack.append(name)
        return hook

    def _pop(self, name):
        def hook(module, args, out):
            while self._stack:
                if self._stack.pop() == name:
                    break
            if not name and self.passes and isinstance(out, torch.Tensor):
                self.passes[-1]["out"] = out.detach()
        return hook

    def row(self, kind: str):
        """A row for a function called now (filled by its backward), or None outside a pass."""
        if not self.passes:
            return None
        row = [self._stack[-1] if self._stack else "", kind, None, None]
        self.passes[-1]["rows"].append(row)
        return row


def _current_row(kind: str):
    led = getattr(_TRACK, "ledger", None)
    return None if led is None else led.row(kind)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().flatten(1).sum(1) if t.ndim > 1 else t.detach().double()


def share_table(led: Ledger, targets: torch.Tensor) -> tuple[torch.Tensor, list, torch.Tensor]:
    """From the one pass of a `Ledger`: (each image's target score, [(name, kind)] of the rows in
    backward order, N x rows x 2: the relevance entering and leaving each row as a share of the
    image's target score)."""
    p = led.passes[-1]
    rows = [r for r in p["rows"] if r[2] is not None][::-1]
    score = p["out"].double()[torch.arange(len(targets)), targets.to(p["out"].device)]
    if not rows:
        return score, [], torch.zeros(len(targets), 0, 2, dtype=torch.float64)
    ins = torch.stack([r[2] for r in rows], 1)
    outs = torch.stack([r[3] for r in rows], 1)
    return score, [(r[0], r[1]) for r in rows], torch.stack([ins, outs], 2) / score[:, None, None]


def stabilize(z: torch.Tensor, eps: float = STABILIZER) -> torch.Tensor:
    return z + ((z == 0).to(z) + z.sign()) * eps


def _vjp(call, x: torch.Tensor, w, s: torch.Tensor) -> torch.Tensor:
    """f^T(s) for the linear part of x -> call(x, w, None)."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(call(xd, w, None), xd, grad_outputs=s)
    return g


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


class Relevance:
    """A relevance rule on a linear function: `__call__(call, x, w, b, R)` -> relevance of x, where
    call(x, w, b) computes the function with parameters w, b."""

    def __call__(self, call, x, w, b, R):
        raise NotImplementedError


class Epsilon(Relevance):
    def __init__(self, epsilon: float = STABILIZER):
        if not epsilon >= 0:
            raise ParameterError(f"epsilon {epsilon!r} must be >= 0")
        self.epsilon = float(epsilon)

    def __call__(self, call, x, w, b, R):
        z = call(x, w, b)
        return x * _vjp(call, x, w, R / stabilize(z, self.epsilon))

    def __repr__(self):
        return f"Epsilon({self.epsilon:g})"


class AlphaBeta(Relevance):
    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ParameterError(f"alpha {alpha!r}, beta {beta!r}: both must be >= 0 with alpha - beta = 1 "
                                 "(e.g. alpha 2, beta 1 or alpha 1, beta 0)")
        self.alpha, self.beta = float(alpha), float(beta)

    def _part(self, call, xp, xn, wa, wb, bias, R):
        """xp W_a + xn W_b (+ bias): its share of R, back to the inputs."""
        z = call(xp, wa, bias) + call(xn, wb, None)
        s = R / stabilize(z)
        return xp * _vjp(call, xp, wa, s) + xn * _vjp(call, xn, wb, s)

    def __call__(self, call, x, w, b, R):
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        out = self._part(call, xp, xn, _pos(w), _neg(w), _pos(b), R)
        if self.alpha != 1:
            out = self.alpha * out
        if self.beta:
            out = out - self.beta * self._part(call, xp, xn, _neg(w), _pos(w), _neg(b), R)
        return out

    def __repr__(self):
        return f"AlphaBeta({self.alpha:g}, {self.beta:g})"


class ZPlus(AlphaBeta):
    def __init__(self):
        super().__init__(1.0, 0.0)

    def __repr__(self):
        return "ZPlus()"


NORM = Epsilon(STABILIZER)  # pooling, additions: relevance in proportion to the contributions


class _Relevance(torch.autograd.Function):
    """Forward: the function's own value. Backward: the rule's relevance for each tensor input."""

    @staticmethod
    def forward(ctx, backward, compute, row, *xs):
        ctx.backward, ctx.row = backward, row
        ctx.xs = [x.detach().clone() for x in xs]  # an in-place op (out += identity) may overwrite them
        return compute(*xs)

    @staticmethod
    def backward(ctx, R):
        with quiet():
            grads = ctx.backward(ctx.xs, R)
            if ctx.row is not None:  # a Ledger is listening: relevance in and out, per image
                ctx.row[2] = _per_image(R)
                ctx.row[3] = sum(_per_image(g) for g in grads)
        return (None, None, None, *grads)


def _arg(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class LRP(Rule):
    """An LRP rule value for `cnnviz.engines.attribution.rules.BackwardRule`: `conv` on convolutions, `linear` on linear
    layers (Relevance rules); activations pass relevance; pooling and additions split it by
    contribution."""

    acts_on_linear = True
    warns_on_gates = True

    def __init__(self, name: str, conv: Relevance, linear: Relevance):
        self.name, self.conv, self.dense = name, conv, linear

    def __repr__(self):
        return f"LRP({self.name!r}, conv={self.conv!r}, linear={self.dense!r})"

    def rectifier(self, x, lo, hi, slope):
        from .rules import _Rectify

        return _Rectify.apply(x, lo, hi, slope, "pass")

    def smooth(self, func, args, kwargs):
        from .rules import _Smooth, _smooth_slope

        y, slope = _smooth_slope(func, args, kwargs)
        return _Smooth.apply(args[0], y, slope, "pass")

    def linear(self, kind, func, args, kwargs):
        x = args[0]
        if kind == "add":
            other = args[1] if len(args) > 1 else kwargs.get("other")
            if (not isinstance(other, torch.Tensor) or other.shape != x.shape or kwargs.get("alpha", 1) != 1
                    or len(args) > 2):
                return None  # a bias-like addition: its plain gradient

            def add_back(xs, R):
                s = R / stabilize(xs[0] + xs[1])
                return xs[0] * s, xs[1] * s
            return _Relevance.apply(add_back, torch.add, _current_row(kind), x, other)
        if kind == "avgpool":
            rest = args[1:]
            call = lambda t, w, b: func(t, *rest, **kwargs)  # noqa: E731
            rule, w, b = NORM, None, None
        elif kind == "batchnorm":
            if _arg(args, kwargs, 5, "training", False):
                return None
            rest = args[1:]
            call = lambda t, w, b: func(t, *rest, **kwargs)  # noqa: E731
            rule, w, b = Epsilon(), None, None  # the affine function as it is, its shift as a bias
        else:  # conv, linear: func(x, weight, bias, *rest)
            w, b = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
            rest = args[3:]
            kw = {k: v for k, v in kwargs.items() if k not in ("weight", "bias")}
            w, b = w.detach(), (None if b is None else b.detach())
            call = lambda t, w_, b_: func(t, w_, b_, *rest, **kw)  # noqa: E731
            rule = self.conv if kind == "conv" else self.dense

        def back(xs, R):
            return (rule(call, xs[0], w, b, R),)
        return _Relevance.apply(back, lambda t: call(t, w, b), _current_row(kind), x)


METHODS = {
    "lrp-epsilon": ("LRP-ε", Epsilon, Epsilon),
    "lrp-zplus": ("LRP-z⁺ (ε on dense)", ZPlus, Epsilon),
    "lrp-alphabeta": ("LRP-α2β1 (ε on dense)", lambda: AlphaBeta(2.0, 1.0), Epsilon),
    "lrp-alpha1beta0": ("LRP-α1β0 (ε on dense)", lambda: AlphaBeta(1.0, 0.0), Epsilon),
}
CLI_RULES = {"epsilon": "lrp-epsilon", "zplus": "lrp-zplus", "alphabeta": "lrp-alphabeta",
             "alpha1beta0": "lrp-alpha1beta0"}


def lrp_rule(name: str, epsilon: float = STABILIZER) -> LRP:
    """The rule value of an LRP method (`METHODS`)."""
    if name not in METHODS:
        raise ParameterError(f"unknown LRP rule {name!r}; one of {', '.join(METHODS)}")
    _, conv, dense = METHODS[name]
    conv_rule = conv(epsilon) if conv is Epsilon else conv()
    return LRP(name, conv_rule, Epsilon(epsilon))


def prepare(model, example: torch.Tensor, layer=None):
    """The model LRP runs on: a copy with eval batch norms folded into their convolutions (or the
    model itself where nothing folds), and what was folded."""
    from ...fold import folded

    copy_, info = folded(model, example[:1], keep=[layer] if layer is not None else [])
    return copy_, {k: v for k, v in info.items() if k in ("folded", "folded_batch_norms", "fold_reason")}


__all__ = ["LRP", "Epsilon", "ZPlus", "AlphaBeta", "Relevance", "Ledger", "RelevanceLeakWarning", "MIN_SHARE",
           "lrp_rule", "prepare", "stabilize", "share_table"]
