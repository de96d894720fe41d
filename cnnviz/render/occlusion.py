"""The occlusion figure of Zeiler & Fergus 2014 (Fig. 7): input with the occluder, the chosen
feature map, its total activation per occluder position, the target-class probability per
position, and the most probable class per position with a legend."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch, Rectangle

from .style import CATEGORICAL, OTHER, RC, SEQUENTIAL, bare, colorbar, short

MAX_LEGEND_CLASSES = 8


def _extent(result):
    """Map cells centred on the occluder centres, in input pixels: (left, right, bottom, top)."""
    wy, wx = result.params["window"]
    sy, sx = result.params["stride"]
    ys, xs = result.positions_y, result.positions_x
    return (xs[0] + wx / 2 - sx / 2, xs[-1] + wx / 2 + sx / 2, ys[-1] + wy / 2 + sy / 2, ys[0] + wy / 2 - sy / 2)


def _frame(ax, result):
    h, w = result.image.shape[:2]
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_facecolor("white")
    ax.add_patch(Rectangle((0, 0), w, h, fill=False, lw=0.6, ec="0.6"))
    bare(ax)


def figure(result, occluder: tuple[int, int] | None = None, full_image: bool = False):
    """Draw the five panels. `occluder` = (row, col) of the map cell whose occluder is drawn on the
    input (default: the position of the largest probability drop). `full_image`: draw on the whole
    original photo instead (`full_image_figure`)."""
    if full_image:
        return full_image_figure(result, occluder)
    p = result.params
    prob, act, top = result.true_class_prob, result.feature_activation, result.top_class
    if occluder is None:
        occluder = np.unravel_index(int(np.argmin(prob)), prob.shape)
    iy, ix = occluder
    wy, wx = p["window"]
    ext = _extent(result)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, 5, figsize=(14.5, 3.25), gridspec_kw={"width_ratios": [1, 1, 1, 1, 1]})
        a, b, c, d, e = axes

        a.imshow(result.image)
        y0, x0 = result.positions_y[iy], result.positions_x[ix]
        a.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), wx, wy, facecolor=_fill_rgb(result), edgecolor="white", lw=1.2))
        a.set_title(f"(a) input, {wy}×{wx} occluder\n(drawn where p drops most)")
        bare(a)

        fm = b.imshow(result.feature_map, cmap=SEQUENTIAL, interpolation="nearest")
        b.set_title(f"(b) {short(p['layer'], 18)}, channel {p['channel']}\nunoccluded feature map")
        colorbar(fig, b, fm, "activation")
        bare(b)

        _frame(c, result)
        im = c.imshow(act, cmap=SEQUENTIAL, extent=ext, interpolation="nearest")
        c.set_title(f"(c) total activation of channel {p['channel']}\nvs occluder centre")
        cb = colorbar(fig, c, im, "sum of feature map")
        cb.ax.axhline(p["baseline_activation"], color="red", lw=1.2)

        _frame(d, result)
        im = d.imshow(prob, cmap=SEQUENTIAL, extent=ext, vmin=0, vmax=max(float(prob.max()), p["baseline_prob"]),
                      interpolation="nearest")
        d.set_title(f"(d) p({short(p['target_name'], 20)})\nvs occluder centre")
        cb = colorbar(fig, d, im, f"probability (unoccluded {p['baseline_prob']:.2f})")
        cb.ax.axhline(p["baseline_prob"], color="red", lw=1.2)

        _frame(e, result)
        _class_map(e, result, top, ext)
        e.set_title("(e) most probable class\nvs occluder centre")

        model = result.provenance.get("model", "model")
        fig.suptitle(f"Occlusion sensitivity: {model}, target '{p['target_name']}' (class {p['target']}); "
                     f"window {wy}×{wx}, stride {p['stride'][0]}, fill {p['fill']}; red line on colorbars = unoccluded",
                     fontsize=9.5, y=0.99)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def full_image_figure(result, occluder: tuple[int, int] | None = None):
    """Three panels on the whole original photo: the photo with the model's crop (dashed) and the
    occluder of cell `occluder` (default: the largest probability drop), the target-class
    probability per occluder centre, and the most probable class per occluder centre. Outside the
    crop is hatched: the model never saw it."""
    from . import fullimage

    p = result.params
    picture, geo = fullimage.photo(result)
    prob, top = result.true_class_prob, result.top_class
    if occluder is None:
        occluder = np.unravel_index(int(np.argmin(prob)), prob.shape)
    iy, ix = occluder
    wy, wx = p["window"]
    ext = fullimage.crop_extent(geo, _extent(result))
    h0, w0 = geo.original_size
    panel_w = 4.2
    panel_h = min(max(panel_w * h0 / w0, 2.2), 6.0)
    with plt.rc_context(RC):
        fig, (a, d, e) = plt.subplots(1, 3, figsize=(3 * panel_w + 2.6, panel_h + 0.9))

        fullimage.draw_photo(a, picture, geo)
        bx0, by0, bx1, by1 = result.occluder_boxes(original=True)[iy, ix]
        a.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, facecolor=_fill_rgb(result), edgecolor="white",
                              lw=1.2, zorder=6, gid="occluder"))
        fullimage.mark_crop(a, geo)
        a.set_title(f"(a) original photo, model crop dashed\n{wy}×{wx} occluder where p drops most")
        bare(a)

        fullimage.draw_photo(d, picture, geo)
        im = d.imshow(prob, cmap=SEQUENTIAL, extent=ext, vmin=0, vmax=max(float(prob.max()), p["baseline_prob"]),
                      interpolation="nearest", alpha=0.85, zorder=2)
        im.set_gid("map")
        fullimage.mark_crop(d, geo)
        d.set_xlim(0, w0)
        d.set_ylim(h0, 0)
        d.set_title(f"(b) p({short(p['target_name'], 20)})\nvs occluder centre")
        cb = colorbar(fig, d, im, f"probability (unoccluded {p['baseline_prob']:.2f})")
        cb.ax.axhline(p["baseline_prob"], color="red", lw=1.2)
        bare(d)

        fullimage.draw_photo(e, picture, geo)
        _class_map(e, result, top, ext)
        e.images[-1].set_alpha(0.85)
        e.images[-1].set_zorder(2)
        fullimage.mark_crop(e, geo)
        e.set_xlim(0, w0)
        e.set_ylim(h0, 0)
        e.set_title("(c) most probable class\nvs occluder centre")
        bare(e)

        model = result.provenance.get("model", "model")
        fig.suptitle(f"Occlusion sensitivity on the whole photo: {model}, target '{p['target_name']}' "
                     f"(class {p['target']}); {fullimage.describe(geo)}; {fullimage.OUTSIDE_LABEL}",
                     fontsize=9.5, y=0.99)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _fill_rgb(result):
    prov = result.provenance.get("preprocessing", {})
    mean, std = np.array(prov.get("mean", [0.5] * 3)), np.array(prov.get("std", [0.5] * 3))
    rgb = np.array(result.params["fill_normalized"]) * std + mean
    return tuple(np.clip(rgb, 0, 1))


def _class_map(ax, result, top, ext):
    classes, counts = np.unique(top, return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    target = result.params["target"]
    shown = list(order[:MAX_LEGEND_CLASSES])
    if target in order and target not in shown:
        shown[-1] = target
    codes = np.full(top.shape, len(shown), dtype=np.int32)
    for k, cls in enumerate(shown):
        codes[top == cls] = k
    colors = [CATEGORICAL[k % len(CATEGORICAL)] for k in range(len(shown))] + [OTHER]
    cmap = ListedColormap(colors)
    ax.imshow(codes, cmap=cmap, norm=BoundaryNorm(np.arange(len(colors) + 1) - 0.5, len(colors)), extent=ext,
              interpolation="nearest")
    total = top.size
    handles = []
    for k, cls in enumerate(shown):
        frac = float((top == cls).sum()) / total
        mark = " (target)" if cls == target else ""
        handles.append(Patch(facecolor=colors[k], edgecolor="0.3", lw=0.4,
                             label=f"{short(result.class_name(int(cls)))}{mark}: {_pct(frac)}"))
    rest = int((codes == len(shown)).sum())
    if rest:
        handles.append(Patch(facecolor=OTHER, edgecolor="0.3", lw=0.4,
                             label=f"{len(order) - len(shown)} other classes: {_pct(rest / total)}"))
    if target not in order:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"{short(result.class_name(int(target)))} (target): never top"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0,
              handlelength=1.2, fontsize=7.5)


def _pct(frac: float) -> str:
    return "<1%" if 0 < frac < 0.005 else f"{frac:.0%}"
