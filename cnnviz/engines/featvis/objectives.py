"""Objectives of feature visualization: functions of the recorded activations, the logits and the
image that return one value per image of the batch. They combine with + - * / and a number, and
`batch=i` restricts a term to image i, so one batch can optimize several units or a weighted mix."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import ParameterError

@dataclasses.dataclass
class Context:
    """What an objective sees: the recorded layer outputs (by address), the logits (when needed)
    and the image being optimized (B x 3 x H x W in [0, 1], before the random transforms)."""

    acts: dict
    logits: torch.Tensor | None
    image: torch.Tensor

    @property
    def batch(self) -> int:
        return self.image.shape[0]


class Objective:
    """A value per image to maximize. Build with the functions below; combine with + - * /."""

    def __init__(self, fn: Callable[[Context], torch.Tensor], description: str, layers: Sequence[str] = (),
                 logits: bool = False):
        self.fn = fn
        self.description = description
        self.layers = tuple(dict.fromkeys(layers))
        self.logits = logits

    def __call__(self, ctx: Context) -> torch.Tensor:
        v = self.fn(ctx)
        if v.ndim == 0:
            v = v.expand(ctx.batch)
        return v

    def __repr__(self) -> str:
        return f"Objective({self.description})"

    def _join(self, other: "Objective", op, sym: str) -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda c: op(self(c), other(c)), f"{self.description} {sym} {other.description}",
                         self.layers + other.layers, self.logits or other.logits)

    def __add__(self, other):
        return self._join(other, torch.add, "+")

    def __radd__(self, other):  # sum([...]) starts from 0
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented

    def __sub__(self, other):
        return self._join(other, torch.sub, "-")

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective(lambda c: k * self(c), f"{k:g}*({self.description})", self.layers, self.logits)

    __rmul__ = __mul__

    def __truediv__(self, k):
        if not isinstance(k, (int, float)) or k == 0:
            return NotImplemented
        return self * (1.0 / k)

    def __neg__(self):
        return self * -1.0


def _per_image(v: torch.Tensor, batch: int | None) -> torch.Tensor:
    """Keep the value of image `batch` only (the others get 0), or all images when None."""
    if batch is None:
        return v
    mask = torch.zeros_like(v)
    mask[batch] = 1.0
    return v * mask


def _check_batch_arg(batch):
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 0):
        raise ParameterError(f"batch={batch!r} must be the index of an image in the batch (0, 1, ...)")


def _units_arg(unit) -> int | list[int]:
    if isinstance(unit, (int, np.integer)):
        return int(unit)
    units = [int(u) for u in unit]
    if not units:
        raise ParameterError("no units given")
    return units


def _pick(act: torch.Tensor, unit: int | list[int]) -> torch.Tensor:
    """Channel `unit` of every image, or channel unit[i] of image i."""
    return _column(act, unit, "unit", "the layer has channels")


def _column(x: torch.Tensor, index: int | list[int], what: str, has: str) -> torch.Tensor:
    """Column `index` of dimension 1 for every image, or column index[i] of image i; an index out
    of range or a list not one per image is a one-line error naming the `what` ("unit", "class")
    and the range ("the layer has channels" 0..C-1)."""
    n, c = x.shape[:2]
    bad = [i for i in ([index] if isinstance(index, int) else index) if not 0 <= i < c]
    if bad:
        raise ParameterError(f"{what} {bad[0]} is out of range: {has} 0..{c - 1}")
    if isinstance(index, int):
        return x[:, index]
    if len(index) != n:
        plural = "classes" if what == "class" else f"{what}s"
        raise ParameterError(f"{len(index)} {plural} for a batch of {n} images; give one {what} per image")
    return x[torch.arange(n, device=x.device), torch.tensor(index, device=x.device)]


def channel(layer: str, unit, batch: int | None = None) -> Objective:
    """Mean activation of feature map `unit` of `layer` (a list: image i drives unit i). For a
    layer without spatial axes (fully connected), the unit's output."""
    _check_batch_arg(batch)
    unit = _units_arg(unit)

    def fn(c):
        a = _pick(c.acts[layer].float(), unit)
        return _per_image(a.flatten(1).mean(1) if a.ndim > 1 else a, batch)

    return Objective(fn, f"channel({layer}, {_units_str(unit)})", [layer])


def neuron(layer: str, unit, y: int | None = None, x: int | None = None, batch: int | None = None) -> Objective:
    """Activation of `unit` at one position of its map (default: the centre)."""
    _check_batch_arg(batch)
    unit = _units_arg(unit)

    def fn(c):
        a = _pick(c.acts[layer].float(), unit)
        if a.ndim < 3:
            raise ParameterError(f"neuron objective needs a layer with spatial maps; {layer!r} has none (use channel)")
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise ParameterError(f"position ({yy}, {xx}) is outside the {h}x{w} map of {layer!r}")
        return _per_image(a[:, yy, xx], batch)

    where = "centre" if y is None and x is None else f"{y},{x}"
    return Objective(fn, f"neuron({layer}, {_units_str(unit)}, {where})", [layer])


