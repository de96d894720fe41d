"""First-layer filters and feature maps (Zeiler & Fergus 2014, Fig. 6; Krizhevsky et al. 2012, Fig. 3).

`first_layer_filters` reads the weights of the first Conv2d the model runs (found by tracing one
forward pass, so models whose first conv is not `features.0`, like EfficientNet-Lite's `_conv_stem`,
work). `feature_maps` runs one image and keeps a layer's feature maps, ordered strongest first by
each channel's **maximum** activation over positions (a unit's strongest response, the quantity
Zeiler & Fergus select units by), ties (maps saturated at a ReLU6's 6) broken by the mean
activation; the mean is stored too.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ...errors import LayerError, ParameterError
from ...geometry import params_of, stack_thumbnails
from ...layers import capture, default_feature_layer, require_maps, resolve_layer, trace_layers
from ...models import LoadedModel
from ... import schema as S
from ...results import Result, provenance
from ..common import model_on_device, resolve_device

__api__ = ("first_layer_filters", "feature_maps")  # cnnviz.<name> (a literal: see cnnviz/__init__)


@dataclasses.dataclass
class FiltersResult(Result):
    """The weights of a model's first convolution.

    weights: float32 C_out x C_in x kh x kw, exactly the layer's weights.
    bias: float32 C_out (zeros when the layer has no bias; params["has_bias"] says which).
    params["layer"] names the layer.
    """

    kind: ClassVar[str] = "filters"
    renderer: ClassVar = "cnnviz.render.units.filters:filters_figure"
    param_schema: ClassVar[dict] = {"layer": S.TEXT, "kernel": S.PAIR, "in_channels": S.INT}
    array_schema: ClassVar[dict] = {"weights": S.Arr("f", ("C", None, None, None)), "bias": S.Arr("f", ("C",))}
    weights: np.ndarray = None
    bias: np.ndarray = None


@dataclasses.dataclass
class ActivationsResult(Result):
    """One layer's feature maps for one image, strongest first.

    image: uint8 H x W x 3, the model's input crop.
    maps: float32 K x h x w, the feature maps sorted by `strength` (descending).
    channels: int32 K, the original channel index of each map (maps[k] is channel channels[k]).
    strength: float32 K, each map's maximum activation (the sort key); mean: float32 K its mean.
    """

    kind: ClassVar[str] = "activations"
    renderer: ClassVar = "cnnviz.render.units.filters:activations_figure"
    param_schema: ClassVar[dict] = {"layer": S.TEXT, "num_channels": S.INT}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", (None, None, 3)), "maps": S.Arr("f", ("K", None, None)), "channels": S.Arr("iu", ("K",)),
        "strength": S.Arr("f", ("K",)), "mean": S.Arr("f", ("K",))}
    image: np.ndarray = None
    maps: np.ndarray = None
    channels: np.ndarray = None
    strength: np.ndarray = None
    mean: np.ndarray = None


def _example(lm: LoadedModel) -> torch.Tensor:
    h, w = lm.input_size
    p = next(iter(lm.model.parameters()), None)
    return torch.zeros(1, 3, h, w, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)


@takes_model
def first_layer_filters(lm: LoadedModel) -> FiltersResult:
    """The weights of the first Conv2d in execution order (C_out x C_in x kh x kw)."""
    infos = trace_layers(lm.model, _example(lm))
    first = next((i for i in infos if i.is_conv), None)
    if first is None:
        raise LayerError(f"model {lm.name!r} runs no Conv2d layer; it has no convolutional filters to show")
    conv = dict(lm.model.named_modules())[first.name]
    w = conv.weight.detach().float().cpu().numpy().astype(np.float32)
    has_bias = conv.bias is not None
    b = conv.bias.detach().float().cpu().numpy().astype(np.float32) if has_bias else np.zeros(w.shape[0], np.float32)
    params = {"layer": first.name, "layer_type": first.type, "out_channels": int(w.shape[0]),
              "in_channels": int(w.shape[1]), "kernel": [int(w.shape[2]), int(w.shape[3])],
              "stride": list(getattr(conv, "stride", ())), "groups": int(getattr(conv, "groups", 1)),
              "has_bias": has_bias}
    return FiltersResult(params=params, provenance=provenance(lm.identity(), "cpu"), weights=w, bias=b)


@takes_model
def feature_maps(lm: LoadedModel, image, layer: str | None = None, top: int | None = None,
                 device: str = "auto") -> ActivationsResult:
    """The feature maps of `layer` (default: the last convolutional block) for `image` (a path, a
    PIL image or uint8 HxWx3 pixels of the input size), sorted strongest first by maximum
    activation; `top` keeps only that many (default: all)."""
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top <= 0):
        raise ParameterError(f"top must be a positive whole number, got {top!r}")
    dev = resolve_device(device)
    pixels, x, geo = lm.prepare(image, geometry=True)
    start = time.perf_counter()
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        x = x.to(dev)
        info = require_maps(default_feature_layer(model, x) if layer is None else resolve_layer(model, layer, x))
        with capture(model, info) as cap:
            logits = model(x)
        fmap = cap.values[0][0].float().cpu()
    elapsed = time.perf_counter() - start
    flat = fmap.flatten(1)
    strength, mean = flat.max(1).values, flat.mean(1)
    order = torch.argsort(-mean, stable=True)  # ties of the max (saturated ReLU6 maps) go by the mean
    order = order[torch.argsort(-strength[order], stable=True)]
    if top is not None:
        order = order[: int(top)]
    top1 = int(logits.float().argmax(1)[0])
    params = {"layer": info.address, "layer_type": info.type, "layer_shape": list(info.shape),
              "num_channels": int(info.shape[0]), "top": None if top is None else int(top), "sort": "max",
              "top_class": top1, "top_class_name": lm.class_name(top1), "seconds": round(elapsed, 3),
              "geometry": params_of([geo])}
    return ActivationsResult(
        params=params, provenance=provenance(lm.identity(), str(dev)),
        image=np.ascontiguousarray(pixels, dtype=np.uint8), original=stack_thumbnails([geo]),
        maps=fmap[order].numpy().astype(np.float32), channels=order.numpy().astype(np.int32),
        strength=strength[order].numpy().astype(np.float32), mean=mean[order].numpy().astype(np.float32))
