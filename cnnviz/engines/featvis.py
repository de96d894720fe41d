"""Feature visualization: ask the network to draw what a unit, a class or a layer wants.

Pixels (or a parameterization of them) are changed by gradient ascent on an objective computed
from the network's activations:

- objectives (`channel`, `neuron`, `class_logit`, `class_prob`, `dream`, `match`, and the image
  priors `total_variation`, `alpha_norm`) return one value per image of the batch, and combine
  with + - * /, so one batch can hold several units (`channel(layer, [0, 1, 2, 3])`: image i drives
  unit i) or a weighted mix;
- parameterizations: plain pixels, or a Fourier spectrum scaled like 1/f with decorrelated colour
  (Olah et al. 2017), either optionally through a sigmoid;
- transformation robustness: every step sees the image padded, shifted, scaled and rotated by
  amounts drawn afresh for each image and step;
- Yosinski et al. (2015): L2 decay, Gaussian blur every few steps, clipping of pixels with a small
  norm; Mahendran & Vedaldi (2015): total variation and alpha-norm;
- DeepDream (`deep_dream`): octaves, random jitter, gradient steps normalized by their mean size;
- inversion (`invert`): reconstruct an image from its representation at one or more layers.

All randomness comes from one seeded generator, so a seed gives the same image, bit for bit, on
the same device, number of CPU threads and library versions (a different thread count changes the
rounding of the convolutions: images then differ by a grey level here and there). The model is left exactly as it was: no gradients accumulate in its
parameters, its hooks are removed, its training flags and device are restored, also on error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LayerError, ParameterError
from ..geometry import CropGeometry, params_of, stack_thumbnails, thumbnail
from ..layers import LayerInfo, StopForward, record, resolve_layer
from ..models import LoadedModel
from ..results import FeatvisResult, provenance
from .common import autocast, batch_memory_format, model_on_device, progress_bar, resolve_device

# Square root of the RGB covariance of natural images, U * sqrt(S) from the eigendecomposition of
# the covariance of pixel values in [0, 1] over the 500 photos of the ImageNet sample
# (../shared/data/imagenet-sample, every 7th pixel; columns: decorrelated components, strongest
# first). Multiplying independent noise by it gives noise with the colour statistics of photos.
COLOR_SQRT_COV = np.array([[0.2546, -0.0884, 0.0265],
                           [0.2610, -0.0033, -0.0509],
                           [0.2648, 0.0882, 0.0247]], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Objectives

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
    n, c = act.shape[:2]
    units = [unit] if isinstance(unit, int) else unit
    bad = [u for u in units if not 0 <= u < c]
    if bad:
        raise ParameterError(f"unit {bad[0]} is out of range: the layer has channels 0..{c - 1}")
    if isinstance(unit, int):
        return act[:, unit]
    if len(unit) != n:
        raise ParameterError(f"{len(unit)} units for a batch of {n} images; give one unit per image")
    return act[torch.arange(n, device=act.device), torch.tensor(unit, device=act.device)]


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
    n, k = logits.shape
    classes = [cls] if isinstance(cls, int) else cls
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ParameterError(f"class {bad[0]} is out of range: the model has classes 0..{k - 1}")
    if isinstance(cls, int):
        return logits[:, cls]
    if len(cls) != n:
        raise ParameterError(f"{len(cls)} classes for a batch of {n} images; give one class per image")
    return logits[torch.arange(n, device=logits.device), torch.tensor(cls, device=logits.device)]


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


# --------------------------------------------------------------------------------------------------
# Parameterizations

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


# --------------------------------------------------------------------------------------------------
# Transformation robustness

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


# --------------------------------------------------------------------------------------------------
# Regularizers of Yosinski et al. 2015 (pixel parameterization)

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


# --------------------------------------------------------------------------------------------------
# Running the model with recorded layers

class _Runner:
    """Evaluates an objective on a batch of images in [0, 1]."""

    def __init__(self, lm: LoadedModel, objective: Objective, example: torch.Tensor, device, amp: bool):
        self.lm = lm
        self.objective = objective
        self.device = device
        self.amp = amp
        self.infos = [resolve_layer(lm.model, a, example) for a in objective.layers]
        self.needs_logits = objective.logits
        p = lm.preprocessing
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.memory_format = torch.contiguous_format

    def setup_memory_format(self, model, x: torch.Tensor) -> None:
        self.memory_format = batch_memory_format(model, ((x[:1] - self.mean) / self.std).detach())

    def __call__(self, model, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        inp = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        logits = None
        with record(model, self.infos, stop=not self.needs_logits) as store, autocast(self.device, self.amp):
            try:
                out = model(inp)
                if self.needs_logits:
                    logits = out if isinstance(out, torch.Tensor) else out[0]
            except StopForward:
                pass
            acts = dict(store)
        return self.objective(Context(acts, logits, image))


# --------------------------------------------------------------------------------------------------
# The optimization loop

def _make_param(param: str, shape, mean, gen, dev, decorrelate: bool, init: torch.Tensor | None, decay: float):
    if param == "fourier":
        if init is not None:
            raise ParameterError("a start image needs the pixel parameterization (param='pixel')")
        return FourierImage(shape, gen, dev, decay=decay, decorrelate=decorrelate)
    if param == "pixel":
        return PixelImage(shape, mean, gen, dev, init=init, decorrelate=decorrelate)
    raise ParameterError(f"unknown parameterization {param!r}; use fourier or pixel")


def _optimize(lm: LoadedModel, objective: Objective, *, batch: int, size: tuple[int, int], steps: int, param: str,
              decorrelate: bool, transforms: Transforms, lr: float, regularizers: Regularizers,
              init: torch.Tensor | None, seed: int, log_every: int, device, amp: bool | None, progress,
              decay: float = 1.0, desc: str = "featvis"):
    """Gradient ascent with Adam on `objective`. Returns images (B x 3 x H x W in [0, 1], CPU), the
    logged steps, the objective per image at each logged step (step 0, the starting image, and the
    last step, the final image, untransformed; the steps between as seen through that step's random
    transforms) and the objective of the final image untransformed."""
    if steps < 1:
        raise ParameterError(f"steps {steps!r} must be at least 1")
    if lr <= 0:
        raise ParameterError(f"learning rate {lr!r} must be positive")
    if log_every < 1:
        raise ParameterError(f"log_every {log_every!r} must be at least 1")
    regularizers.check()
    if regularizers.active and (param != "pixel" or decorrelate):
        raise ParameterError("l2 decay, blur and clipping act on plain pixels: use param='pixel' without decorrelation")
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else amp
    gen = torch.Generator().manual_seed(int(seed))
    h, w = size
    mean = torch.tensor(lm.preprocessing.mean, dtype=torch.float32)
    example = lm.preprocessing.normalize(np.full((h, w, 3), 128, np.uint8))
    runner = _Runner(lm, objective, example, dev, amp)
    with torch.inference_mode(False), torch.enable_grad(), model_on_device(lm.model, dev) as model:
        image_param = _make_param(param, (batch, 3, h, w), mean, gen, dev, decorrelate, init, decay)
        opt = torch.optim.Adam(image_param.parameters(), lr=lr)
        runner.setup_memory_format(model, image_param.image())
        logged_steps, history = [], []
        with torch.no_grad():
            img0 = image_param.image()
            logged_steps.append(0)
            history.append(runner(model, img0, img0).detach().float().cpu())
        with progress_bar(steps, desc, progress, unit="step") as bar:
            for step in range(steps):
                img = image_param.image()
                x = transforms.apply(img, gen)
                values = runner(model, x, img)
                if step and step % log_every == 0:  # the image after `step` updates
                    logged_steps.append(step)
                    history.append(values.detach().float().cpu())
                loss = -values.sum()
                grads = torch.autograd.grad(loss, image_param.parameters())
                for p, g in zip(image_param.parameters(), grads):
                    p.grad = g
                opt.step()
                image_param.project()
                if regularizers.active:
                    regularizers.apply(image_param.p, step)
                    image_param.project()
                bar.update(1)
        with torch.no_grad():
            final_img = image_param.image().detach()
            final = runner(model, final_img, final_img).detach().float().cpu()
        logged_steps.append(steps)
        history.append(final)
    for p in image_param.parameters():
        p.grad = None
    return (final_img.float().cpu(), np.array(logged_steps, np.int32),
            torch.stack(history).numpy().astype(np.float32), final.numpy().astype(np.float32))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _size_arg(lm: LoadedModel, size) -> tuple[int, int]:
    if size is None:
        return tuple(lm.input_size)
    if isinstance(size, (tuple, list)):
        h, w = (int(v) for v in size)
    else:
        h = w = int(size)
    if min(h, w) < 16 or max(h, w) > 4096:
        raise ParameterError(f"image size {size!r} must be between 16 and 4096 pixels")
    return h, w


PRIORS = ("full", "none")


def _prior_settings(priors: str, param, decorrelate, transforms):
    """`full`: Fourier, decorrelated colour, standard transforms; `none`: plain pixels, no
    transforms. Explicit param / decorrelate / transforms override."""
    if priors not in PRIORS:
        raise ParameterError(f"unknown priors {priors!r}; use full or none")
    full = priors == "full"
    param = param or ("fourier" if full else "pixel")
    decorrelate = (param == "fourier" and full) if decorrelate is None else decorrelate
    transforms = Transforms.parse(transforms if transforms is not None else ("standard" if full else "none"))
    return param, decorrelate, transforms


def _common_params(**kw) -> dict:
    out = {}
    for k, v in kw.items():
        if isinstance(v, Transforms):
            v = v.describe()
        elif isinstance(v, Regularizers):
            v = dataclasses.asdict(v)
        out[k] = v
    return out


def _unit_layer(lm: LoadedModel, layer: str, size) -> LayerInfo:
    example = lm.preprocessing.normalize(np.full((*size, 3), 128, np.uint8))
    info = resolve_layer(lm.model, layer, example)
    if info.shape is None or len(info.shape) not in (1, 3):
        raise LayerError(f"layer {layer!r} outputs {info.shape}; feature visualization needs CxHxW maps or a vector")
    return info


def visualize(lm: LoadedModel, objective: Objective, *, batch: int = 1, size=None, steps: int = 256,
              priors: str = "full", param: str | None = None, decorrelate: bool | None = None,
              transforms: str | Transforms | None = None, lr: float = 0.05, l2_decay: float = 0.0,
              blur_every: int = 0, blur_sigma: float = 0.5, clip_percentile: float = 0.0,
              seed: int = 0, log_every: int = 8, device: str = "auto", amp: bool | None = None,
              progress: bool | None = None, labels: Sequence[str] | None = None, mode: str = "custom") -> FeatvisResult:
    """Optimize `batch` images of `size` (default: the model's input size) to maximize `objective`.

    priors: "full" (Fourier spectrum with 1/f scaling, decorrelated colour, random pad, jitter, scale
    and rotation every step) or "none" (plain pixels, no transforms); `param`, `decorrelate` and
    `transforms` override parts. l2_decay, blur_every/blur_sigma and clip_percentile are Yosinski's
    regularizers (pixel parameterization). Adam with learning rate `lr`.
    """
    if not isinstance(objective, Objective):
        raise ParameterError(f"objective must be built with cnnviz.featvis functions (channel, class_logit, ...), "
                             f"got {type(objective).__name__}")
    if batch < 1:
        raise ParameterError(f"batch {batch!r} must be at least 1")
    hw = _size_arg(lm, size)
    param, decorrelate, tf = _prior_settings(priors, param, decorrelate, transforms)
    regs = Regularizers(l2_decay, blur_every, blur_sigma, clip_percentile)
    dev = resolve_device(device)
    images, logged, history, final = _optimize(
        lm, objective, batch=batch, size=hw, steps=steps, param=param, decorrelate=decorrelate, transforms=tf,
        lr=lr, regularizers=regs, init=None, seed=seed, log_every=log_every, device=dev, amp=amp,
        progress=progress)
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(batch)]
    params = _common_params(mode=mode, objective=objective.description, batch=batch, size=list(hw), steps=steps,
                            priors=priors, param=param, decorrelate=decorrelate, transforms=tf, lr=lr,
                            regularizers=regs, seed=seed, log_every=log_every, amp=bool(amp and dev.type == "cuda"),
                            score_label="objective")
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(images),
                         labels=np.array(labels), objective=final, score=final.copy(), history=history,
                         history_steps=logged, start=np.zeros((0, 0, 3), np.uint8))


def _no_override(options: dict) -> None:
    for key in ("labels", "mode", "batch"):
        if key in options:
            raise ParameterError(f"{key}= is set by this function; call featvis.visualize for a custom {key}")


def _default_batch(lm: LoadedModel, n: int, options: dict) -> int:
    """All `n` images in one batch, unless the device's free memory says fewer (cnnviz.batching).
    Not chosen by timing: chunk k is seeded with seed + k, so the chunking is part of the result
    and must be one size throughout; the size used is recorded and reproduces it."""
    from ..batching import memory_limit
    from ..layers import trace_layers

    dev = resolve_device(options.get("device", "auto"))
    hw = _size_arg(lm, options.get("size"))
    example = torch.zeros(1, 3, *hw)
    # forward activations, their gradients and the optimizer's copies: about 3x the layer outputs
    per_image = 3 * 4 * sum(int(np.prod(i.shape)) for i in trace_layers(lm.model, example) if i.shape)
    return memory_limit(dev, per_image, n)


def _in_batches(n: int, batch_size: int | None, seed: int, run, default: int | None = None) -> FeatvisResult:
    """Call run(start, stop, seed) for consecutive slices of at most `batch_size` images (chunk k
    seeded with seed + k) and join the results into one. `batch_size` None: `default` (or n)."""
    if batch_size is None:
        batch_size = default or n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size {batch_size!r} must be a positive whole number of images")
    parts = [run(start, min(n, start + batch_size), seed + k) for k, start in enumerate(range(0, n, batch_size))]
    res = parts[0]
    if len(parts) > 1:
        res.images = np.concatenate([r.images for r in parts])
        res.labels = np.concatenate([r.labels for r in parts])
        res.objective = np.concatenate([r.objective for r in parts])
        res.score = np.concatenate([r.score for r in parts])
        res.history = np.concatenate([r.history for r in parts], axis=1)
    res.params.update(batch=n, batch_size=int(batch_size), seed=seed,
                      seeds=[seed + k for k in range(len(parts))])
    return res


def visualize_units(lm: LoadedModel, layer: str, units="0:8", *, neuron_centre: bool = False,
                    batch_size: int | None = None, **options) -> FeatvisResult:
    """One image per unit of `layer`, optimized together in one batch (or in batches of at most
    `batch_size` images, the k-th seeded with seed + k): the mean of each unit's feature map (or,
    with `neuron_centre`, its activation at the centre of the map). Options as `visualize`."""
    _no_override(options)
    hw = _size_arg(lm, options.get("size"))
    info = _unit_layer(lm, layer, hw)
    units = parse_units(units, info.shape[0])
    if neuron_centre and len(info.shape) != 3:
        raise ParameterError(f"layer {layer!r} has no spatial maps; drop the neuron option")
    make = neuron if neuron_centre else channel
    seed = options.pop("seed", 0)

    def run(a, b, chunk_seed):
        part = units[a:b]
        return visualize(lm, make(info.address, part), batch=len(part), labels=[f"unit {u}" for u in part],
                         mode="units", seed=chunk_seed, **options)

    res = _in_batches(len(units), batch_size, seed, run,
                      None if batch_size is not None else _default_batch(lm, len(units), options))
    res.params.update(objective=make(info.address, units).description, layer=info.address, units=units, unit_kind="neuron" if neuron_centre else "channel",
                      score_label="centre activation" if neuron_centre else "mean activation")
    return res


def visualize_classes(lm: LoadedModel, targets, *, prob: bool = False, batch_size: int | None = None,
                      **options) -> FeatvisResult:
    """Class models (Simonyan et al. 2014): one image per class maximizing its logit (or, with
    `prob`, its softmax probability). `targets`: class indices or names. The result's score is the
    probability the model gives each image for its class. `batch_size` as in `visualize_units`."""
    _no_override(options)
    if isinstance(targets, (str, int, np.integer)):
        targets = [targets]
    classes = [lm.class_index(t) for t in targets]
    if not classes:
        raise ParameterError("no classes given")
    make = class_prob if prob else class_logit
    seed = options.pop("seed", 0)

    def run(a, b, chunk_seed):
        part = classes[a:b]
        return visualize(lm, make(part), batch=len(part), labels=[lm.class_name(c) for c in part], mode="class",
                         seed=chunk_seed, **options)

    res = _in_batches(len(classes), batch_size, seed, run,
                      None if batch_size is not None else _default_batch(lm, len(classes), options))
    res.params["objective"] = make(classes).description
    x = lm.preprocessing.normalize(res.images)
    dev = resolve_device(options.get("device", "auto"))
    step = res.params["batch_size"]
    with torch.inference_mode(), model_on_device(lm.model, dev) as m:
        probs = torch.cat([torch.softmax(m(x[i:i + step].to(dev)).float(), 1).cpu()
                           for i in range(0, len(x), step)])
    res.score = probs[torch.arange(len(classes)), torch.tensor(classes)].numpy().astype(np.float32)
    res.params.update(classes=classes, score_label="probability", objective_kind="prob" if prob else "logit",
                      top1=[int(i) for i in probs.argmax(1)])
    return res


def _load_pixels(lm: LoadedModel, image, size: int | None, geometry: bool = False):
    """The whole image (not cropped) with its shorter side resized to `size` (default: the
    model's input size), as uint8 H x W x 3; with `geometry`, also its `CropGeometry` (a resize,
    no crop) carrying a downscaled copy of the image."""
    from PIL import Image

    from ..images import load_image, to_rgb

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ParameterError(f"pixel array must be uint8 HxWx3, got {image.dtype} {'x'.join(map(str, image.shape))}")
        img = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        img = to_rgb(image)
    else:
        img = load_image(image)
    short = size or min(lm.input_size)
    if short < 16 or short > 4096:
        raise ParameterError(f"size {short!r} must be between 16 and 4096 pixels")
    w, h = img.size
    s = short / min(w, h)
    resized = img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8).copy()
    if not geometry:
        return pixels
    size_hw = tuple(pixels.shape[:2])
    source = "pixels" if isinstance(image, np.ndarray) else "pil" if isinstance(image, Image.Image) else "file"
    return pixels, CropGeometry((h, w), size_hw, (0, 0), size_hw, source, thumbnail(img))


def deep_dream(lm: LoadedModel, image, layer: str, *, size: int | None = None, octaves: int = 4,
               octave_scale: float = 1.4, steps: int = 10, step_size: float = 0.01, jitter: int = 32,
               seed: int = 0, device: str = "auto", amp: bool | None = None, progress: bool | None = None) -> FeatvisResult:
    """DeepDream (Mordvintsev et al. 2015): starting from `image`, climb the squared activations of
    `layer` over an image pyramid of `octaves` levels (each `octave_scale` smaller), `steps` steps
    per octave; each step rolls the image by a random shift of up to `jitter` pixels and moves it
    by `step_size` (in [0, 1] pixel units) along the gradient divided by its mean absolute value."""
    if octaves < 1 or octave_scale <= 1.0:
        raise ParameterError(f"octaves {octaves!r} must be >= 1 and octave_scale {octave_scale!r} > 1")
    if steps < 1 or step_size <= 0 or jitter < 0:
        raise ParameterError("steps must be >= 1, step_size > 0 and jitter >= 0")
    pixels, geo = _load_pixels(lm, image, size, geometry=True)
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else amp
    base = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    h, w = base.shape[-2:]
    example = lm.preprocessing.normalize(np.full((h, w, 3), 128, np.uint8))
    info = _unit_layer(lm, layer, (h, w))
    if len(info.shape) != 3:
        raise LayerError(f"DeepDream needs a layer with feature maps; {layer!r} outputs {info.shape}")
    objective = dream(info.address)
    runner = _Runner(lm, objective, example, dev, amp)
    gen = torch.Generator().manual_seed(int(seed))
    pyramid = [base]
    for _ in range(octaves - 1):
        ph, pw = pyramid[-1].shape[-2:]
        nh, nw = max(16, round(ph / octave_scale)), max(16, round(pw / octave_scale))
        pyramid.append(F.interpolate(pyramid[-1], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True))
    logged, history = [], []
    total = 0
    with torch.inference_mode(False), torch.enable_grad(), model_on_device(lm.model, dev) as model:
        runner.setup_memory_format(model, base.to(dev))
        detail = torch.zeros_like(pyramid[-1]).to(dev)
        with progress_bar(octaves * steps, "dream", progress, unit="step") as bar:
            for level in reversed(range(octaves)):
                octave_base = pyramid[level].to(dev)
                if detail.shape[-2:] != octave_base.shape[-2:]:
                    detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="bilinear", align_corners=False)
                x = (octave_base + detail).clamp(0, 1)
                for _ in range(steps):
                    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen)) if jitter else (0, 0)
                    xs = torch.roll(x, (dy, dx), (2, 3)).detach().requires_grad_(True)
                    value = runner(model, xs, xs)
                    (g,) = torch.autograd.grad(value.sum(), xs)
                    logged.append(total)  # the image after `total` steps (jittered)
                    history.append(value.detach().float().cpu())
                    g = torch.roll(g, (-dy, -dx), (2, 3))
                    x = (x + step_size * g / g.abs().mean().clamp_min(1e-12)).clamp(0, 1).detach()
                    total += 1
                    bar.update(1)
                detail = x - octave_base
        with torch.no_grad():
            start_value = runner(model, base.to(dev), base.to(dev)).float().cpu()
            final = runner(model, x, x).float().cpu()
        logged.append(total)
        history.append(final)
    params = _common_params(mode="dream", layer=info.address, objective=objective.description, size=[h, w],
                            octaves=octaves, octave_scale=octave_scale, steps=steps, step_size=step_size,
                            jitter=jitter, seed=seed, amp=bool(amp and dev.type == "cuda"),
                            start_objective=float(start_value[0]), score_label="mean squared activation",
                            geometry=params_of([geo]))
    final_np = final.numpy().astype(np.float32)
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(x.cpu()),
                         labels=np.array([f"dream({info.address})"]), objective=final_np, score=final_np.copy(),
                         history=torch.stack(history).numpy().astype(np.float32),
                         history_steps=np.array(logged, np.int32), start=pixels, original=stack_thumbnails([geo]))


def invert(lm: LoadedModel, image, layers: str | Sequence[str], *, steps: int = 300, priors: str = "full",
           param: str | None = None, decorrelate: bool | None = None, transforms: str | Transforms | None = None,
           lr: float | None = None, tv: float = 2.0, beta: float = 2.0, alpha: float = 6.0, alpha_weight: float = 0.1,
           seed: int = 0, log_every: int = 8, device: str = "auto", amp: bool | None = None,
           progress: bool | None = None) -> FeatvisResult:
    """Reconstruct `image` (its input crop) from its representation at each of `layers`
    (Mahendran & Vedaldi 2015): one image per layer, all in one batch, each minimizing its layer's
    relative squared distance to the original's, plus `tv` x total variation (power `beta`) and
    `alpha_weight` x alpha-norm (power `alpha`). Starts from seeded noise. priors: "full" (Fourier
    parameterization with decorrelated colour, jitter of 4 pixels, TV and alpha-norm) or "none"
    (plain pixels, no jitter, no TV, no alpha-norm). On efficientnet_lite0 the full priors reach
    lower feature distances from deep layers than plain pixels with TV (0.17 against 0.34-0.50 from
    _blocks.15 after 150 steps) with a fraction of the high-frequency noise.

    The result's score is the relative feature distance of each reconstruction (0: identical);
    params["start_distance"] has the starting noise's."""
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s.strip()]
    layers = list(layers)
    if not layers:
        raise ParameterError("no layers given to invert")
    if priors not in PRIORS:
        raise ParameterError(f"unknown priors {priors!r}; use full or none")
    if tv < 0 or alpha_weight < 0:
        raise ParameterError("tv and alpha_weight must be >= 0")
    full = priors == "full"
    param = param or ("fourier" if full else "pixel")
    decorrelate = (full and param == "fourier") if decorrelate is None else bool(decorrelate)
    tf = Transforms.parse(transforms if transforms is not None else ("pad=0,jitter=4" if full else "none"))
    if lr is None:
        lr = 0.02 if param == "pixel" else 0.05
    pixels, x0, geo = lm.prepare(image, geometry=True)
    hw = tuple(pixels.shape[:2])
    infos = [_unit_layer(lm, a, hw) for a in layers]
    dev = resolve_device(device)
    # target representations
    names = [i.address for i in infos]
    with torch.inference_mode(), model_on_device(lm.model, dev) as model:
        with record(model, infos, stop=True) as store:
            with contextlib.suppress(StopForward):
                model(x0.to(dev))
            targets = {k: v.detach().float().clone() for k, v in store.items()}
    objective = sum(match(name, targets[name], batch=i) for i, name in enumerate(names))
    if full and tv:
        objective = objective + tv * total_variation(beta)
    if full and alpha_weight:
        objective = objective + alpha_weight * alpha_norm(alpha)
    images, logged, history, final = _optimize(
        lm, objective, batch=len(names), size=hw, steps=steps, param=param, decorrelate=decorrelate, transforms=tf,
        lr=lr, regularizers=Regularizers(), init=None, seed=seed, log_every=log_every, device=dev, amp=amp,
        progress=progress, desc="invert")
    distances = feature_distances(lm, images, names, targets, dev)
    # the starting noise, regenerated from the seed
    gen = torch.Generator().manual_seed(int(seed))
    start = _make_param(param, (len(names), 3, *hw), torch.tensor(lm.preprocessing.mean), gen, torch.device("cpu"),
                        decorrelate, None, 1.0).image().detach()
    start_d = feature_distances(lm, start, names, targets, dev)
    params = _common_params(mode="invert", layers=names, objective=objective.description, size=list(hw),
                            steps=steps, priors=priors, param=param, decorrelate=decorrelate, transforms=tf, lr=lr,
                            tv=tv if full else 0.0, beta=beta, alpha=alpha, alpha_weight=alpha_weight if full else 0.0,
                            seed=seed, log_every=log_every, start_distance=[float(v) for v in start_d],
                            score_label="relative feature distance", geometry=params_of([geo]))
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(images),
                         labels=np.array(names), objective=final, score=distances, history=history,
                         history_steps=logged, start=pixels, original=stack_thumbnails([geo]))


