"""The effective receptive field (Luo et al. 2016): how much each input pixel moves the central
unit of a layer, against the theoretical receptive field of `receptive_field`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import ModelError
from ...layers import eval_mode
from .theory import receptive_fields

__api__ = ("effective_receptive_field",)  # cnnviz.<name> (a literal: see cnnviz/__init__)


@dataclass
class EffectiveRF:
    """|d unit / d input| of the central unit of a layer, summed over colour channels and averaged
    over images (`map`, H x W), the unit (i, j), its theoretical region (`box`: (row0, row1),
    (col0, col1)), and `size` (height, width): the central extent holding `mass` of the map's total
    along each axis (from the (1-mass)/2 to the (1+mass)/2 quantile of its marginal)."""

    address: str
    unit: tuple[int, int]
    map: np.ndarray
    box: tuple[tuple[int, int], tuple[int, int]]
    size: tuple[int, int]
    mass: float


def _extent(marginal: np.ndarray, mass: float) -> int:
    c = np.cumsum(marginal)
    if c[-1] <= 0:
        return 0
    c = c / c[-1]
    lo = int(np.searchsorted(c, (1 - mass) / 2, side="left"))
    hi = int(np.searchsorted(c, (1 + mass) / 2, side="left"))
    return hi - lo + 1


def effective_receptive_field(model: nn.Module, address: str, images: torch.Tensor,
                              mass: float = 0.95) -> EffectiveRF:
    """Effective RF of the central unit of layer `address` (as listed by `receptive_fields`) for a
    batch of input images (N x C x H x W, already normalized). The gradient of the unit (all
    channels summed) is taken for each image; the model is left as it was (eval mode for the
    pass, no parameter gradients kept)."""
    from ...layers import capture, resolve_layer

    h, w = images.shape[-2:]
    infos = {i.address: i for i in receptive_fields(model, (h, w), channels=images.shape[1])}
    info = infos.get(address)
    if info is None:
        resolve_layer(model, address, images[:1])  # raises with the closest names
        raise ModelError(f"layer {address!r} has no output tensor")
    if info.rf is None:
        raise ModelError(f"layer {address!r} has no spatial output, hence no receptive field")
    layer = resolve_layer(model, address, images[:1])
    oh, ow = info.shape[-2:]
    i, j = oh // 2, ow // 2
    x = images.detach().clone().requires_grad_(True)
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with eval_mode(model), capture(model, layer, reduce=lambda t: t) as cap:
            model(x)
        out = cap.values[0]
        out[:, :, i, j].sum().backward()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    g = x.grad.abs().sum(1).mean(0).double().cpu().numpy()
    size = (_extent(g.sum(1), mass), _extent(g.sum(0), mass))
    return EffectiveRF(address, (i, j), g.astype(np.float32), info.interval(i, j), size, mass)
