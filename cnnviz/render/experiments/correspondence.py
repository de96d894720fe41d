"""The correspondence figure: the images with each part's box (and one random draw's, dashed), as
Zeiler & Fergus Fig. 6 shows them, above the table of their Table 1: one row per part and one for
the random boxes, one column per layer, the normalized Delta with its spread (lower = the sign of
the feature change agrees more across the images)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..style import CATEGORICAL, DEFAULT_WIDTH, RC, bare, short, wrap

ROW_IN = 0.36  # inches per table row (two lines of 7 pt)


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """`width` inches wide: the images in rows of as many as fit (1.1 in each at least; "grid":
    about square), the table under them."""
    p = result.params
    parts, layers = list(p["parts"]), list(p.get("layer_labels") or p["layers"])
    N, P, L = result.images.shape[0], len(parts), len(layers)
    cols = max(1, min(N, int((width - 0.2) // 1.1)))
    if layout == "grid":
        cols = min(cols, math.ceil(math.sqrt(N)))
    rows = math.ceil(N / cols)
    pic = min((width - 0.2 - (cols - 1) * 0.1) / cols, 1.6)
    title_in = 0.2
    legend_in = 0.3
    first_col = min(1.5, 0.25 * width)
    table_h = ROW_IN * (P + 2.4) + 0.05
    note = wrap("Δ: share of features whose sign of change (image − occluded) differs between two images, mean "
                "over image pairs (± std over pairs); random: a box of the parts' mean size at random"
                + (f" in the {p['random_within']!r} box" if p.get("random_within") else "") + ", mean (± std) "
                f"over {p['draws']} draws; p: share of random draws with Δ at or below the part's. Lower = more "
                "consistent.", width - 0.3, 7)
    note_in = 7 * 1.22 / 72 * (note.count("\n") + 1) + 0.1
    height = 0.1 + rows * (pic + title_in) + 0.08 * (rows - 1) + legend_in + table_h + note_in + 0.1
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        x0 = (width - cols * pic - (cols - 1) * 0.1) / 2
        colors = [CATEGORICAL[k % 10] for k in range(P)]
        for n in range(N):
            r, c = divmod(n, cols)
            top = 0.1 + r * (pic + title_in + 0.08) + title_in
            ax = fig.add_axes([(x0 + c * (pic + 0.1)) / width, 1 - (top + pic) / height, pic / width, pic / height])
            ax.imshow(result.images[n])
            bare(ax)
            ax.set_title(short(str(p["names"][n]), max(8, int(pic / 0.055))), fontsize=7, pad=2)
            for k in range(P):
                bx0, by0, bx1, by1 = result.part_boxes[k, n]
                ax.add_patch(Rectangle((bx0 - 0.5, by0 - 0.5), bx1 - bx0, by1 - by0, fill=False, lw=1.3,
                                       edgecolor=colors[k]))
            region = getattr(result, "region_boxes", None)
            if region is not None and len(region):
                bx0, by0, bx1, by1 = region[n]
                ax.add_patch(Rectangle((bx0 - 0.5, by0 - 0.5), bx1 - bx0, by1 - by0, fill=False, lw=0.8,
                                       edgecolor="white", ls=":"))
            if len(result.random_boxes):
                bx0, by0, bx1, by1 = result.random_boxes[0, n]
                ax.add_patch(Rectangle((bx0 - 0.5, by0 - 0.5), bx1 - bx0, by1 - by0, fill=False, lw=1.0,
                                       edgecolor="white", ls="--"))
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colors[k], lw=1.5) for k in range(P)]
        handles.append(Line2D([], [], color="0.4", lw=1.0, ls="--"))
        labels = [short(n, 24) for n in parts] + ["a random box (draw 1)"]
        region = getattr(result, "region_boxes", None)
        if region is not None and len(region):
            handles.append(Line2D([], [], color="0.4", lw=0.8, ls=":"))
            labels.append(f"region of the random boxes ({short(str(p.get('random_within')), 12)})")
        leg_top = 0.1 + rows * (pic + title_in) + 0.08 * (rows - 1)
        fig.legend(handles, labels, loc="center", bbox_to_anchor=(0.5, 1 - (leg_top + legend_in / 2) / height),
                   ncol=min(len(labels), max(1, int(width // 1.5))), fontsize=7, frameon=False, handlelength=1.6)

        # the table (Zeiler & Fergus Table 1)
        t_top = leg_top + legend_in
        ax = fig.add_axes([0.1 / width, 1 - (t_top + table_h) / height, (width - 0.2) / width, table_h / height])
        ax.set_xlim(0, width - 0.2)
        ax.set_ylim(P + 2.05, 0)
        ax.axis("off")
        col_w = (width - 0.2 - first_col) / max(L, 1)
        ax.text(0.05, 0.5, "occluded", fontsize=7, fontweight="bold", va="center")
        for li, layer in enumerate(layers):
            cx = first_col + (li + 0.5) * col_w
            ax.text(cx, 0.5, wrap(f"Δ at {layer}", col_w - 0.1, 7, lines=2), fontsize=7, fontweight="bold",
                    ha="center", va="center", linespacing=1.05)
        ax.axhline(1.0, color="0.3", lw=0.8)
        best = np.argmin(result.delta, axis=0)
        for k in range(P + 1):
            y = 1.5 + k
            label = short(parts[k], 22) if k < P else "random (same size)"
            ax.text(0.05, y, label, fontsize=7, va="center", color=colors[k] if k < P else "0.2",
                    fontweight="bold" if k < P else "normal")
            for li in range(L):
                cx = first_col + (li + 0.5) * col_w
                text = f"{result.delta[k, li]:.3f} ± {result.spread[k, li]:.3f}"
                if k < P:
                    text += ("   " if col_w >= 2.0 else "\n") + f"(p = {result.p_value[k, li]:.2f})"
                ax.text(cx, y, text, fontsize=7, ha="center", va="center", linespacing=1.0,
                        fontweight="bold" if best[li] == k else "normal")
        ax.axhline(P + 1.0, color="0.7", lw=0.5)
        fig.text(0.15 / width, 1 - (t_top + table_h + 0.05) / height, note, fontsize=7, va="top", linespacing=1.1)
    return fig
