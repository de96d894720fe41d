"""The linear-probe figure (Zeiler & Fergus Table 7 / Fig. 9): held-out accuracy of a linear
classifier against the layer it reads, with the chance level; beside it, which groups become
separable where (held-out recall per group and layer)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..style import DEFAULT_WIDTH, RC, SEQUENTIAL, SUPTITLE_PT, layer_name, lines_of, model_label, short, wrap


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    layers = [layer_name(a, t) for a, t in zip(p["layers"], p.get("layer_types") or [None] * len(p["layers"]))]
    L, G = result.recall.shape
    acc = result.fold_accuracy
    x = np.arange(L)
    side = layout == "row" and width >= 5.5
    panel_h = max(2.2, 0.16 * G + 0.9)
    title = wrap(f"Linear probes per layer — {model_label(result.provenance, p)}", width - 0.1, SUPTITLE_PT)
    head = 0.25 + 0.15 * lines_of(title)
    height = panel_h + 0.6 + head if side else 2.3 + panel_h + 0.85 + head
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        if side:
            gs = fig.add_gridspec(1, 2, width_ratios=[1.0, 1.05], left=0.08, right=0.93, bottom=0.85 / height,
                                  top=1 - head / height, wspace=0.75)
            ax, hm = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        else:
            gs = fig.add_gridspec(2, 1, height_ratios=[2.0, panel_h], left=0.32, right=0.88, bottom=0.9 / height,
                                  top=1 - head / height, hspace=0.75)
            ax, hm = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        mean, sd = acc.mean(1), acc.std(1)
        ax.fill_between(x, mean - sd, mean + sd, color="C0", alpha=0.2, lw=0)
        ax.plot(x, mean, "o-", color="C0", ms=3.5, lw=1.4, label=f"linear probe ({p['folds']}-fold, ±1 sd)")
        ax.axhline(p["chance"], color="0.4", ls="--", lw=1, label="chance (largest group)")
        ax.set_xticks(x)
        ax.set_xticklabels([short(a, 16) for a in layers], rotation=40, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        for xi, m, d in zip(x, mean, result.dims):
            ax.annotate(f"{m:.2f}", (xi, m), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.legend(loc="upper left", frameon=False, fontsize=7)
        ax.set_xlabel("layer (shallow to deep)")
        what = "families" if p["grouping"] == "family" else "labels"
        ax.set_title(f"{p['num_images']} images, {G} {what}", fontsize=8)
        im = hm.imshow(result.recall.T, aspect="auto", cmap=SEQUENTIAL, vmin=0, vmax=1, interpolation="nearest")
        hm.set_xticks(x)
        hm.set_xticklabels([short(a, 16) for a in layers], rotation=40, ha="right", fontsize=7)
        hm.set_yticks(np.arange(G))
        hm.set_yticklabels([f"{short(g, 26)} ({c})" for g, c in zip(p["groups"], p["group_counts"])], fontsize=7)
        hm.set_title("held-out recall per group", fontsize=8)
        cb = fig.colorbar(im, ax=hm, fraction=0.05, pad=0.03)
        cb.set_label("recall", fontsize=7)
        cb.ax.tick_params(labelsize=7)
        fig.suptitle(title, fontsize=SUPTITLE_PT, y=1 - 0.05 / height, va="top")
    return fig
