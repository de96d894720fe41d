"""Section 4 of the audit: the most class-selective units of one layer.

During the audit's forward pass a hook on the layer reduces each unit's feature map to its spatial
mean (summed per class: the true class where labels are given, else the predicted one) and its
spatial maximum with position (the top-k images per unit, merged exactly as `cnnviz topk` does).

Class-selectivity index (Morcos et al. 2018): with mu_c the unit's mean activation over the images
of class c, SI = (mu_max - mu_rest) / (mu_max + mu_rest), mu_max the largest class mean and mu_rest
the mean of the other classes' means: 0 when every class drives the unit alike, 1 when only one
class does. The activation averaged is the positive part of the map (a layer without a rectifier,
such as EfficientNet's block outputs, has negative values, which would push SI outside [0, 1]).
Needs two classes or more; NaN otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ...layers import require_maps, resolve_layer
from ..units.topk import TopkResult, empty_state, merge
from .metrics import from_fixed, to_fixed

UNIT_BITS = 24  # fixed-point resolution of the per-class sums of mean activations (exact in any order)


def resolve(lm, layer: str):
    h, w = lm.input_size
    return require_maps(resolve_layer(lm.model, layer, torch.zeros(1, 3, h, w)))


def reduce(t: torch.Tensor):
    """Per image and unit: spatial mean of the positive part, spatial maximum and its (y, x)."""
    t = t.detach().float()
    w = t.shape[3]
    flat = t.flatten(2)
    idx = flat.argmax(2)
    return (flat.clamp(min=0).mean(2).cpu(), flat.gather(2, idx[..., None])[..., 0].cpu(), (idx // w).cpu(), (idx % w).cpu())


def empty(num_classes: int, units: int, k: int) -> dict:
    top = empty_state(units, k)
    return {"unit_class_sum": np.zeros((num_classes, units), np.int64), "unit_top_values": top["values"],
            "unit_top_image": top["image_index"], "unit_top_position": top["position"]}


def update(state: dict, reduced, images: np.ndarray, classes: np.ndarray, k: int) -> None:
    mean, val, ys, xs = (a[: len(images)].numpy() for a in reduced)
    np.add.at(state["unit_class_sum"], classes, to_fixed(mean, UNIT_BITS))
    U = mean.shape[1]
    top = merge({"values": state["unit_top_values"], "image_index": state["unit_top_image"],
                 "position": state["unit_top_position"]},
                val.T, np.broadcast_to(images, (U, len(images))), np.stack([ys.T, xs.T], axis=-1), k)
    state["unit_top_values"], state["unit_top_image"], state["unit_top_position"] = (
        top["values"], top["image_index"], top["position"])


def selectivity(class_sum: np.ndarray, class_count: np.ndarray) -> np.ndarray:
    """Class-selectivity index per unit from per-class activation sums (C x U) and counts (C)."""
    seen = class_count > 0
    if seen.sum() < 2:
        return np.full(class_sum.shape[1], np.nan, np.float32)
    mu = class_sum[seen] / class_count[seen, None]
    top = mu.max(0)
    rest = (mu.sum(0) - top) / (len(mu) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        si = (top - rest) / (top + rest)
    return np.where(np.isfinite(si), si, np.nan).astype(np.float32)


def finish(lm, info, state: dict, class_count: np.ndarray, files: list[str], root, readable_index: np.ndarray,
           classes_of: np.ndarray, show: int, device, crop: str = "auto") -> dict:
    """The arrays of the units section: the `show` most selective units, their top images (index
    into the result's files, -1 empty), values, classes of those images and patches (at the
    receptive field, or where the unit's map is high when the field exceeds the image:
    `cnnviz.engines.units.patches`); and "crop", "crop_kind": how the patches were cut (for params)."""
    from ..units.patches import unit_patches

    si = selectivity(from_fixed(state["unit_class_sum"], UNIT_BITS), class_count)
    order = np.lexsort((np.arange(len(si)), -np.nan_to_num(si, nan=-np.inf)))[:show]
    image = state["unit_top_image"][order]
    empty_slot = image == np.iinfo(np.int64).max
    image = np.where(empty_slot, -1, image)
    topk = TopkResult(params={"layer": info.address, "layer_shape": list(info.shape), "root": str(root)},
                      provenance={}, values=state["unit_top_values"][order], image_index=image,
                      position=state["unit_top_position"][order], units=order.astype(np.int64),
                      files=np.asarray(files, dtype=str), skipped=np.zeros(0, dtype=str))
    patches = unit_patches(lm, topk, project=False, device=str(device), crop=crop)
    remap = -np.ones(len(files), np.int64)
    remap[readable_index] = np.arange(len(readable_index))
    local = np.where(image >= 0, remap[np.maximum(image, 0)], -1)
    top_classes = np.where(local >= 0, classes_of[np.maximum(local, 0)], -1)
    return {"unit_index": order.astype(np.int64), "unit_selectivity": si.astype(np.float32),
            "unit_top_files": local.astype(np.int64), "unit_top_values": topk.values.astype(np.float32),
            "unit_top_classes": top_classes.astype(np.int64), "unit_patches": patches.patches,
            "crop": patches.params["crop_rule"], "crop_kind": patches.params["crop"]}
