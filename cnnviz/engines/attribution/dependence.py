"""Does a deconvnet map show the image? Each map is compared with the map of a uniform gray image
sent back from the same signal (see `cnnviz.engines.attribution.gradients`' docstring)."""

from __future__ import annotations

import contextlib

import torch

from ...batching import pad
from ...layers import StopForward, record
from .rules import BackwardRule

UNINFORMATIVE_R = 0.99  # a deconvnet map this correlated with a gray image's map shows no image

# Backward steps whose gradient to their input is a fixed linear map of the incoming gradient,
# whatever the forward pass computed (reshapes, sums, padding, average pooling, additions, scalings
# by constants, ...)
_FIXED = {"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "NegBackward0", "ViewBackward0",
          "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0", "ExpandBackward0", "PermuteBackward0",
          "TransposeBackward0", "TBackward0", "CloneBackward0", "ToCopyBackward0", "SliceBackward0",
          "SelectBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
          "CatBackward0", "StackBackward0", "SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0",
          "MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1", "AvgPool2DBackward0",
          "AdaptiveAvgPool2DBackward0", "ConstantPadNdBackward0", "UpsampleNearest2DBackward0",
          "UpsampleBilinear2DBackward0", "MulBackward1", "DivBackward1", "FlattenBackward0"}
# multilinear steps: a fixed linear map of the gradient for the one input on the image's path, as
# long as no other input is on it (a convolution's weights, not a feature map; x * a constant)
_MULTILINEAR = {"ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "MulBackward0", "BmmBackward0",
                "MvBackward0", "LinearBackward0", "MatmulBackward0"}
_RULE_NODES = {"_RectifyBackward", "_SmoothBackward"}  # cnnviz.engines.attribution.rules' rectifiers: only their input counts


def _followed(node):
    if type(node).__name__ in _RULE_NODES:
        return [f for f, _ in node.next_functions[:1]]
    return [f for f, _ in node.next_functions]


def backward_ignores_image(output: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the backward pass recorded from `x` (a leaf that requires grad) to `output` under the
    deconv rule uses nothing of the forward pass: every step on the path from `output` down to `x`
    is a fixed linear map of the gradient it receives (a convolution or linear layer by its
    weights, an eval-mode batch norm by its statistics, a reshape, a sum, padding, average pooling,
    a rectifier under the deconv rule, which rectifies the signal itself). Then the signal at `x`
    is one fixed linear function of the signal sent down, the same for every input: a uniform gray
    image sent back from the same signal gets the very same map. Any other step (a max-pool
    switch, a product of two feature maps such as a squeeze-and-excitation gate, a rectifier under
    another rule) makes it False, and the map must be compared with the gray image's."""
    if output.grad_fn is None:
        return False
    reaches: dict = {}  # node -> on a path to x (the autograd graph is acyclic)
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node in reaches:
            continue
        kids = [k for k in _followed(node) if k is not None]
        if all(k in reaches for k in kids):
            reaches[node] = getattr(node, "variable", None) is x or any(reaches[k] for k in kids)
        else:
            stack.append(node)
            stack.extend(k for k in kids if k not in reaches)
    for node, on_path in reaches.items():
        if not on_path or getattr(node, "variable", None) is x:
            continue
        name = type(node).__name__
        if name in _FIXED:
            continue
        if name in _RULE_NODES:
            if getattr(node, "rule", None) != "deconv":
                return False
            continue
        if name == "NativeBatchNormBackward0":
            if getattr(node, "_saved_training", True) is not False:
                return False
            continue
        if name in _MULTILINEAR or name == "DivBackward0":
            inputs = [i for i, (f, _) in enumerate(node.next_functions) if f is not None and reaches.get(f)]
            if inputs != [0] and not (name != "DivBackward0" and len(inputs) == 1):
                return False
            continue
        return False
    return True


def _deconv_map(g: torch.Tensor) -> torch.Tensor:
    return g.abs().amax(1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    d = float(a.norm() * b.norm())
    return float((a @ b) / d) if d > 0 else (1.0 if float((a - b).abs().max()) == 0 else 0.0)


def image_dependence(model, x, targets, layer, unit, fill, batch, pad=pad) -> tuple[list[float], int]:
    """How much of the image reaches the deconvnet map: per image the Pearson correlation of its
    map with the map of a uniform image (`fill`, 3 x 1 x 1 normalized: the dataset mean, gray) sent
    back from the same signal (the same class; for a unit, the image's own seed at the unit's
    layer), and the number of max-pool calls whose switches the backward pass followed. `unit` is a
    Unit, or a Target with one position per image (`Target.at_positions`, as the top-k patches
    project each image's own activation). `pad`: how each batch is filled up to full groups
    (`cnnviz.batching.padder`: nothing for one image)."""
    from .targets import Target, seed as make_seed

    rs, switches = [], 0
    for i in range(0, len(x), batch):
        k = len(x[i:i + batch])
        xi = pad(x[i:i + batch].detach())  # full groups: the correlations do not depend on the batch
        both = torch.cat([xi, fill.expand_as(xi)]).clone().requires_grad_(True)
        m = len(xi)
        with torch.enable_grad(), BackwardRule("deconv") as mode:
            if unit is None:
                out = model(both)
                t = pad(targets[i:i + batch])
                seed = torch.zeros_like(out)
                rows = torch.arange(m, device=out.device)
                seed[rows, t] = 1.0
                seed[rows + m, t] = 1.0
                (g,) = torch.autograd.grad(out, both, grad_outputs=seed)
            else:
                with record(model, [layer], stop=True) as store:
                    with contextlib.suppress(StopForward):
                        model(both)
                act = store[layer.address]
                if isinstance(unit, Target):
                    t = unit
                    if isinstance(t.where, torch.Tensor):
                        t = Target.at_positions(t.channel, pad(t.where[i:i + batch]))
                    s = make_seed(act[:m], t)
                else:
                    s = make_seed(act[:m], Target.of_unit(unit))
                (g,) = torch.autograd.grad(act, both, grad_outputs=torch.cat([s, s]))
        switches = max(switches, mode.switches)
        maps = _deconv_map(g.detach())
        rs += [_pearson(maps[j], maps[m + j]) for j in range(k)]
    return rs, switches


def _uninformative(model_name: str, rs: list[float], switches: int, unit: bool) -> dict:
    """params entries for a deconvnet result: the correlations with the gray image's map, and
    whether (and why) the map shows no image."""
    low = min(rs)
    flag = low >= UNINFORMATIVE_R
    reason = None
    if flag:
        why = (f"{model_name} has no max-pool switches on the path, and the deconvnet's rectifiers ignore the "
               "forward pass" if switches == 0 else
               f"the {switches} max-pool switch(es) on the path change it by little")
        what = ("the unit's fixed pattern, placed at its position and scaled by its activation" if unit
                else "the class's fixed pattern")
        reason = (f"the deconvnet map does not depend on the image: it equals the map of a uniform gray image "
                  f"sent back from the same signal (Pearson r >= {low:.3f}); {why}, so it shows {what}, "
                  "not this image")
    return {"uninformative": bool(flag), "uninformative_reason": reason,
            "gray_image_r": [round(float(r), 6) for r in rs], "max_pool_switches": int(switches)}