def feature_distances(lm: LoadedModel, images: torch.Tensor, names: list[str], targets: dict, device) -> np.ndarray:
    """Relative squared distance ||phi(x_i) - phi0||^2 / ||phi0||^2 of image i at layer names[i]."""
    h, w = images.shape[-2:]
    example = lm.preprocessing.normalize(np.full((h, w, 3), 128, np.uint8))
    infos = [resolve_layer(lm.model, n, example) for n in dict.fromkeys(names)]
    p = lm.preprocessing
    x = (images.float() - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)
    dev = resolve_device(device)
    with torch.inference_mode(), model_on_device(lm.model, dev) as model:
        with record(model, infos, stop=True) as store:
            with contextlib.suppress(StopForward):
                model(x.to(dev))
            acts = {k: v.float() for k, v in store.items()}
        out = []
        for i, n in enumerate(names):
            t = targets[n].to(dev)
            out.append(float((acts[n][i] - t[0]).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)))
    return np.array(out, np.float32)


def high_frequency_share(images: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """Share of each image's spectral power (grayscale, mean removed, Hann-windowed) at radial
    frequencies above `cutoff` cycles per pixel (Nyquist is 0.5). Noise-like images score high,
    photos low (most of their power is below 0.1 cycles/pixel)."""
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim == 3:
        imgs = imgs[None]
    gray = imgs.mean(axis=3) / 255.0
    n, h, w = gray.shape
    gray = gray - gray.mean(axis=(1, 2), keepdims=True)
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2(gray * win)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cutoff
    total = power.sum(axis=(1, 2))
    return (power[:, high].sum(axis=1) / np.maximum(total, 1e-20)).astype(np.float32)
