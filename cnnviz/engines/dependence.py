"""Does a deconvnet map show the image? Each map is compared with the map of a uniform gray image
sent back from the same signal (see `cnnviz.engines.gradients`' docstring)."""

from __future__ import annotations

import contextlib

import torch

from ..batching import pad
from ..layers import StopForward, record
from ..rules import BackwardRule

UNINFORMATIVE_R = 0.99  # a deconvnet map this correlated with a gray image's map shows no image


def _deconv_map(g: torch.Tensor) -> torch.Tensor:
    return g.abs().amax(1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    d = float(a.norm() * b.norm())
    return float((a @ b) / d) if d > 0 else (1.0 if float((a - b).abs().max()) == 0 else 0.0)


def image_dependence(model, x, targets, layer, unit, fill, batch) -> tuple[list[float], int]:
    """How much of the image reaches the deconvnet map: per image the Pearson correlation of its
    map with the map of a uniform image (`fill`, 3 x 1 x 1 normalized: the dataset mean, gray) sent
    back from the same signal (the same class; for a unit, the image's own seed at the unit's
    layer), and the number of max-pool calls whose switches the backward pass followed. `unit` is a
    Unit, or a Target with one position per image (`Target.at_positions`, as the top-k patches
    project each image's own activation)."""
    from .gradients import _unit_seed  # that module imports this one
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
                    s = _unit_seed(act[:m], unit)
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
