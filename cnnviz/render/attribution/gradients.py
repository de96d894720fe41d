"""Figures for backprop attributions (`GradientResult`): per image the input crop, the map with its
colorbar, the map laid over the image and, for guided backprop and the deconvnet, the RGB picture
of the signal itself as Springenberg et al. (2015) draw it; and `compare_figure`, several methods
side by side for one image.

Colour scales: an unsigned map (saliency, guided, deconv, Grad-CAM) runs from 0 on a sequential
colormap; a signed map (Integrated Gradients) uses a diverging colormap centred on zero, with
vmin = -vmax. The top of a scale is the `clip` percentile of the magnitudes (99.5 by default:
gradient maps are peaked, and a few pixels would otherwise take the whole scale); the colorbar
shows an arrow where values go beyond it. Each row has its own scale unless `shared_scale`.

A deconvnet map that does not depend on the image (params["uninformative"]: the map of a uniform
gray image is the same) carries a red note on its panel, so that no one reads it as the image's.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize

from ...engines.attribution.methods import REGISTRY
from ...errors import ParameterError
from ..style import (DEFAULT_WIDTH, RC, SEQUENTIAL, TEXT_PT, Panels, bare, class_label, gray_background,
                    layer_label, model_label, wrap)

DIVERGING = "RdBu_r"


class _FromRegistry(Mapping):
    """A field of every method of the registry (`cnnviz.engines.attribution.methods`), read when looked up, so
    that a method registered later is named too."""

    def __init__(self, field: str):
        self.field = field

    def __getitem__(self, name):
        return getattr(REGISTRY[name], self.field)

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self):
        return len(REGISTRY)


NAMES = _FromRegistry("label")  # method -> its name in figures
RGB_METHODS = tuple(n for n, m in REGISTRY.items() if m.rgb)


# --------------------------------------------------------------------------------------------------
# Scales and labels

def method_label(params: dict) -> str:
    name = NAMES.get(params.get("method"), str(params.get("method")))
    if params.get("smooth"):
        mode = params.get("smooth_mode") or "mean"
        name = f"SmoothGrad {name} (n={params['smooth']}, {mode})"
    return name


UNINFORMATIVE_NOTE = "UNINFORMATIVE: the same map\nfor a uniform gray image"


def note_uninformative(ax, params: dict, width_in: float | None = None) -> None:
    """A visible note on a map panel whose map does not depend on the image (wrapped to
    `width_in` inches, the panel's width)."""
    if not params.get("uninformative"):
        return
    r = params.get("gray_image_r") or []
    text = UNINFORMATIVE_NOTE + (f" (r = {min(r):.3f})" if r else "")
    if params.get("max_pool_switches") == 0:
        text += "\nno max-pool switches in the model"
    if width_in is not None:  # bold: about 10 % wider than `wrap` measures
        first, _, rest = text.partition(")" if r else "image")
        text = wrap((first + _).replace("\n", " ") + rest.replace("\n", "; "), width_in * 0.8 - 0.1, TEXT_PT)
        # a panel shrunk to fit the page: the whole note would climb over the panel's title; the short
        # form keeps the flag (the figure's headline and the result's params say why)
        panel_in = ax.figure.get_size_inches()[1] * ax.get_position().height
        if (text.count("\n") + 1) * 7 * 1.3 / 72 > 0.75 * panel_in:
            text = "UNINFORMATIVE" + (f"\nr = {min(r):.3f}" if r else "")
    ax.text(0.5, 0.03, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="white",
            fontweight="bold", bbox=dict(boxstyle="round,pad=0.3", fc="#b2182b", ec="none", alpha=0.9),
            gid="uninformative-note")


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


def _map_label(params: dict) -> str:
    m = REGISTRY.get(params.get("method"))
    of = "unit" if params.get("unit") else "score"
    return m.map_label.replace("{of}", of) if m is not None else "attribution"


def _where(params: dict) -> str:
    parts = []
    if params.get("layer"):
        parts.append(layer_label(params['layer'], params.get('layer_type')))
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

MIN_PANEL = 1.25  # inches a panel at least


def figure(result, shared_scale: bool = False, overlay: bool = True, clip: float | None = 99.5,
           full_image: bool = False, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """Per image: the input crop, the map with its colorbar, the map over the image (`overlay`),
    and for guided backprop / deconvnet / guided Grad-CAM the RGB signal; in a figure `width`
    inches wide, an image's panels side by side as far as they fit ("row") or about square
    ("grid"). `shared_scale`: every image on one colour scale. `clip`: the percentile of the
    magnitudes at the top of a scale (None: the maximum). `full_image`: on the whole original photo
    instead (`full_image_figure`)."""
    if full_image:
        return full_image_figure(result, shared_scale=shared_scale, clip=clip, width=width, layout=layout)
    p = result.params
    signed = _signed(result)
    maps = np.asarray(result.map)
    n = maps.shape[0]
    rgb = (p.get("method") in REGISTRY and REGISTRY[p["method"]].rgb and result.attribution is not None
           and result.attribution.shape[1] == 3)
    cols = 2 + int(overlay) + int(rgb)
    shared_norm = map_norm(maps, signed, clip) if shared_scale else None
    shared_rgb = _top(result.attribution, clip) if (shared_scale and rgb) else None
    where = _where(p)
    titles, bars = [], []
    for i in range(n):
        titles += [_row_title(result, i), method_label(p) + (f", {where}" if where else "") + _share(p, i)]
        titles += ["map over the image (opacity grows with |map|)"] if overlay else []
        titles += ["signal as RGB (gray = 0)"] if rgb else []
        bars += [False, True] + [False] * (cols - 2)
    with plt.rc_context(RC):
        lay = Panels(n * cols, width, layout, titles=titles, head=_suptitle(result, shared_scale, clip), groups=cols,
                     min_panel=MIN_PANEL, colorbars=bars)
        for i in range(n):
            ax = lay.axes[i * cols: (i + 1) * cols]
            norm = shared_norm or map_norm(maps[i], signed, clip)
            ax[0].imshow(result.image[i], interpolation="nearest").set_gid("image")
            bare(ax[0])

            b = ax[1]
            im = b.imshow(maps[i], cmap=_cmap(signed), norm=norm, interpolation="nearest")
            im.set_gid("map")
            lay.colorbar(i * cols + 1, im, _map_label(p), _extend(maps[i], norm))
            note_uninformative(b, p, lay.pic_w)
            bare(b)
            col = 2
            if overlay:
                c = ax[col]
                c.imshow(gray_background(result.image[i]), interpolation="nearest")
                c.imshow(overlay_rgba(maps[i], norm, signed), interpolation="nearest").set_gid("overlay")
                bare(c)
                col += 1
            if rgb:
                d = ax[col]
                d.imshow(signal_rgb(result.attribution[i], clip, shared_rgb), interpolation="nearest").set_gid("rgb")
                bare(d)
    return lay.fig


def full_image_figure(result, shared_scale: bool = False, clip: float | None = 99.5, width: float = DEFAULT_WIDTH,
                      layout: str = "row"):
    """Per image, on the whole original photo: the photo with the model's crop dashed, and the map
    carried onto the photo (bilinear; colour scale as in `figure`), over the photo. Outside the crop
    is hatched: the model never saw it, so there is no map there."""
    from .. import fullimage

    p = result.params
    signed = _signed(result)
    maps = np.asarray(result.map)
    n = maps.shape[0]
    shared_norm = map_norm(maps, signed, clip) if shared_scale else None
    photos = [fullimage.photo(result, i) for i in range(n)]
    aspect = min(1.5, max(g.original_size[0] / g.original_size[1] for _, g in photos))
    titles = []
    for i, (_, geo) in enumerate(photos):
        titles += [_row_title(result, i) + "; " + fullimage.describe(geo),
                   f"{method_label(p)} on the photo (opacity grows with |map|)" + _share(p, i)]
    with plt.rc_context(RC):
        lay = Panels(2 * n, width, layout, titles=titles, groups=2, aspect=aspect, min_panel=1.6,
                     colorbars=[False, True] * n,
                     head=_suptitle(result, shared_scale, clip) + f"; {fullimage.OUTSIDE_LABEL}")
        for i, (picture, geo) in enumerate(photos):
            norm = shared_norm or map_norm(maps[i], signed, clip)
            a, b = lay.axes[2 * i: 2 * i + 2]
            fullimage.draw_photo(a, picture, geo)
            fullimage.mark_crop(a, geo)
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
            lay.colorbar(2 * i + 1, scale, _map_label(p), _extend(maps[i], norm))
            note_uninformative(b, p, lay.pic_w)
            bare(b)
    return lay.fig


def _row_title(result, i: int) -> str:
    p = result.params
    name = str(result.target_names[i])
    t = int(result.targets[i])
    if p.get("unit"):
        target = f"target: {name}"
    else:
        target = f"target '{name}' ({t})"
    top1 = int(result.top1[i])
    mark = "" if t == top1 or p.get("unit") else f"; the model's top-1 is '{class_label(result, top1)}' ({top1})"
    return f"input {i + 1}, {target}{mark}"


def _share(p: dict, i: int) -> str:
    """LRP: the share of the target score that reached the input, under the map's title."""
    shares = p.get("relevance_share")
    if not shares or i >= len(shares):
        return ""
    low = shares[i] < p.get("relevance_min_share", 0.5)
    return f"\n{'only ' if low else ''}{100 * shares[i]:.3g} % of the score reaches the input"


def _suptitle(result, shared_scale: bool, clip) -> str:
    p = result.params
    bits = [f"{method_label(p)}: {model_label(result.provenance)}"]
    shares = p.get("relevance_share")
    if shares and min(shares) < p.get("relevance_min_share", 0.5):
        rows = p.get("relevance_layers") or []
        worst = max(rows, key=lambda r: r["lost"]) if rows else None
        bits.append(f"relevance not conserved: under {100 * p.get('relevance_min_share', 0.5):.0f} % of the score "
                    "reaches the input, the layers' biases take the rest"
                    + (f" (most at {layer_label(worst['layer'])})" if worst and worst['layer'] else ""))
    if p.get("method") == "ig":
        bits.append(f"{p.get('ig_steps')} steps, {p.get('baseline')} baseline")
    if p.get("method") == "scorecam" and p.get("layer_channels"):
        used, total = p.get("channels_used"), p["layer_channels"]
        bits.append(f"APPROXIMATE: only the {used} of {total} channels with the largest "
                    f"{p.get('channel_measure') or 'spatial mean'} activation" if used < total else
                    f"all {total} channels")
    if p.get("method") == "rise" and p.get("masks"):
        bits.append(f"{p['masks']} random masks")
    if p.get("smooth"):
        bits.append(f"noise {p.get('noise')}")
    scale = "one colour scale for all images" if shared_scale else "colour scale per image"
    top = f"top = {clip:g}th percentile of |map|" if clip is not None else "top = max |map|"
    bits.append(f"{scale}, {top}" + ("; zero at the centre" if _signed(result) else ""))
    return "; ".join(bits)


# --------------------------------------------------------------------------------------------------
# Several methods, one image

# What a map's values are, per method: maps share a colour scale only with maps of the same unit.
# Saliency and guided backprop are (modified) gradients of the score w.r.t. the pixels; the
# deconvnet's projection passes through transposed filters and rectifiers, not the chain rule, and
# comes out orders of magnitude larger; Grad-CAM is a weighted sum of activations; guided Grad-CAM
# a product of the two; Integrated Gradients is input × gradient, signed, summing to a score change.
# LRP's relevance is a share of the class score. Each method's unit is its `scale_unit`.
SCALE_UNITS = _FromRegistry("scale_unit")


def scale_groups(results: list) -> list[int]:
    """For each result the index of the colour scale it shares (`--shared-scale`): maps of the
    same unit (SCALE_UNITS; a unit's projection apart from a class score's) share one, so their
    values compare (Grad-CAM for two classes: one can be far weaker, and look it); maps of
    different units never do, so that none is drawn blank on a scale its values do not live on."""
    keys = [(SCALE_UNITS.get(r.params.get("method"), r.params.get("method")), bool(r.params.get("unit")),
             _signed(r)) for r in results]
    order = list(dict.fromkeys(keys))
    return [order.index(k) for k in keys]


def compare_figure(results: list, shared_scale: bool = False, index: int = 0, overlay: bool = False,
                   clip: float | None = 99.5, width: float = DEFAULT_WIDTH, layout: str = "row",
                   note: str | None = None):
    """The input crop, then one panel per result (method) for image `index` of each, in a figure
    `width` inches wide (wrapped to more rows where they do not fit side by side; "grid": about
    square). With `overlay`, each map also over the image, in the rows under the maps.
    `shared_scale`: maps of the same unit share a colour scale (`scale_groups`; the figure names
    the groups); by default each has its own. `note` ends the headline (e.g. the methods left out)."""
    results = list(results)
    if not results:
        raise ParameterError("compare_figure needs at least one result")
    image = results[0].image[index]
    for r in results[1:]:
        if r.image.shape[1:] != results[0].image.shape[1:] or not np.array_equal(r.image[index], image):
            raise ParameterError("compare_figure: the results are not for the same image")
    maps = [np.asarray(r.map[index]) for r in results]
    groups = scale_groups(results) if shared_scale else list(range(len(results)))
    tops = {g: _top(np.concatenate([m.ravel() for m, h in zip(maps, groups) if h == g]), clip) for g in set(groups)}
    letters = _scale_letters(groups) if shared_scale else {}
    k = len(results)
    r0 = results[0]
    name = str(r0.target_names[index])
    titles = [f"input, target '{name}'" + (f" ({int(r0.targets[index])})" if r0.targets[index] >= 0 else "")]
    for r, g in zip(results, groups):
        where = _where(r.params)
        scale = f" [{letters[g]}]" if letters else ""
        titles.append(method_label(r.params) + (f", {where}" if where else "") + scale)
    bars = [False] + [True] * k
    if overlay:
        titles += [""] + [f"{method_label(r.params)} over the image" for r in results]
        bars += [False] * (k + 1)
    with plt.rc_context(RC):
        lay = Panels(len(titles), width, layout, titles=titles, groups=k + 1, min_panel=MIN_PANEL, colorbars=bars,
                     head=_compare_title(results, groups, letters, clip) + (f"; {note}" if note else ""))
        a = lay.axes[0]
        a.imshow(image, interpolation="nearest").set_gid("image")
        bare(a)
        if overlay:
            lay.axes[k + 1].axis("off")
        for j, (r, m, g) in enumerate(zip(results, maps, groups), start=1):
            signed = _signed(r)
            top = tops[g]
            norm = Normalize(-top, top) if signed else Normalize(0.0, top)
            b = lay.axes[j]
            im = b.imshow(m, cmap=_cmap(signed), norm=norm, interpolation="nearest")
            im.set_gid("map")
            lay.colorbar(j, im, _map_label(r.params), _extend(m, norm))
            note_uninformative(b, r.params, lay.pic_w)
            bare(b)
            if overlay:
                c = lay.axes[k + 1 + j]
                c.imshow(gray_background(image), interpolation="nearest")
                c.imshow(overlay_rgba(m, norm, signed), interpolation="nearest").set_gid("overlay")
                bare(c)
    return lay.fig


def _scale_letters(groups: list[int]) -> dict:
    return {g: f"scale {chr(ord('A') + i)}" for i, g in enumerate(dict.fromkeys(groups))}


def _compare_title(results, groups, letters, clip) -> str:
    r0 = results[0]
    pct = f"top = {clip:g}th percentile of |map|" if clip is not None else "top = max |map|"
    if not letters:
        scale = "colour scale per method"
    else:
        parts = []
        for g, letter in letters.items():
            members = [method_label(r.params) for r, h in zip(results, groups) if h == g]
            unit = SCALE_UNITS.get(results[groups.index(g)].params.get("method"), "")
            parts.append(f"{letter} = {', '.join(members)} ({unit})" if len(members) > 1 else
                         f"{letter} = {members[0]} alone")
        scale = ("colour scales shared by maps of the same unit: " + "; ".join(parts))
    return f"Attribution methods compared: {model_label(r0.provenance)}; {scale}; {pct}"
