"""Figures for backprop attributions (`GradientResult`): per image the input crop, the map with its
colorbar, the map laid over the image and, for guided backprop and the deconvnet, the RGB picture
of the signal itself as Springenberg et al. (2015) draw it; and `compare_figure`, several methods
side by side for one image.

Colour scales: an unsigned map (saliency, guided, deconv, Grad-CAM) runs from 0 on a sequential
colormap; a signed map (Integrated Gradients) uses a diverging colormap centred on zero, with
vmin = -vmax. The top of a scale is the `clip` percentile of the magnitudes (99.5 by default:
gradient maps are peaked, and a few pixels would otherwise take the whole scale); the colorbar
shows an arrow where values go beyond it. Each row has its own scale unless `shared_scale`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from mpl_toolkits.axes_grid1 import make_axes_locatable

from ..errors import ParameterError
from .style import RC, SEQUENTIAL, bare, gray_background, short

DIVERGING = "RdBu_r"
NAMES = {"saliency": "Saliency", "guided": "Guided backprop", "deconv": "Deconvnet", "gradcam": "Grad-CAM",
         "guided_gradcam": "Guided Grad-CAM", "ig": "Integrated Gradients"}
RGB_METHODS = ("guided", "deconv", "guided_gradcam")


# --------------------------------------------------------------------------------------------------
# Scales and labels

def method_label(params: dict) -> str:
    name = NAMES.get(params.get("method"), str(params.get("method")))
    if params.get("smooth"):
        name = f"SmoothGrad {name} (n={params['smooth']})"
    return name


def _signed(result) -> bool:
    return bool(result.params.get("signed", False))


def _top(values: np.ndarray, clip: float | None) -> float:
    mag = np.abs(np.asarray(values, dtype=np.float64))
    v = float(np.percentile(mag, clip)) if clip is not None else float(mag.max())
    if not np.isfinite(v) or v <= 0:
        v = float(mag.max())
    return v if np.isfinite(v) and v > 0 else 1.0


def map_norm(values: np.ndarray, signed: bool, clip: float | None) -> Normalize:
    """Colour normalization: [0, top] for unsigned maps, [-top, top] for signed ones."""
    top = _top(values, clip)
    return Normalize(-top, top) if signed else Normalize(0.0, top)


def _cmap(signed: bool) -> str:
    return DIVERGING if signed else SEQUENTIAL


def _extend(values: np.ndarray, norm: Normalize) -> str:
    hi = float(np.max(values)) > norm.vmax * (1 + 1e-6)
    lo = float(np.min(values)) < norm.vmin * (1 + 1e-6) if norm.vmin < 0 else False
    return "both" if hi and lo else "max" if hi else "min" if lo else "neither"


def colorbar_extended(fig, ax, mappable, label: str, extend: str = "neither"):
    """`style.colorbar` with an arrow at the end(s) where the map goes beyond the scale."""
    cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.05)
    cb = fig.colorbar(mappable, cax=cax, extend=extend)
    cb.set_label(label)
    cb.ax.tick_params(labelsize=7)
    return cb


def _map_label(params: dict) -> str:
    m = params.get("method")
    of = "unit" if params.get("unit") else "score"
    return {"saliency": f"max over RGB |∂{of}/∂x|", "guided": "max over RGB |signal|",
            "deconv": "max over RGB |signal|", "gradcam": "Grad-CAM (upsampled)",
            "guided_gradcam": "max over RGB |guided × CAM|", "ig": "attribution (sum over RGB)"}.get(m, "attribution")


def _where(params: dict) -> str:
    parts = []
    if params.get("layer"):
        parts.append(f"layer {short(str(params['layer']), 28)}")
    if params.get("unit"):
        parts.append(str(params["unit"]))
    return ", ".join(parts)


def overlay_rgba(values: np.ndarray, norm: Normalize, signed: bool) -> np.ndarray:
    """The map as RGBA for drawing over the image: its colour, and an opacity growing with the
    magnitude (0 where the map is 0), so that the image shows where the map is weak."""
    cmap = plt.get_cmap(_cmap(signed))
    rgba = cmap(norm(values))
    top = max(abs(norm.vmin), abs(norm.vmax))
    strength = np.clip(np.abs(values) / top, 0.0, 1.0)
    rgba[..., 3] = 0.9 * strength
    return rgba


def signal_rgb(attribution: np.ndarray, clip: float | None = 99.5, top: float | None = None) -> np.ndarray:
    """A signed 3 x H x W signal as an H x W x 3 picture: 0.5 gray where it is zero, each channel
    scaled by the `clip` percentile of the magnitudes (or `top`) into [0, 1] around 0.5."""
    a = np.moveaxis(np.asarray(attribution, dtype=np.float64), 0, -1)
    t = top if top is not None else _top(a, clip)
    return np.clip(0.5 + 0.5 * a / t, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# One method, one or more images

def figure(result, shared_scale: bool = False, overlay: bool = True, clip: float | None = 99.5,
           full_image: bool = False):
    """One row per image: the input crop, the map with its colorbar, the map over the image
    (`overlay`), and for guided backprop / deconvnet / guided Grad-CAM the RGB signal.
    `shared_scale`: every row on one colour scale. `clip`: the percentile of the magnitudes at the
    top of a scale (None: the maximum). `full_image`: on the whole original photo instead
    (`full_image_figure`)."""
    if full_image:
        return full_image_figure(result, shared_scale=shared_scale, clip=clip)
    p = result.params
    signed = _signed(result)
    maps = np.asarray(result.map)
    n = maps.shape[0]
    rgb = p.get("method") in RGB_METHODS and result.attribution is not None and result.attribution.shape[1] == 3
    cols = 2 + int(overlay) + int(rgb)
    shared_norm = map_norm(maps, signed, clip) if shared_scale else None
    shared_rgb = _top(result.attribution, clip) if (shared_scale and rgb) else None
    with plt.rc_context(RC):
        fig, axes = plt.subplots(n, cols, figsize=(3.1 * cols, 2.85 * n + 0.55), squeeze=False)
        for i in range(n):
            ax = axes[i]
            norm = shared_norm or map_norm(maps[i], signed, clip)
            a = ax[0]
            a.imshow(result.image[i], interpolation="nearest").set_gid("image")
            a.set_title(_row_title(result, i))
            bare(a)

            b = ax[1]
            im = b.imshow(maps[i], cmap=_cmap(signed), norm=norm, interpolation="nearest")
            im.set_gid("map")
            b.set_title(f"{method_label(p)}" + (f"\n{_where(p)}" if _where(p) else ""))
            colorbar_extended(fig, b, im, _map_label(p), _extend(maps[i], norm))
            bare(b)
            col = 2
            if overlay:
                c = ax[col]
                c.imshow(gray_background(result.image[i]), interpolation="nearest")
                c.imshow(overlay_rgba(maps[i], norm, signed), interpolation="nearest").set_gid("overlay")
                c.set_title("map over the image\n(opacity grows with |map|)")
                bare(c)
                col += 1
            if rgb:
                d = ax[col]
                d.imshow(signal_rgb(result.attribution[i], clip, shared_rgb), interpolation="nearest").set_gid("rgb")
                d.set_title("signal as RGB\n(gray = 0)")
                bare(d)
        fig.suptitle(_suptitle(result, shared_scale, clip), fontsize=9.5, y=1.0)
        fig.tight_layout(rect=(0, 0, 1, 0.985))
    return fig


def full_image_figure(result, shared_scale: bool = False, clip: float | None = 99.5):
    """One row per image, on the whole original photo: the photo with the model's crop dashed,
    and the map carried onto the photo (bilinear; colour scale as in `figure`), over the photo.
    Outside the crop is hatched: the model never saw it, so there is no map there."""
    from . import fullimage

    p = result.params
    signed = _signed(result)
    maps = np.asarray(result.map)
    n = maps.shape[0]
    shared_norm = map_norm(maps, signed, clip) if shared_scale else None
    photos = [fullimage.photo(result, i) for i in range(n)]
    panel_w = 3.6
    heights = [min(max(panel_w * g.original_size[0] / g.original_size[1], 2.0), 5.5) for _, g in photos]
    with plt.rc_context(RC):
        fig, axes = plt.subplots(n, 2, figsize=(2 * panel_w + 1.2, sum(heights) + 0.7 * n + 0.5), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        for i, (picture, geo) in enumerate(photos):
            norm = shared_norm or map_norm(maps[i], signed, clip)
            a, b = axes[i]
            fullimage.draw_photo(a, picture, geo)
            fullimage.mark_crop(a, geo)
            a.set_title(_row_title(result, i) + "\n" + fullimage.describe(geo), fontsize=8)
            bare(a)

            on_photo = geo.map_to_original(maps[i], shape=picture.shape[:2])
            b.imshow(gray_background(picture), extent=fullimage.extent(geo), interpolation="bilinear")
            rgba = overlay_rgba(np.nan_to_num(on_photo), norm, signed)
            rgba[np.isnan(on_photo), 3] = 0.0
            im = b.imshow(rgba, extent=fullimage.extent(geo), interpolation="nearest")
            im.set_gid("overlay")
            h0, w0 = geo.original_size
            b.set_xlim(0, w0)
            b.set_ylim(h0, 0)
            fullimage.mark_crop(b, geo)
            scale = plt.cm.ScalarMappable(norm=norm, cmap=_cmap(signed))
            colorbar_extended(fig, b, scale, _map_label(p), _extend(maps[i], norm))
            b.set_title(f"{method_label(p)} on the photo\n(opacity grows with |map|)")
            bare(b)
        fig.suptitle(_suptitle(result, shared_scale, clip) + f"\n{fullimage.OUTSIDE_LABEL}", fontsize=9.5, y=1.0)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def _row_title(result, i: int) -> str:
    p = result.params
    name = str(result.target_names[i])
    t = int(result.targets[i])
    if p.get("unit"):
        target = f"target: {short(name, 26)}"
    else:
        target = f"target '{short(name, 20)}' ({t})"
    top1 = int(result.top1[i])
    mark = "" if t == top1 or p.get("unit") else f"\ntop-1 is class {top1}"
    return f"input {i + 1}, {target}{mark}"


def _suptitle(result, shared_scale: bool, clip) -> str:
    p = result.params
    model = result.provenance.get("model", "model")
    bits = [f"{method_label(p)}: {model}"]
    if p.get("method") == "ig":
        bits.append(f"{p.get('ig_steps')} steps, {p.get('baseline')} baseline")
    if p.get("smooth"):
        bits.append(f"noise {p.get('noise')}")
    scale = "one colour scale for all rows" if shared_scale else "colour scale per row"
    top = f"top = {clip:g}th percentile of |map|" if clip is not None else "top = max |map|"
    bits.append(f"{scale}, {top}" + ("; zero at the centre" if _signed(result) else ""))
    return "; ".join(bits)


# --------------------------------------------------------------------------------------------------
# Several methods, one image

def compare_figure(results: list, shared_scale: bool = False, index: int = 0, overlay: bool = False,
                   clip: float | None = 99.5):
    """The input crop, then one column per result (method) for image `index` of each. With
    `overlay`, a second row shows each map over the image. `shared_scale`: every map on one colour
    scale ([0, top] or [-top, top] for signed maps); by default each its own."""
    results = list(results)
    if not results:
        raise ParameterError("compare_figure needs at least one result")
    image = results[0].image[index]
    for r in results[1:]:
        if r.image.shape[1:] != results[0].image.shape[1:] or not np.array_equal(r.image[index], image):
            raise ParameterError("compare_figure: the results are not for the same image")
    maps = [np.asarray(r.map[index]) for r in results]
    top = _top(np.concatenate([m.ravel() for m in maps]), clip) if shared_scale else None
    k = len(results)
    rows = 2 if overlay else 1
    with plt.rc_context(RC):
        fig, axes = plt.subplots(rows, k + 1, figsize=(2.75 * (k + 1) + 0.4, 2.75 * rows + 0.6), squeeze=False)
        a = axes[0, 0]
        a.imshow(image, interpolation="nearest").set_gid("image")
        r0 = results[0]
        name = str(r0.target_names[index])
        a.set_title(f"input\ntarget '{short(name, 20)}'" + (f" ({int(r0.targets[index])})" if r0.targets[index] >= 0 else ""))
        bare(a)
        if overlay:
            axes[1, 0].axis("off")
        for j, (r, m) in enumerate(zip(results, maps), start=1):
            signed = _signed(r)
            norm = (Normalize(-top, top) if signed else Normalize(0.0, top)) if top else map_norm(m, signed, clip)
            b = axes[0, j]
            im = b.imshow(m, cmap=_cmap(signed), norm=norm, interpolation="nearest")
            im.set_gid("map")
            where = _where(r.params)
            b.set_title(method_label(r.params) + (f"\n{where}" if where else "\n"))
            colorbar_extended(fig, b, im, _map_label(r.params), _extend(m, norm))
            bare(b)
            if overlay:
                c = axes[1, j]
                c.imshow(gray_background(image), interpolation="nearest")
                c.imshow(overlay_rgba(m, norm, signed), interpolation="nearest").set_gid("overlay")
                bare(c)
        model = r0.provenance.get("model", "model")
        scale = "one colour scale" if shared_scale else "colour scale per method"
        pct = f"top = {clip:g}th percentile of |map|" if clip is not None else "top = max |map|"
        fig.suptitle(f"Attribution methods compared: {model}; {scale}, {pct}", fontsize=9.5, y=1.0)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
