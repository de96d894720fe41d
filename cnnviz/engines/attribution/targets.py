"""What a backward pass starts from, and the one way its signal is seeded.

A `Target` is a class score of each image, or a unit of a layer: a whole feature map ("map"), its
strongest activation ("max"), one position of it (the same (y, x) for every image) or one position
per image (an N x 2 tensor, as the top-k patches project each image's own activation). `seed`
builds the signal sent back from the model's output (class) or from the layer's output (unit):
- class: 1 at each image's class score, 0 elsewhere (the gradient of the score); with
  `value="score"` the score itself there (LRP: the relevance at the output is the prediction);
- unit: the unit's own activation(s) at its position(s), every other activation of the layer zero,
  as Zeiler & Fergus project a unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ParameterError

KINDS = ("class", "unit", "map", "position")


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


@dataclass(frozen=True, eq=False)
class Target:
    """kind "class": `classes` (N, or None for each image's top-1); "unit": the strongest activation
    of `channel`; "map": all of it; "position": `where` = (y, x) for every image or an N x 2 tensor.
    `value`: a class seed of 1 ("one") or of the score itself ("score")."""

    kind: str = "class"
    classes: torch.Tensor | None = None
    channel: int | None = None
    where: tuple[int, int] | torch.Tensor | None = None
    value: str = "one"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ParameterError(f"unknown target kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.value not in ("one", "score"):
            raise ParameterError(f"target value {self.value!r}: use 'one' or 'score'")

    @classmethod
    def of_class(cls, classes: torch.Tensor | None = None, value: str = "one") -> "Target":
        return cls("class", classes=classes, value=value)

    @classmethod
    def of_unit(cls, unit: Unit) -> "Target":
        if unit.where == "max":
            return cls("unit", channel=unit.channel)
        if unit.where == "map":
            return cls("map", channel=unit.channel)
        return cls("position", channel=unit.channel, where=tuple(unit.where))

    @classmethod
    def at_positions(cls, channel: int, positions: torch.Tensor) -> "Target":
        """One position per image: `positions` N x 2, (y, x)."""
        return cls("position", channel=int(channel), where=positions)

    @property
    def is_class(self) -> bool:
        return self.kind == "class"

    def with_classes(self, classes: torch.Tensor | None) -> "Target":
        return Target(self.kind, classes, self.channel, self.where, self.value)


def seed(out: torch.Tensor, target: Target) -> torch.Tensor:
    """The signal sent back from `out` (the model's output for a class target, the layer's output
    for a unit) for `target`; `target.classes` must be set for a class target."""
    s = torch.zeros_like(out)
    rows = torch.arange(len(out), device=out.device)
    a = out.detach()
    if target.kind == "class":
        t = target.classes.to(out.device)
        s[rows, t] = 1.0 if target.value == "one" else a[rows, t]
        return s
    c = target.channel
    if out.ndim == 2:  # a fully connected layer: the unit is one output
        s[:, c] = a[:, c]
    elif target.kind == "map":
        s[:, c] = a[:, c]
    elif target.kind == "unit":
        flat = a[:, c].flatten(1)
        idx = flat.argmax(1)
        w = a.shape[-1]
        s[rows, c, idx // w, idx % w] = flat[rows, idx]
    elif isinstance(target.where, torch.Tensor):
        ys, xs = target.where[:, 0].to(out.device), target.where[:, 1].to(out.device)
        s[rows, c, ys, xs] = a[rows, c, ys, xs]
    else:
        y, x = target.where
        s[:, c, y, x] = a[:, c, y, x]
    return s
