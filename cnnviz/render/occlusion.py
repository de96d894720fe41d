"""The occlusion figure of Zeiler & Fergus 2014 (Fig. 7): input with the occluder, the chosen
feature map, its total activation per occluder position, the target-class probability per
position, and the most probable class per position with a legend."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch, Rectangle

from .style import (CATEGORICAL, DEFAULT_WIDTH, OTHER, RC, SEQUENTIAL, TEXT_PT, Panels, bare, grid_shape,
                    layer_label, line_in, lines_of, model_label, wrap)

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


MIN_PANEL = 1.25  # inches: narrower, the 7 pt titles and colorbar ticks do not fit


def figure(result, occluder: tuple[int, int] | None = None, full_image: bool = False, width: float = DEFAULT_WIDTH,
           layout: str = "row"):
    """Draw the five panels in a figure `width` inches wide ("row": side by side as far as they
    fit, "grid": about square). `occluder` = (row, col) of the map cell whose occluder is drawn on
    the input (default: the position of the largest probability drop). `full_image`: draw on the
    whole original photo instead (`full_image_figure`)."""
    if full_image:
        return full_image_figure(result, occluder, width=width, layout=layout)
    p = result.params
    prob, act, top = result.true_class_prob, result.feature_activation, result.top_class
    if occluder is None:
        occluder = np.unravel_index(int(np.argmin(prob)), prob.shape)
    iy, ix = occluder
    wy, wx = p["window"]
    ext = _extent(result)
    titles = [f"(a) input, {wy}×{wx} occluder drawn where p drops most",
              f"(b) unoccluded feature map: {layer_label(p['layer'], p.get('layer_type'))}, channel {p['channel']}",
              f"(c) total activation of channel {p['channel']} vs occluder centre",
              f"(d) p({p['target_name']}) vs occluder centre",
              "(e) most probable class vs occluder centre (legend: share of positions)"]
    head = (f"Occlusion sensitivity: {model_label(result.provenance)}, target '{p['target_name']}' (class "
            f"{p['target']}); window {wy}×{wx}, stride {p['stride'][0]}, fill {p['fill']}; red line on colorbars = "
            "unoccluded")
    drill = p.get("drill_down")
    if p.get("mode") == "approximate" and drill:  # an approximate map says so where it is shown
        n = drill["computed_positions"] + drill["filled_positions"]
        head += (f"; approximate mode: tau {p['tau']:g}, {drill['computed_positions']} of {n} positions computed, "
                 "the others interpolated")
    with plt.rc_context(RC):
        lay = _layout(result, top, 5, width, layout, 1.0, titles, head, [False, True, True, True, False])
        a, b, c, d, e = lay.axes

        a.imshow(result.image)
        y0, x0 = result.positions_y[iy], result.positions_x[ix]
        a.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), wx, wy, facecolor=_fill_rgb(result), edgecolor="white", lw=1.2))
        bare(a)

        fm = b.imshow(result.feature_map, cmap=SEQUENTIAL, interpolation="nearest")
        lay.colorbar(1, fm, "activation")
        bare(b)

        _frame(c, result)
        im = c.imshow(act, cmap=SEQUENTIAL, extent=ext, interpolation="nearest")
        cb = lay.colorbar(2, im, "sum of feature map")
        cb.ax.axvline(p["baseline_activation"], color="red", lw=1.2)

        _frame(d, result)
        im = d.imshow(prob, cmap=SEQUENTIAL, extent=ext, vmin=0, vmax=max(float(prob.max()), p["baseline_prob"]),
                      interpolation="nearest")
        cb = lay.colorbar(3, im, f"probability (unoccluded {p['baseline_prob']:.2f})")
        cb.ax.axvline(p["baseline_prob"], color="red", lw=1.2)

        _frame(e, result)
        _class_map(e, result, top, ext)
        for ax in (c, d, e):
            _one_position_note(ax, result, lay.pic_w)
    return lay.fig


def full_image_figure(result, occluder: tuple[int, int] | None = None, width: float = DEFAULT_WIDTH,
                      layout: str = "row"):
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
    titles = [f"(a) original photo, model crop dashed; {wy}×{wx} occluder where p drops most",
              f"(b) p({p['target_name']}) vs occluder centre",
              "(c) most probable class vs occluder centre (legend: share of positions)"]
    head = (f"Occlusion sensitivity on the whole photo: {model_label(result.provenance)}, target "
            f"'{p['target_name']}' (class {p['target']}); {fullimage.describe(geo)}; {fullimage.OUTSIDE_LABEL}")
    with plt.rc_context(RC):
        lay = _layout(result, top, 3, width, layout, min(h0 / w0, 1.5), titles, head, [False, True, False])
        a, d, e = lay.axes

        fullimage.draw_photo(a, picture, geo)
        bx0, by0, bx1, by1 = result.occluder_boxes(original=True)[iy, ix]
        a.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, facecolor=_fill_rgb(result), edgecolor="white",
                              lw=1.2, zorder=6, gid="occluder"))
        fullimage.mark_crop(a, geo)
        bare(a)

        fullimage.draw_photo(d, picture, geo)
        im = d.imshow(prob, cmap=SEQUENTIAL, extent=ext, vmin=0, vmax=max(float(prob.max()), p["baseline_prob"]),
                      interpolation="nearest", alpha=0.85, zorder=2)
        im.set_gid("map")
        fullimage.mark_crop(d, geo)
        d.set_xlim(0, w0)
        d.set_ylim(h0, 0)
        cb = lay.colorbar(1, im, f"probability (unoccluded {p['baseline_prob']:.2f})")
        cb.ax.axvline(p["baseline_prob"], color="red", lw=1.2)
        bare(d)

        fullimage.draw_photo(e, picture, geo)
        _class_map(e, result, top, ext)
        e.images[-1].set_alpha(0.85)
        e.images[-1].set_zorder(2)
        fullimage.mark_crop(e, geo)
        e.set_xlim(0, w0)
        e.set_ylim(h0, 0)
        bare(e)
        for ax in (d, e):
            _one_position_note(ax, result, lay.pic_w)
    return lay.fig


def _layout(result, top, n, width, layout, aspect, titles, head, colorbars):
    """The panels (`style.Panels`) and the class legend: in the grid's free cells where it has
    some, else in a strip under the panels."""
    entries = _legend_entries(result, top)
    rows, cols = grid_shape(n, width, layout, MIN_PANEL)
    if rows * cols > n:  # the legend goes in the free cells
        title_w = (cols * rows - n) * (width / cols) - 0.15
        text_w = title_w - 0.3
        ncol, legend_in = 1, 0.0
    else:
        ncol = max(1, int(width // 2.3))
        text_w = width / ncol - 0.45
        title_w = width - 0.2
    handles = [Patch(facecolor=c, edgecolor=ec, lw=0.4, label=wrap(t, text_w, TEXT_PT, lines=2))
               for c, ec, t in entries]
    if rows * cols == n:
        lines = sum(max(lines_of(h.get_label()) for h in handles[i:i + ncol]) for i in range(0, len(handles), ncol))
        legend_in = line_in(TEXT_PT, lines + 1) + 0.04 * len(handles) / ncol + 0.15
    lay = Panels(n, width, layout, titles=titles, head=head, aspect=aspect, min_panel=MIN_PANEL, colorbars=colorbars,
                 legend_in=legend_in)
    rect = lay.free_rect() if rows * cols > n else lay.legend_rect()
    holder = lay.fig.add_axes(rect)
    holder.axis("off")
    holder.legend(handles=handles, loc="upper left" if rows * cols > n else "upper center", frameon=False,
                  handlelength=1.2, fontsize=TEXT_PT, ncol=ncol, borderaxespad=0, labelspacing=0.3,
                  title=wrap("most probable class: share of occluder positions", title_w, TEXT_PT),
                  title_fontsize=TEXT_PT)
    return lay


def _one_position_note(ax, result, panel_w: float) -> None:
    """A map of one occluder position is one flat cell: say why, instead of an empty-looking panel."""
    if result.true_class_prob.size != 1:
        return
    wy, wx = result.params["window"]
    ax.text(0.5, 0.5, wrap(f"one occluder position only: the {wy}×{wx} window covers the whole input, so nothing "
                           "varies; use a smaller window", panel_w * 0.85, TEXT_PT), transform=ax.transAxes,
            ha="center", va="center", fontsize=TEXT_PT, color="white", zorder=10, gid="one-position-note",
            bbox=dict(boxstyle="round,pad=0.3", fc="#b2182b", ec="none", alpha=0.9))


def _fill_rgb(result):
    prov = result.provenance.get("preprocessing", {})
    mean, std = np.array(prov.get("mean", [0.5] * 3)), np.array(prov.get("std", [0.5] * 3))
    rgb = np.array(result.params["fill_normalized"]) * std + mean
    return tuple(np.clip(rgb, 0, 1))


def _shown(result, top):
    """The classes the map colours (the most frequent, the target always among them), in order."""
    classes, counts = np.unique(top, return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    target = result.params["target"]
    shown = list(order[:MAX_LEGEND_CLASSES])
    if target in order and target not in shown:
        shown[-1] = target
    return order, shown


def _class_map(ax, result, top, ext):
    """The most probable class per position, coloured as `_legend_entries` lists them."""
    _, shown = _shown(result, top)
    codes = np.full(top.shape, len(shown), dtype=np.int32)
    for k, cls in enumerate(shown):
        codes[top == cls] = k
    colors = [CATEGORICAL[k % len(CATEGORICAL)] for k in range(len(shown))] + [OTHER]
    ax.imshow(codes, cmap=ListedColormap(colors), norm=BoundaryNorm(np.arange(len(colors) + 1) - 0.5, len(colors)),
              extent=ext, interpolation="nearest")


def _legend_entries(result, top):
    """(face colour, edge colour, text) per legend entry: each class with the share of occluder
    positions where it is the most probable ("93 % of positions", not a probability)."""
    order, shown = _shown(result, top)
    target = result.params["target"]
    total = top.size
    entries = []
    for k, cls in enumerate(shown):
        frac = float((top == cls).sum()) / total
        mark = " (target)" if cls == target else ""
        entries.append((CATEGORICAL[k % len(CATEGORICAL)], "0.3",
                        f"{result.class_name(int(cls))}{mark}: {_pct(frac)} of positions"))
    rest = int(total - np.isin(top, shown).sum())
    if rest:
        entries.append((OTHER, "0.3", f"{len(order) - len(shown)} other classes: {_pct(rest / total)} of positions"))
    if target not in order:
        entries.append(("none", "none", f"{result.class_name(int(target))} (target): never top"))
    return entries


def _pct(frac: float) -> str:
    return "<1 %" if 0 < frac < 0.005 else f"{100 * frac:.0f} %"
