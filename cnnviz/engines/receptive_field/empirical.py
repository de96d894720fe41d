"""Empirical receptive field (Zhou et al. 2015, "Object Detectors Emerge in Deep Scene CNNs",
Sec. 3.2).

For each of a unit's images: find the position (i, j) of the unit's maximum on the unoccluded
image; slide a small gray occluder around that unit's theoretical receptive field and record, for
every occluder position, the discrepancy |a - a_occluded| of the unit's activation at (i, j). The
occluder positions form a lattice centred on the unit's theoretical RF centre, so every image's map
is already *aligned* on the unit: entry (t, u) of every map is the occluder at offset
(t*stride, u*stride) pixels from the unit's RF centre. Each map is divided by its peak (every image
weighs the same) and the maps are averaged. The measured size, per axis, is the extent of the
occluder centres where the averaged map reaches `threshold` of its peak, minus (occluder - 1): an
occluder overlaps a region of width r for r + occluder - 1 centre positions, so this undoes the
occluder's own width. Sampled on a lattice of step `stride`, the estimate errs low by < 2*stride.

The forward pass stops at the layer (nothing after it runs), so early layers are cheap.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...bare import takes_model
from ...errors import ImageError, LayerError, ParameterError
from ...layers import capture, require_maps, resolve_layer
from ..common import default_batch_size, model_on_device, resolve_device
from ..occlusion.engine import occluded_batch
from .theory import RFInfo, receptive_fields

__api__ = ("empirical_receptive_field",)  # cnnviz.<name> (a literal: see cnnviz/__init__)


@dataclass
class EmpiricalRF:
    """The empirical RF of unit `channel` of layer `address`.

    map: averaged aligned discrepancy (T x U, peak 1), entry (t, u) for the occluder centred at
      `offsets_y[t]`, `offsets_x[u]` pixels from the unit's RF centre; NaN where no image had an
      occluder there that touched the image.
    maps: per image, the raw discrepancies |a - a_occluded| (N x T x U; NaN off the image).
    units: (i, j) per image: the unit's position (its maximum on the unoccluded image).
    activations: the unit's activation there, per image.
    size: (height, width) in input pixels: see the module docstring; `threshold` is the level.
    theoretical: the layer's RFInfo (rf, stride, padding).
    files: the images used, in order; seconds: time taken.
    """

    address: str
    channel: int
    map: np.ndarray
    maps: np.ndarray
    offsets_y: np.ndarray
    offsets_x: np.ndarray
    units: list
    activations: np.ndarray
    size: tuple[int, int]
    threshold: float
    occluder: int
    stride: int
    theoretical: RFInfo
    files: list = field(default_factory=list)
    seconds: float = 0.0
    cropped: int = 0  # images run on a crop (see `crop`)
    bounds: tuple | None = None  # ((y0, y1), (x0, x1)): where the measured region lies, px from the RF centre

    def centre(self, i: int, j: int) -> tuple[float, float]:
        """Input-pixel centre (row, column) of unit (i, j)'s theoretical RF."""
        (r0, r1), (c0, c1) = self.theoretical.interval(i, j)
        return (r0 + r1) / 2.0, (c0 + c1) / 2.0


class _Stop(Exception):
    def __init__(self, value):
        super().__init__("stop")
        self.value = value


def _forward_to(model, info, x, reduce):
    """Run `model` on `x` only as far as layer `info`; return reduce(its output)."""
    def stop(t):
        raise _Stop(reduce(t))

    try:
        with capture(model, info, reduce=stop):
            model(x)
    except _Stop as s:
        return s.value
    raise LayerError(f"layer {info.address!r} did not run in the forward pass")


