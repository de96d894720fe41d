"""The image priors of Yosinski et al. (2015) for the pixel parameterization: L2 decay, Gaussian blur
every few steps, and clipping of pixels with a small norm."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ...errors import ParameterError

def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclasses.dataclass(frozen=True)
class Regularizers:
    """l2_decay: p <- (1 - l2_decay) p each step (towards the mean colour); blur_every / blur_sigma:
    Gaussian blur of the image every that many steps; clip_percentile: pixels whose colour norm
    (distance from the mean colour) is below that percentile of the image are reset to the mean."""

    l2_decay: float = 0.0
    blur_every: int = 0
    blur_sigma: float = 0.5
    clip_percentile: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.l2_decay or self.blur_every or self.clip_percentile)

    def check(self) -> None:
        if not 0 <= self.l2_decay < 1:
            raise ParameterError(f"l2_decay {self.l2_decay!r} must be in [0, 1) (0.0001-0.01 is usual)")
        if self.blur_every < 0 or self.blur_sigma <= 0:
            raise ParameterError(f"blur every {self.blur_every!r} steps with sigma {self.blur_sigma!r}: "
                                 "use a step count >= 0 (0: off) and a positive sigma")
        if not 0 <= self.clip_percentile < 100:
            raise ParameterError(f"clip percentile {self.clip_percentile!r} must be in [0, 100)")

    @torch.no_grad()
    def apply(self, p: torch.Tensor, step: int) -> None:
        if self.l2_decay:
            p.mul_(1.0 - self.l2_decay)
        if self.blur_every and (step + 1) % self.blur_every == 0:
            p.copy_(gaussian_blur(p, self.blur_sigma))
        if self.clip_percentile:
            norm = p.norm(dim=1, keepdim=True)
            cut = torch.quantile(norm.flatten(1), self.clip_percentile / 100.0, dim=1).view(-1, 1, 1, 1)
            p.mul_((norm >= cut).to(p.dtype))