def _class_values(logits: torch.Tensor, cls) -> torch.Tensor:
    return _column(logits, cls, "class", "the model has classes")


def class_logit(cls, batch: int | None = None) -> Objective:
    """The class score before the softmax (what Simonyan et al. 2014 maximize); a list: one class per image."""
    _check_batch_arg(batch)
    cls = _units_arg(cls)
    return Objective(lambda c: _per_image(_class_values(c.logits.float(), cls), batch),
                     f"logit({_units_str(cls)})", logits=True)


def class_prob(cls, batch: int | None = None) -> Objective:
    """The softmax probability of the class (can rise by pushing other classes down)."""
    _check_batch_arg(batch)
    cls = _units_arg(cls)
    return Objective(lambda c: _per_image(_class_values(torch.softmax(c.logits.float(), 1), cls), batch),
                     f"prob({_units_str(cls)})", logits=True)


def dream(layer: str, batch: int | None = None) -> Objective:
    """DeepDream: the mean squared activation of the whole layer (its L2 norm, squared, per element)."""
    _check_batch_arg(batch)
    return Objective(lambda c: _per_image(c.acts[layer].float().pow(2).flatten(1).mean(1), batch),
                     f"dream({layer})", [layer])


def match(layer: str, target: torch.Tensor, batch: int | None = None) -> Objective:
    """Minus the squared distance to `target` (the layer's output for some image, 1 x ... or B x ...)
    relative to the target's own squared norm: 0 is a perfect match, -1 as far as an all-zero output
    (Mahendran & Vedaldi 2015, Eq. 2)."""
    _check_batch_arg(batch)
    target = target.detach().float()

    def fn(c):
        a = c.acts[layer].float()
        t = target.to(a.device)
        if t.shape[1:] != a.shape[1:]:
            raise ParameterError(f"inversion target of shape {tuple(t.shape[1:])} does not fit layer {layer!r} "
                                 f"output {tuple(a.shape[1:])}: optimize at the target image's size")
        d = (a - t).pow(2).flatten(1).sum(1) / t.pow(2).flatten(1).sum(1).clamp_min(1e-12)
        return _per_image(-d, batch)

    return Objective(fn, f"match({layer})", [layer])


def total_variation(beta: float = 2.0) -> Objective:
    """Minus the total variation of the image (Mahendran & Vedaldi: sum of the beta/2 powers of
    squared neighbour differences), as a mean over pixels, in [0, 1] pixel units."""
    if beta <= 0:
        raise ParameterError(f"total-variation beta {beta!r} must be positive (1 or 2 are usual)")

    def fn(c):
        x = c.image
        dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
        dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
        tv = (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2.0)
        return -tv.flatten(1).mean(1)

    return Objective(fn, f"tv(beta={beta:g})")


def alpha_norm(alpha: float = 6.0) -> Objective:
    """Minus the mean alpha-th power of the image's distance from mid-gray, scaled so that the
    extremes 0 and 1 count 1: keeps pixels inside their range (Mahendran & Vedaldi)."""
    if alpha <= 0:
        raise ParameterError(f"alpha {alpha!r} must be positive (6 is usual)")
    return Objective(lambda c: -(2.0 * (c.image - 0.5)).abs().pow(alpha).flatten(1).mean(1), f"alpha(alpha={alpha:g})")


def _units_str(u) -> str:
    if isinstance(u, int):
        return str(u)
    if len(u) > 2 and all(b - a == 1 for a, b in zip(u, u[1:])):
        return f"{u[0]}..{u[-1]}"
    return "[" + ", ".join(map(str, u)) + "]"


def parse_units(text: str | int | Sequence[int], num_channels: int | None = None) -> list[int]:
    """`5`, `0:16` (start:stop, Python style), `3,7,9`, or a mix `0:4,10`."""
    if isinstance(text, (int, np.integer)):
        units = [int(text)]
    elif not isinstance(text, str):
        units = [int(u) for u in text]
    else:
        units = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?::(\d+))?", part)
            if not m:
                raise ParameterError(f"bad units {text!r}; use N, START:STOP or a list such as 0:8,12,15")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a + 1
            if b <= a:
                raise ParameterError(f"empty unit range {part!r} in {text!r}: STOP must be larger than START")
            units.extend(range(a, b))
    if not units:
        raise ParameterError(f"no units in {text!r}")
    if num_channels is not None:
        bad = [u for u in units if not 0 <= u < num_channels]
        if bad:
            raise ParameterError(f"unit {bad[0]} is out of range: the layer has channels 0..{num_channels - 1}")
    return units
