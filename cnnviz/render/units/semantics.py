"""The unit-semantics figure: the layer's histogram of label types (Bau et al. 2017), the groups
the group-selective units prefer, how pure the units' top images are against chance, and example
units with their top images segmented by the unit's thresholded map (Zhou et al. 2015 Fig. 9:
the image dimmed outside the region where the unit fires)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..style import CATEGORICAL, DEFAULT_WIDTH, OTHER, RC, SUPTITLE_PT, bare, fit, layer_name, max_height, lines_of, model_label, short, wrap


WEAK_IOU = 0.3  # a colour label below this IoU is shown as weak (the label needs only params["colour_iou"])


def _shown(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    out[~mask] *= 0.25
    return out.clip(0, 255).astype(np.uint8)


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    U = len(result.units)
    types = list(p["label_types"])
    colours = list(p["colours"])
    E, m = result.example_images.shape[:2] if result.example_images.size else (0, 0)
    grouping = p["grouping"]
    k = int(p["k"])
    side = width >= 5.5 and layout == "row"
    per_row = 2 if width >= 5.5 else 1
    block_w = (width - 0.15) / per_row
    tile = min(0.85, (block_w - 0.15) / max(m, 1))
    title = wrap(f"Unit semantics at {layer_name(p['layer'], p.get('layer_type'))} — {model_label(result.provenance, p)}", width - 0.1, SUPTITLE_PT)
    head = 0.12 + 0.15 * lines_of(title) + 0.1
    chart_h, below = 1.55, 0.62  # a chart, and its tick labels and x label under it
    has_groups = bool((result.label_type == 0).any())  # else no chart of their groups (an empty box)
    n_charts = 3 if has_groups else 2
    charts_h = chart_h + below if side else n_charts * (chart_h + below) - 0.1
    weak = float(p.get("weak_iou", WEAK_IOU))
    colour_units = np.flatnonzero(result.label_type == 1)
    n_weak = int((result.colour_iou[colour_units].max(1) < weak).sum()) if colour_units.size else 0
    chart_w = 0.27 * (width - 0.5 - 1.5 - 0.5 - 0.12) if side else width - 1.62
    if side and not has_groups:
        chart_w = 0.45 * (width - 0.5 - 0.5 - 0.5 - 0.12)
    type_label = wrap("label type (dashed: chance" + (f"; hatched: {n_weak} weak, IoU < {weak:g})" if n_weak else ")"),
                      chart_w + 0.3, 7.0)
    below += 0.13 * (lines_of(type_label) - 1)
    caption = wrap(f"example units: top {m} images, dimmed outside the unit's map thresholded at "
                   f"{p['threshold']:g} x its largest activation", width - 0.2, 7.0)
    cap_h = 0.13 * lines_of(caption) + 0.12
    titles, title_lines = [], 1
    for e in range(E):
        u = int(result.example_units[e])
        t = int(result.label_type[u])
        best = int(np.argmax(result.colour_iou[u]))
        if t == 0:
            what = f"{p['top_group'][u]} {p['top_count'][u]}/{k}, p={result.p_value[u]:.1g}"
        elif t == 1:
            iou = float(result.colour_iou[u, best])
            what = f"colour {colours[best]}, IoU {iou:.2f}" + (f" (weak, < {weak:g})" if iou < weak else "")
        else:
            what = f"{p['top_group'][u]} {p['top_count'][u]}/{k} (n.s.)"
        text = wrap(f"unit {int(result.units[u])}: {what}; SI {result.selectivity[u]:.2f}", block_w - 0.15, 7.0, lines=2)
        titles.append((text, t))
        title_lines = max(title_lines, lines_of(text))
    ex_rows = math.ceil(E / per_row)

    def height_of(f):  # charts (down to 60 %) and example tiles scaled by f
        ch = chart_h * max(f, 0.6)
        chs = ch + below if side else n_charts * (ch + below) - 0.1
        return head + chs + cap_h + ex_rows * (tile * f + 0.06 + 0.13 * title_lines + 0.12) + 0.05

    f = fit(height_of, max_height(width))  # at most a page
    tile, chart_h = tile * f, chart_h * max(f, 0.6)
    charts_h = chart_h + below if side else n_charts * (chart_h + below) - 0.1
    unit_h = tile + 0.06 + 0.13 * title_lines + 0.12
    height = head + charts_h + cap_h + ex_rows * unit_h + 0.05
    H = height

    def box(x, y_top, w, h):  # inches from the left and from the top
        return [x / width, (H - y_top - h) / H, w / width, h / H]

    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        if side:
            free = width - 0.5 - 1.5 - 0.5 - 0.12
            wa, wb, wc = 0.27 * free, 0.38 * free, 0.35 * free
            if has_groups:
                boxes = [box(0.5, head, wa, chart_h), box(0.5 + wa + 1.5, head, wb, chart_h),
                         box(0.5 + wa + 1.5 + wb + 0.5, head, wc, chart_h)]
            else:
                free = width - 0.5 - 0.5 - 0.5 - 0.12
                wa, wc = 0.45 * free, 0.55 * free
                boxes = [box(0.5, head, wa, chart_h), None, box(0.5 + wa + 0.5 + 0.5, head, wc, chart_h)]
        else:
            boxes = [box(1.5, head + i * (chart_h + below), width - 1.62, chart_h) for i in range(n_charts)]
            if not has_groups:
                boxes = [boxes[0], None, boxes[1]]
        # (a) label types
        ax = fig.add_axes(boxes[0])
        counts = [int((result.label_type == t).sum()) for t in range(len(types))]
        bars = ax.bar(range(3), counts, color=[CATEGORICAL[0], CATEGORICAL[1], OTHER])
        if n_weak:  # the weak colour labels hatched at the bar's foot
            ax.bar([1], [n_weak], color=CATEGORICAL[1], hatch="////", edgecolor="white", lw=0)
            bars[1].set_label(None)
        ax.plot([-0.4, 0.4], [p["expected_by_chance"]] * 2, color="k", ls="--", lw=1)
        ax.set_xticks(range(3))
        ax.set_xticklabels([grouping, "colour", "none"], fontsize=7)
        ax.set_ylabel("units")
        ax.set_xlabel(type_label, linespacing=1.0)
        ax.set_title(f"{U} units", fontsize=7.5)
        for i, c in enumerate(counts):
            ax.text(i, c, str(c), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(counts) * 1.2 + 1)
        # (b) groups of the group units (none: no chart, the bar of (a) says 0)
        sel = result.label_type == 0
        ax = fig.add_axes(boxes[1]) if has_groups else None
        if has_groups:
            tops = np.array(p["top_group"])[sel] if sel.any() else np.array([], str)
            gnames, gc = np.unique(tops, return_counts=True) if tops.size else (np.array([]), np.array([]))
            order = np.argsort(-gc, kind="stable")[:8]
            ax.barh(np.arange(len(order)), gc[order], color=CATEGORICAL[0])
            ax.set_yticks(np.arange(len(order)))
            ax.set_yticklabels([short(str(g), 22) for g in gnames[order]], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("units")
            ax.set_title(f"{grouping}-selective units by {grouping}", fontsize=7.5)
            if not len(order):
                ax.set_xticks([])
                ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", fontsize=7)
        # (c) purity against chance
        ax = fig.add_axes(boxes[2])
        ax.hist(np.array(p["top_count"]), bins=np.arange(0, k + 2) - 0.5, color=CATEGORICAL[0], alpha=0.85)
        ax.axvline(p["chance_purity"] * k, color="k", ls="--", lw=1, label=f"chance {p['chance_purity'] * k:.1f}")
        ax.set_xlabel(f"top-{k} images in commonest {grouping}")
        ax.set_ylabel("units")
        ax.set_xlim(0.5, k + 0.5)
        ax.legend(frameon=False, fontsize=7, loc="upper right")
        ax.set_title(f"purity: mean {np.mean(p['top_count']):.1f} of {k}", fontsize=7.5)
        # examples
        y = head + charts_h
        fig.text(0.5, (H - y - 0.04) / H, caption, ha="center", va="top", fontsize=7)
        y += cap_h
        for e in range(E):
            text, t = titles[e]
            r, c = divmod(e, per_row)
            x0 = 0.1 + c * block_w
            y_top = y + r * unit_h
            fig.text(x0 / width, (H - y_top) / H, text, fontsize=7, va="top",
                     color=CATEGORICAL[0] if t == 0 else (CATEGORICAL[1] if t == 1 else "0.3"))
            for j in range(m):
                ax = fig.add_axes(box(x0 + j * tile, y_top + 0.13 * title_lines + 0.06, tile - 0.04, tile - 0.04))
                bare(ax)
                ax.imshow(_shown(result.example_images[e, j], result.example_masks[e, j]))
                if result.example_masks[e, j].any() and not result.example_masks[e, j].all():
                    ax.contour(result.example_masks[e, j].astype(float), levels=[0.5], colors=["yellow"],
                               linewidths=0.6)
        fig.suptitle(title, fontsize=SUPTITLE_PT, y=1 - 0.05 / H, va="top")
    return fig
