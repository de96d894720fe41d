"""The invariance figure in the layout of Zeiler & Fergus Fig. 5: one row per transform; in each,
transformed copies of the first image, the feature distance at each chosen layer, and the
probability of each image's class, one curve per image."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .style import CATEGORICAL, RC, bare, short

UNITS = {"translate": "vertical shift (px)", "scale": "scale", "rotate": "rotation (°)"}
TITLES = {"translate": "vertical translation", "scale": "scale", "rotate": "rotation"}


def _value_text(kind: str, v: float) -> str:
    return f"{v:+.0f} px" if kind == "translate" else (f"×{v:.1f}" if kind == "scale" else f"{v:.0f}°")


def figure(result, width: float = 7.0):
    p = result.params
    kinds, layers = list(p["transforms"]), list(p.get("layer_labels") or p["layers"])
    n_img, n_rows, n_layers = result.distance.shape[0], len(kinds), len(layers)
    names = [f"{short(str(n), 18)} ({short(str(c), 16)})" for n, c in zip(p.get("names", []), p["class_names"])]
    cols = 1 + n_layers + 1
    row_h = 1.75
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, row_h * n_rows + 0.9))
        grid = fig.add_gridspec(n_rows, cols, width_ratios=[1.25] + [1] * (cols - 1), left=0.04, right=0.99,
                                top=1 - 0.3 / fig.get_figheight(), bottom=0.75 / fig.get_figheight(),
                                wspace=0.42, hspace=0.62)
        lines = []
        for r, kind in enumerate(kinds):
            values = result.values[r]
            keep = ~np.isnan(values)
            x = values[keep]
            strip = grid[r, 0].subgridspec(2, 3, wspace=0.04, hspace=0.3)
            for e in range(min(result.examples.shape[1], 5)):
                ax = fig.add_subplot(strip[e // 3, e % 3])
                ax.imshow(result.examples[r, e])
                bare(ax)
                ax.set_title(_value_text(kind, float(result.example_values[r, e])), fontsize=7, pad=1.5)
            box = grid[r, 0].get_position(fig)
            fig.text(0.012, box.y0 + box.height / 2, TITLES[kind], rotation=90, ha="center", va="center",
                     fontsize=9, fontweight="bold")
            for li, layer in enumerate(layers):
                ax = fig.add_subplot(grid[r, 1 + li])
                for n in range(n_img):
                    ax.plot(x, result.distance[n, r, li][keep], color=CATEGORICAL[n % 10], lw=1.2, marker="o", ms=2)
                ax.set_xlabel(UNITS[kind])
                if r == 0:
                    ax.set_title(f"feature distance at\n{short(layer, 26)}", fontsize=8)
                ax.set_ylabel("relative distance" if li == 0 else "")
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
            ax = fig.add_subplot(grid[r, cols - 1])
            for n in range(n_img):
                (ln,) = ax.plot(x, result.prob[n, r][keep], color=CATEGORICAL[n % 10], lw=1.2, marker="o", ms=2)
                if r == 0:
                    lines.append(ln)
            ax.set_ylim(0, 1)
            ax.set_xlabel(UNITS[kind])
            if r == 0:
                ax.set_title("probability of\nthe image's class", fontsize=8)
            ax.grid(alpha=0.3)
            if kind == "rotate":
                for a in fig.axes[-(n_layers + 1):]:
                    a.set_xticks([0, 90, 180, 270])
        fig.legend(lines, names, loc="lower center", ncol=min(n_img, 3), frameon=False, fontsize=7.5,
                   bbox_to_anchor=(0.5, 0.0))
    return fig
