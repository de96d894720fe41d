"""The invariance figure in the layout of Zeiler & Fergus Fig. 5: one block per transform; in each,
transformed copies of the first image, the feature distance at each chosen layer, and the
probability of each image's class, one curve per image. At a page's width a block is one row; at
a column's width its panels wrap onto more rows."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..style import CATEGORICAL, DEFAULT_WIDTH, RC, bare, fit, grid_shape, max_height, short, wrap

UNITS = {"translate": "vertical shift (px)", "scale": "scale", "rotate": "rotation (°)"}
TITLES = {"translate": "vertical translation", "scale": "scale", "rotate": "rotation"}
PANEL_H = 1.45  # inches of one row of panels, axis labels included
MIN_PANEL = 1.65  # inches of width one panel needs for its 7 pt tick labels


def _value_text(kind: str, v: float) -> str:
    return f"{v:+.0f} px" if kind == "translate" else (f"×{v:.1f}" if kind == "scale" else f"{v:.0f}°")


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """The figure `width` inches wide. Each transform's panels (examples, one distance per layer,
    probability) sit in one row when they fit, else wrap ("grid": as square as they allow)."""
    p = result.params
    kinds, layers = list(p["transforms"]), list(p.get("layer_labels") or p["layers"])
    n_img, n_layers = result.distance.shape[0], len(layers)
    names = [f"{short(str(n), 18)} ({short(str(c), 16)})" for n, c in zip(p.get("names", []), p["class_names"])]
    per_block = n_layers + 2
    label_w = 0.22  # the transform's name, written sideways at the left
    rows, cols = grid_shape(per_block, width - label_w, layout, min_panel=MIN_PANEL)
    if len(kinds) * rows * 1.1 + 2.5 > max_height(width) and cols < per_block:  # too tall: one more column
        rows, cols = grid_shape(per_block, width - label_w, layout, min_panel=(width - label_w) / (cols + 1) - 0.01)
    left = label_w + (0.45 if rows > 1 else 0.0)  # wrapped rows start with a plot whose y label needs room
    legend_rows = math.ceil(n_img / max(1, int(width // 2.4)))
    gap = 0.7  # inches between transform blocks: x labels above, titles below
    fixed = gap * (len(kinds) - 1) + 0.2 + 0.2 * legend_rows + 0.45
    # at most a page: lower panels (each keeps at least 1.1 in for its title, plot and x label)
    panel_h = PANEL_H * fit(lambda f: len(kinds) * rows * PANEL_H * f + fixed, max_height(width), lo=1.1 / PANEL_H)
    height = len(kinds) * rows * panel_h + fixed
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        outer = fig.add_gridspec(len(kinds), 1, left=left / width, right=1 - 0.06 / width,
                                 top=1 - 0.2 / height, bottom=(0.2 * legend_rows + 0.45) / height,
                                 hspace=gap / (rows * panel_h))
        lines = []
        for r, kind in enumerate(kinds):
            values = result.values[r]
            keep = ~np.isnan(values)
            x = values[keep]
            block = outer[r].subgridspec(rows, cols, wspace=0.55, hspace=0.95)
            slots = [block[k // cols, k % cols] for k in range(per_block)]
            box = outer[r].get_position(fig)
            fig.text(0.45 * label_w / width, box.y0 + box.height / 2, TITLES[kind], rotation=90, ha="center",
                     va="center", fontsize=8, fontweight="bold")
            strip = slots[0].subgridspec(2, 3, wspace=0.05, hspace=0.35)
            for e in range(min(result.examples.shape[1], 5)):
                ax = fig.add_subplot(strip[e // 3, e % 3])
                ax.imshow(result.examples[r, e])
                bare(ax)
                ax.set_title(_value_text(kind, float(result.example_values[r, e])), fontsize=7, pad=1.5)
            axes = []
            for li, layer in enumerate(layers):
                ax = fig.add_subplot(slots[1 + li])
                for n in range(n_img):
                    ax.plot(x, result.distance[n, r, li][keep], color=CATEGORICAL[n % 10], lw=1.1, marker="o", ms=1.8)
                ax.set_title(wrap(f"distance at {layer}", ax.get_position().width * width, 7), fontsize=7)
                ax.set_ylabel("relative distance", fontsize=7)
                ax.set_ylim(bottom=0)
                axes.append(ax)
            ax = fig.add_subplot(slots[-1])
            for n in range(n_img):
                (ln,) = ax.plot(x, result.prob[n, r][keep], color=CATEGORICAL[n % 10], lw=1.1, marker="o", ms=1.8)
                if r == 0:
                    lines.append(ln)
            ax.set_ylim(0, 1)
            ax.set_title("P(image's class)", fontsize=7)
            axes.append(ax)
            for a in axes:
                a.set_xlabel(UNITS[kind], fontsize=7, labelpad=1)
                a.grid(alpha=0.3)
                a.tick_params(labelsize=7, pad=1.5)
                if kind == "rotate":
                    a.set_xticks([0, 90, 180, 270])
        fig.legend(lines, names, loc="lower center", ncol=max(1, min(n_img, int(width // 2.4))), frameon=False,
                   fontsize=7, bbox_to_anchor=(0.5, 0.0), handlelength=1.5, columnspacing=1.0)
    return fig
