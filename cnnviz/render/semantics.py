"""The unit-semantics figure: the layer's histogram of label types (Bau et al. 2017), the groups
the group-selective units prefer, how pure the units' top images are against chance, and example
units with their top images segmented by the unit's thresholded map (Zhou et al. 2015 Fig. 9:
the image dimmed outside the region where the unit fires)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from .style import CATEGORICAL, DEFAULT_WIDTH, OTHER, RC, bare, model_label, short


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
    per_row = 2 if width >= 5.5 else 1
    block_w = (width - 0.15) / per_row
    tile = min(0.85, (block_w - 0.15) / max(m, 1))
    unit_h = tile + 0.42
    ex_rows = math.ceil(E / per_row)
    top_h = 1.9
    stacked = width < 5.5
    charts_h = top_h * (3 if stacked else 1) + (0.5 * 2 if stacked else 0)
    height = 0.45 + charts_h + 0.55 + ex_rows * unit_h + 0.1
    grouping = p["grouping"]
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        charts_top = 1 - 0.45 / height
        charts_bottom = 1 - (0.45 + charts_h) / height
        if stacked:
            gs = fig.add_gridspec(3, 1, left=0.42, right=0.95, top=charts_top, bottom=charts_bottom, hspace=0.9)
        else:
            gs = fig.add_gridspec(1, 3, left=0.07, right=0.98, top=charts_top, bottom=charts_bottom, wspace=0.95,
                                  width_ratios=[0.8, 1.25, 1.0])
        # (a) label types
        ax = fig.add_subplot(gs[0])
        counts = [int((result.label_type == t).sum()) for t in range(len(types))]
        names = [f"{grouping}", "colour", "none"]
        ax.bar(range(3), counts, color=[CATEGORICAL[0], CATEGORICAL[1], OTHER])
        ax.axhline(p["expected_by_chance"], xmin=0.02, xmax=0.31, color="k", ls="--", lw=1)
        ax.set_xticks(range(3))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_ylabel("units")
        ax.set_title(f"label types, {U} units", fontsize=8)
        for i, c in enumerate(counts):
            ax.text(i, c, str(c), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(counts) * 1.18 + 1)
        # (b) groups of the group units
        ax = fig.add_subplot(gs[1])
        sel = result.label_type == 0
        tops = np.array(p["top_group"])[sel] if sel.any() else np.array([], str)
        gnames, gc = np.unique(tops, return_counts=True) if tops.size else (np.array([]), np.array([]))
        order = np.argsort(-gc, kind="stable")[:10]
        ax.barh(np.arange(len(order)), gc[order], color=CATEGORICAL[0])
        ax.set_yticks(np.arange(len(order)))
        ax.set_yticklabels([short(str(g), 22) for g in gnames[order]], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("units")
        ax.set_title(f"{grouping}-selective units by {grouping}", fontsize=8)
        if not len(order):
            ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", fontsize=7)
        # (c) purity against chance
        ax = fig.add_subplot(gs[2])
        k = int(p["k"])
        bins = np.arange(0, k + 2) - 0.5
        ax.hist(np.array(p["top_count"]), bins=bins, color=CATEGORICAL[0], alpha=0.85)
        ax.axvline(p["chance_purity"] * k, color="k", ls="--", lw=1, label=f"chance mean {p['chance_purity'] * k:.1f}")
        ax.set_xlabel(f"top-{k} images in the unit's commonest {grouping}")
        ax.set_ylabel("units")
        ax.set_xlim(0.5, k + 0.5)
        ax.legend(frameon=False, fontsize=7, loc="upper right")
        ax.set_title(f"purity (mean {np.mean(p['top_count']):.1f} of {k})", fontsize=8)
        # examples
        ex_top = charts_bottom * height - 0.55
        fig.text(0.5, (ex_top + 0.3) / height, f"example units: top {m} images, dimmed outside the unit's map "
                 f"thresholded at {p['threshold']:g} x its largest activation", ha="center", fontsize=7.5)
        for e in range(E):
            u = int(result.example_units[e])
            r, c = divmod(e, per_row)
            x0 = 0.08 + c * block_w
            y_top = ex_top - r * unit_h
            t = int(result.label_type[u])
            best = int(np.argmax(result.colour_iou[u]))
            if t == 0:
                what = f"{short(p['top_group'][u], 20)} {p['top_count'][u]}/{k}, p={result.p_value[u]:.1g}"
            elif t == 1:
                what = f"colour {colours[best]}, IoU {result.colour_iou[u, best]:.2f}"
            else:
                what = f"{short(p['top_group'][u], 20)} {p['top_count'][u]}/{k} (n.s.)"
            title = f"unit {int(result.units[u])}: {what}; SI {result.selectivity[u]:.2f}"
            fig.text(x0 / width, (y_top - 0.02) / height, title, fontsize=7, va="top",
                     color=CATEGORICAL[0] if t == 0 else (CATEGORICAL[1] if t == 1 else "0.3"))
            for j in range(m):
                ax = fig.add_axes([(x0 + j * tile) / width, (y_top - 0.2 - tile) / height, (tile - 0.04) / width,
                                   (tile - 0.04) / height])
                bare(ax)
                ax.imshow(_shown(result.example_images[e, j], result.example_masks[e, j]))
                ax.contour(result.example_masks[e, j].astype(float), levels=[0.5], colors=["yellow"], linewidths=0.6)
        fig.suptitle(f"Unit semantics at {p['layer']} — {model_label(result.provenance, p)}", fontsize=8.5,
                     y=1 - 0.08 / height, va="top")
    return fig
