"""Image parameterizations: what the optimizer changes, and how it becomes an image in [0, 1].

Any object with three methods can serve (`ImageParam`): `parameters()` (the tensors Adam updates),
`image()` (B x 3 x H x W in [0, 1], differentiable in the parameters) and `project()` (called after
every step, e.g. to clip; may do nothing). Two are built in: plain pixels and a decorrelated Fourier
spectrum (Olah et al. 2017).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ...errors import ParameterError


@runtime_checkable
class ImageParam(Protocol):
    """What `visualize(param=...)` accepts besides "pixel" and "fourier"."""

    def parameters(self) -> list[torch.Tensor]: ...

    def image(self) -> torch.Tensor: ...

    def project(self) -> None: ...


# Square root of the RGB covariance of natural images, U * sqrt(S) from the eigendecomposition of
# the covariance of pixel values in [0, 1] over the 500 photos of the ImageNet sample
# (../shared/data/imagenet-sample, every 7th pixel; columns: decorrelated components, strongest
# first). Multiplying independent noise by it gives noise with the colour statistics of photos.
COLOR_SQRT_COV = np.array([[0.2546, -0.0884, 0.0265],
                           [0.2610, -0.0033, -0.0509],
                           [0.2648, 0.0882, 0.0247]], dtype=np.float32)



class PixelImage:
    """Pixels directly. Without `decorrelate` the image is mean colour + p and is projected back
    into [0, 1] after every step (Yosinski's regularizers act on p); with it, sigmoid(colour(p))."""

    def __init__(self, shape, mean: torch.Tensor, generator: torch.Generator, device, init: torch.Tensor | None = None,
                 decorrelate: bool = False, sd: float = 0.01):
        self.decorrelate = decorrelate
        self.mean = mean.view(1, 3, 1, 1).to(device)
        if init is not None:
            init = init.to(device).clamp(0, 1)
            p = _logit(init) if decorrelate else init - self.mean
            if decorrelate:
                p = _color(p, inverse=True)
        else:
            p = torch.randn(shape, generator=generator).to(device) * sd
        self.p = p.detach().clone().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.p]

    def image(self) -> torch.Tensor:
        if self.decorrelate:
            return torch.sigmoid(_color(self.p))
        return self.mean + self.p

    @torch.no_grad()
    def project(self) -> None:
        if not self.decorrelate:
            self.p.copy_((self.mean + self.p).clamp(0, 1) - self.mean)


class FourierImage:
    """A spectrum (real FFT of each colour plane) whose frequency f is scaled by 1/f**decay, so that
    every frequency moves at the same rate under gradient steps (Olah et al. 2017); then colour
    decorrelation and a sigmoid into [0, 1]."""

    def __init__(self, shape, generator: torch.Generator, device, decay: float = 1.0, sd: float = 0.01,
                 decorrelate: bool = True):
        b, c, h, w = shape
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = (fy.pow(2) + fx.pow(2)).sqrt()
        # 1/f, with the constant term scaled like the lowest non-zero frequency
        self.scale = (1.0 / freq.clamp_min(1.0 / max(h, w)).pow(decay)).to(device)
        self.size = (h, w)
        self.decorrelate = decorrelate
        spec = torch.randn((b, c, h, w // 2 + 1, 2), generator=generator) * sd
        self.spec = spec.to(device).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.spec]

    def image(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spec) * self.scale
        t = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        if self.decorrelate:
            t = _color(t)
        return torch.sigmoid(t)

    def project(self) -> None:
        pass


def _color(t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    m = torch.as_tensor(COLOR_SQRT_COV, device=t.device)
    m = m / m.norm(dim=0).max()  # strongest component has unit norm
    if inverse:
        m = torch.linalg.inv(m)
    return torch.einsum("ij,bjhw->bihw", m, t)


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-3, 1 - 1e-3)
    return torch.log(x) - torch.log1p(-x)


def make_param(param, shape, mean, gen, dev, decorrelate: bool, init: torch.Tensor | None, decay: float):
    """The image parameterization named by `param` ("fourier" or "pixel"), or `param` itself when it
    is an object of the `ImageParam` protocol (its image must have `shape`)."""
    if not isinstance(param, str):
        if not isinstance(param, ImageParam):
            raise ParameterError(f"param must be 'fourier', 'pixel' or an object with parameters(), image() and "
                                 f"project(); got {type(param).__name__}")
        if init is not None:
            raise ParameterError("a start image needs the pixel parameterization (param='pixel')")
        got = tuple(param.image().shape)
        if got != tuple(shape):
            raise ParameterError(f"the custom parameterization draws images of shape {got}, but the batch needs "
                                 f"{tuple(shape)}")
        return param
    if param == "fourier":
        if init is not None:
            raise ParameterError("a start image needs the pixel parameterization (param='pixel')")
        return FourierImage(shape, gen, dev, decay=decay, decorrelate=decorrelate)
    if param == "pixel":
        return PixelImage(shape, mean, gen, dev, init=init, decorrelate=decorrelate)
    raise ParameterError(f"unknown parameterization {param!r}; use fourier or pixel")
