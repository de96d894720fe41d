"""Measures of feature-visualization images: feature distances (inversion) and the share of
high-frequency power (how noise-like an image is)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ...layers import StopForward, record, resolve_layer
from ...models import LoadedModel
from ..common import model_on_device, resolve_device

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