def _as_inputs(lm, images, skipped: list | None = None):
    """(normalized N x 3 x H x W tensor, names) from a tensor, or a list of paths / PIL images.

    Of several images, an unreadable file is skipped and (name, reason) appended to `skipped` (a
    warning lists them when no list is given); when none can be read, ImageError says so with the
    first reasons. A single image that cannot be read raises its own error.
    """
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.shape[1] != 3:
            raise ParameterError(f"image tensor must be N x 3 x H x W, got {tuple(images.shape)}")
        return x.float(), [f"image {k}" for k in range(len(x))]
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__len__"):
        images = [images]
    if len(images) == 0:
        raise ImageError("no images given")
    xs, names, bad = [], [], []
    for img in images:
        name = str(img) if not hasattr(img, "size") or isinstance(img, (str, bytes)) else "PIL image"
        try:
            _, x = lm.prepare(img)
        except ImageError as e:
            if len(images) == 1:
                raise
            bad.append((name, " ".join(str(e).split())))
            continue
        xs.append(x)
        names.append(name)
    if bad:
        if not xs:
            reasons = " | ".join(why for _, why in bad[:3]) + (f" | and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise ImageError(f"no image could be read: all {len(bad)} file(s) are unreadable ({reasons}); check the "
                             "files or point to another folder")
        if skipped is not None:
            skipped.extend(bad)
        else:
            import warnings

            warnings.warn(f"skipped {len(bad)} unreadable image(s): " + "; ".join(why for _, why in bad), stacklevel=3)
    return torch.cat(xs), names


def select_images(lm, layer: str, images, channel: int | None = None, max_images: int | None = None,
                  device: str = "auto", batch_size: int | None = None, skipped: list | None = None):
    """(normalized tensor of the chosen images, their names, channel): the channel defaults to the
    one with the largest mean activation over all `images`; the images kept are the `max_images`
    on which that channel's maximum is largest (all, ranked, when None). Unreadable files among
    several are skipped, (name, reason) appended to `skipped`; none readable raises ImageError."""
    dev = resolve_device(device)
    batch_size = int(batch_size or 2 * default_batch_size(dev))
    x_all, names = _as_inputs(lm, images, skipped)
    info = require_maps(resolve_layer(lm.model, layer, x_all[:1]))
    nc = info.shape[0]
    if channel is not None and not (isinstance(channel, (int, np.integer)) and 0 <= channel < nc):
        raise LayerError(f"channel {channel!r} is out of range: layer {info.address!r} has channels 0..{nc - 1}")
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        fmaps = torch.cat([_forward_to(model, info, x_all[a:a + batch_size].to(dev), lambda t: t.float().cpu())
                           for a in range(0, len(x_all), batch_size)])
    if channel is None:
        channel = int(fmaps.mean(dim=(0, 2, 3)).argmax())
    order = torch.argsort(fmaps[:, int(channel)].flatten(1).max(1).values, descending=True)[:max_images]
    order = [int(o) for o in order]
    return x_all[order], [names[o] for o in order], int(channel)


