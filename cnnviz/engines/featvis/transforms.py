"""Transformation robustness (Olah et al. 2017): every step sees the image padded, shifted, scaled and
rotated by amounts drawn afresh for each image and step, in one `grid_sample`."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...errors import ParameterError

@dataclasses.dataclass(frozen=True)
class Transforms:
    """Random transforms applied to the image before every forward pass, drawn per image and step:
    `pad` pixels of mid-gray margin on each side, a shift of up to `jitter` pixels, a scale factor in
    `scale` (low, high), a rotation of up to `rotate` degrees either way. One bilinear resampling."""

    pad: int = 0
    jitter: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0

    @property
    def identity(self) -> bool:
        return self.pad == 0 and self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == 0

    def describe(self) -> str:
        if self.identity:
            return "none"
        return f"pad={self.pad},jitter={self.jitter:g},scale={self.scale[0]:g}-{self.scale[1]:g},rotate={self.rotate:g}"

    @classmethod
    def parse(cls, spec: "str | Transforms | None") -> "Transforms":
        """`standard`, `none`, or `pad=12,jitter=8,scale=0.9-1.1,rotate=10` (missing keys: none)."""
        if isinstance(spec, Transforms):
            return spec
        if spec is None:
            return cls()
        text = str(spec).strip().lower()
        if text in ("standard", "default"):
            return STANDARD_TRANSFORMS
        if text in ("none", "off", ""):
            return cls()
        kw: dict = {}
        for part in text.split(","):
            key, sep, val = part.partition("=")
            key = key.strip()
            try:
                if not sep:
                    raise ValueError
                if key == "pad":
                    kw["pad"] = int(val)
                elif key == "jitter":
                    kw["jitter"] = float(val)
                elif key == "rotate":
                    kw["rotate"] = float(val)
                elif key == "scale":
                    lo, _, hi = val.partition("-")
                    kw["scale"] = (float(lo), float(hi or lo))
                else:
                    raise ValueError
            except ValueError:
                raise ParameterError(f"bad transforms {spec!r}; use standard, none, or e.g. "
                                     "pad=12,jitter=8,scale=0.9-1.1,rotate=10") from None
        t = cls(**kw)
        if t.pad < 0 or t.jitter < 0 or t.rotate < 0 or not 0 < t.scale[0] <= t.scale[1]:
            raise ParameterError(f"bad transforms {spec!r}: pad, jitter and rotate must be >= 0 and scale "
                                 "LOW-HIGH with 0 < LOW <= HIGH")
        return t

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: B x 3 x H x W in [0, 1] -> B x 3 x (H + pad) x (W + pad), gray outside the image."""
        if self.identity:
            return x
        b, _, h, w = x.shape
        oh, ow = h + self.pad, w + self.pad
        r = torch.rand((b, 4), generator=generator)
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * r[:, 0]
        a = torch.deg2rad((2 * r[:, 1] - 1) * self.rotate)
        ty = (2 * r[:, 2] - 1) * self.jitter
        tx = (2 * r[:, 3] - 1) * self.jitter
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        theta = torch.zeros((b, 2, 3))
        # output normalized coordinates -> input normalized coordinates, one input pixel per output pixel
        theta[:, 0, 0] = cos * ow / w
        theta[:, 0, 1] = -sin * oh / w
        theta[:, 1, 0] = sin * ow / h
        theta[:, 1, 1] = cos * oh / h
        theta[:, 0, 2] = 2 * tx / w
        theta[:, 1, 2] = 2 * ty / h
        grid = F.affine_grid(theta.to(x.device, x.dtype), [b, 3, oh, ow], align_corners=False)
        return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


# No margin by default: the network sees the image's own size, so a step costs what a forward and
# backward pass of the image costs. On efficientnet_lite0 a 16-pixel margin (lucid's choice is
# similar) gave the same objectives and equally smooth images, at 1.5x the time per step.
STANDARD_TRANSFORMS = Transforms(pad=0, jitter=8, scale=(0.9, 1.1), rotate=10)