def default_occluder(rf: int) -> tuple[int, int]:
    """(occluder, stride) for a unit of RF size `rf`: Zhou et al.'s 11 px at stride 3 for RFs of 66 px
    or more; smaller (odd, about rf/6, at least 3) for smaller RFs so it can resolve them, with the
    stride about a third of it."""
    k = int(min(11, max(3, round(rf / 6))))
    k += 1 - k % 2
    return k, max(1, k // 3)


@takes_model
def empirical_receptive_field(lm, layer: str, channel: int | None, images, occluder: int | None = None,
                              stride: int | None = None, batch_size: int | None = None, device: str = "auto",
                              fill="mean", threshold: float = 0.1, margin: int | None = None,
                              max_images: int | None = None, crop: bool = True,
                              names: list | None = None) -> EmpiricalRF:
    """Empirical RF of unit `channel` of `layer` (None: the channel with the largest mean
    activation over the images) of LoadedModel `lm`, over `images` (paths, PIL images, or a
    normalized N x 3 x H x W tensor). With `max_images`, only the images on which the unit's
    maximum is largest are kept (its top-activating images).

    occluder, stride: square occluder side and lattice step in pixels (default `default_occluder`).
    margin: pixels beyond the theoretical RF the occluder is also moved through (default: one
      occluder width), where the discrepancy must be zero.
    fill: occluder colour, as in `occlusion` (default the dataset mean: gray).
    threshold: the level, as a fraction of the averaged map's peak, that defines the size.
    crop: run the occluded copies on a crop of the image that holds the whole occluder lattice
      (the unit's RF and the margin), aligned to the layer's stride: the unit's value is then the
      same as on the full image, which is checked per image (the full image is used where it is
      not). Much faster; it relies on pixels beyond the lattice not mattering, which is what the
      theoretical RF says. crop=False occludes the full image and assumes nothing.
    names: labels for the images (kept in `files`), e.g. file names for a tensor of images.
    """
    if not 0 < float(threshold) < 1:
        raise ParameterError(f"threshold must be between 0 and 1, got {threshold!r}")
    for name, v in (("occluder", occluder), ("stride", stride), ("batch size", batch_size),
                    ("max images", max_images)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0):
            raise ParameterError(f"{name} must be a positive whole number, got {v!r}")
    if margin is not None and (not isinstance(margin, (int, np.integer)) or margin < 0):
        raise ParameterError(f"margin must be a whole number >= 0, got {margin!r}")
    dev = resolve_device(device)
    batch_size = int(batch_size or 2 * default_batch_size(dev))
    x_all, given = _as_inputs(lm, images)
    names = list(names) if names is not None and len(names) == len(x_all) else given
    h, w = x_all.shape[-2:]
    model = lm.model
    info = require_maps(resolve_layer(model, layer, x_all[:1]))
    rf = {i.address: i for i in receptive_fields(model, (h, w))}[info.address]
    if rf.rf is None:
        raise LayerError(f"layer {info.address!r} has no spatial receptive field")
    nc = info.shape[0]
    if channel is not None and not (isinstance(channel, (int, np.integer)) and 0 <= channel < nc):
        raise LayerError(f"channel {channel!r} is out of range: layer {info.address!r} has channels 0..{nc - 1}")
    dk, ds = default_occluder(max(rf.rf))
    k = int(occluder or dk)
    s = int(stride or (ds if occluder is None else max(1, k // 3)))
    if k > min(h, w):
        raise ParameterError(f"occluder {k} is larger than the {h}x{w} input")
    m = int(k if margin is None else margin)
    fill_value = lm.preprocessing.fill_value(fill)

    start = time.perf_counter()
    with model_on_device(model, dev) as model, torch.inference_mode():
        # pass 1: every image's feature map at the layer (stopped there)
        fmaps = torch.cat([_forward_to(model, info, x_all[a:a + batch_size].to(dev), lambda t: t.float().cpu())
                           for a in range(0, len(x_all), batch_size)])
        if channel is None:
            channel = int(fmaps.mean(dim=(0, 2, 3)).argmax())
        fm = fmaps[:, int(channel)]
        peak, where = fm.flatten(1).max(1)
        order = torch.argsort(peak, descending=True)
        if max_images is not None:
            order = order[:max_images]
        order = [int(o) for o in order]
        # the occluder lattice, relative to the unit's RF centre (rounded down for even sizes)
        half = [(rf.rf[a] - 1) / 2.0 + (k - 1) / 2.0 + m for a in range(2)]
        ty = np.arange(-math.floor(half[0] / s), math.floor(half[0] / s) + 1)
        tx = np.arange(-math.floor(half[1] / s), math.floor(half[1] / s) + 1)
        gy, gx = np.meshgrid(ty * s, tx * s, indexing="ij")
        maps, units, acts, kept = [], [], [], []
        ncrop = 0
        fill_dev = fill_value.to(dev)
        for n in order:
            i, j = divmod(int(where[n]), fm.shape[-1])
            (r0, r1), (c0, c1) = rf.interval(i, j)
            cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
            tops = torch.as_tensor((cy + gy - k // 2).ravel())
            lefts = torch.as_tensor((cx + gx - k // 2).ravel())
            on_image = ((tops + k > 0) & (tops < h) & (lefts + k > 0) & (lefts < w)).numpy()
            x = x_all[n:n + 1].to(dev)
            ui, uj, oy, ox = i, j, 0, 0
            if crop:
                x, ui, uj, oy, ox = _crop(model, info, x, channel, i, j, rf, (cy, cx),
                                          (int(gy.min()) - k, int(gy.max()) + k), (int(gx.min()) - k, int(gx.max()) + k),
                                          float(fm[n, i, j]))
            ncrop += tuple(x.shape[-2:]) != (h, w)
            base = None
            vals = []
            for a in range(0, len(tops), batch_size):
                batch = occluded_batch(x, (tops[a:a + batch_size] - oy).to(dev), (lefts[a:a + batch_size] - ox).to(dev),
                                       (k, k), fill_dev)
                if base is None:  # the unoccluded image in the same batch: same arithmetic path
                    batch = torch.cat([x, batch])
                v = _forward_to(model, info, batch, lambda t: t[:, int(channel), ui, uj].double().cpu())
                if base is None:
                    base, v = v[0], v[1:]
                vals.append(v)
            d = (torch.cat(vals) - base).abs().numpy().reshape(gy.shape)
            d[~on_image.reshape(gy.shape)] = np.nan
            maps.append(d)
            units.append((i, j))
            acts.append(float(base))
            kept.append(names[n])
    seconds = time.perf_counter() - start
    maps = np.stack(maps).astype(np.float64)
    peaks = np.nanmax(np.where(np.isnan(maps), -np.inf, maps).reshape(len(maps), -1), axis=1)
    live = peaks > 0
    if not live.any():
        avg = np.zeros(gy.shape)
    else:
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                avg = np.nanmean(maps[live] / peaks[live, None, None], axis=0)
    size, bounds = _size(avg, s, k, threshold, (ty * s, tx * s))
    return EmpiricalRF(info.address, int(channel), avg.astype(np.float32), maps.astype(np.float32),
                       (ty * s).astype(np.int32), (tx * s).astype(np.int32), units, np.array(acts, np.float32),
                       size, float(threshold), k, s, rf, kept, round(seconds, 3), ncrop, bounds)


def _crop(model, info, x, channel, i, j, rf, centre, span_y, span_x, full_value):
    """Crop of x (1x3xHxW) holding rows centre+span_y and columns centre+span_x, its origin a
    multiple of the layer's stride so the unit lands on a unit of the crop. Returns (crop, unit
    row, unit column, origin row, origin column); the full image where the unit's value differs."""
    h, w = x.shape[-2:]
    sy, sx = rf.stride
    y0 = max(0, (centre[0] + span_y[0]) // sy * sy)
    x0 = max(0, (centre[1] + span_x[0]) // sx * sx)
    y1 = min(h, y0 + -(-(centre[0] + span_y[1] + 1 - y0) // sy) * sy)
    x1 = min(w, x0 + -(-(centre[1] + span_x[1] + 1 - x0) // sx) * sx)
    if (y0, x0, y1, x1) == (0, 0, h, w):
        return x, i, j, 0, 0
    c = x[:, :, y0:y1, x0:x1]
    ui, uj = i - y0 // sy, j - x0 // sx
    try:
        v = _forward_to(model, info, c, lambda t: t[0, int(channel), ui, uj].item()
                        if 0 <= ui < t.shape[-2] and 0 <= uj < t.shape[-1] else None)
    except RuntimeError:  # too small for the network
        v = None
    if v is None or abs(v - full_value) > 1e-4 * max(1.0, abs(full_value)):
        return x, i, j, 0, 0
    return c, ui, uj, y0, x0


def _size(avg: np.ndarray, s: int, k: int, threshold: float, offsets=None):
    """(size, bounds): per axis the measured size and the (first, last) offsets in pixels of the
    region it spans (the thresholded occluder centres, each end moved in by (k-1)/2)."""
    a = np.nan_to_num(avg, nan=0.0)
    top = a.max()
    if top <= 0:
        return (0, 0), None
    out, bounds = [], []
    for ax, marginal in enumerate((a.max(1), a.max(0))):
        idx = np.flatnonzero(marginal >= threshold * top)
        span = (idx[-1] - idx[0]) * s + 1
        size = int(max(1, span - (k - 1)))
        out.append(size)
        lo = float(offsets[ax][idx[0]]) if offsets is not None else idx[0] * s
        hi = float(offsets[ax][idx[-1]]) if offsets is not None else idx[-1] * s
        mid = (lo + hi) / 2.0
        bounds.append((mid - (size - 1) / 2.0, mid + (size - 1) / 2.0))
    return (out[0], out[1]), (bounds[0], bounds[1])
