"""The TCAV figure (Kim et al. 2018, Fig. 4 style): per layer, for each class a bar per concept (the
mean TCAV score over the random runs, ±1 sd, each run a dot) beside the random-vs-random runs'
scores (gray: what a concept that means nothing gets), a star over a significant concept
(Bonferroni-corrected two-sided t-test against the random runs)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..style import DEFAULT_WIDTH, RC, SUPTITLE_PT, layer_label, lines_of, max_height, model_label, short, wrap

RANDOM = "0.6"


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    concepts, classes, layers = list(p["concepts"]), list(p["class_names"]), list(p["layers"])
    C, K, L = len(concepts), len(classes), len(layers)
    types = p.get("layer_types") or [None] * L
    cols = 1 if (L == 1 or width < 5.5) else 2
    if layout == "grid":
        cols = max(1, min(L, round(math.sqrt(L)))) if width >= 5.5 else 1
    rows = math.ceil(L / cols)
    title = wrap(f"TCAV — {model_label(result.provenance, p)}: does a concept move the class's logit?",
                 width - 0.1, SUPTITLE_PT)
    runs = int(p["random_runs"])
    acc = result.cav_accuracy.mean(axis=(1, 2)) if result.cav_accuracy is not None else None
    sub = wrap(f"{runs} runs, each a CAV against {p['random_size']} random images (random: a random set's CAV); "
               f"bar ±1 sd, a dot per run; * significant, Bonferroni p < {p['alpha']:g} over {p['tests']} tests",
               0.85 * width, 7)  # wrap's width per character is an estimate: a margin so no line runs off
    head = 0.2 + 0.15 * lines_of(title) + 0.13 * lines_of(sub)
    labels = [f"{short(c, 20)}" + (f" (CAV acc. {acc[i]:.2f})" if acc is not None else "") for i, c in enumerate(concepts)]
    legend_cols = max(1, min(C + 2, int(width // 2.2)))
    legend_h = 0.2 * math.ceil((C + 2) / legend_cols) + 0.1
    uniform = list(p.get("uniform_signs") or [False] * L)
    note = wrap("every image agrees in sign in every run (scores 0 or 1): the gradient hardly depends on the image "
                "here; use an earlier layer", width / cols - 0.7, 7)
    tick_h = 0.45
    title_h = 0.3 + (0.14 * lines_of(note) if any(uniform) else 0)
    limit = max_height(width)
    panel_h = min(2.4, max(0.8, (limit - head - legend_h - 0.1) / rows - tick_h - title_h)) if math.isfinite(limit) \
        else 2.4
    height = head + rows * (panel_h + tick_h + title_h) + legend_h
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        gs = fig.add_gridspec(rows, cols, left=0.75 / width, right=1 - 0.1 / width, top=1 - (head + title_h) / height,
                              bottom=(legend_h + tick_h) / height, hspace=(tick_h + title_h) / panel_h,
                              wspace=0.6 / max(1.0, (width - 1) / cols))
        group = C + 1.6
        for li in range(L):
            ax = fig.add_subplot(gs[li // cols, li % cols])
            for k in range(K):
                x0 = k * group
                for c in range(C + 1):
                    x = x0 + c
                    if c < C:
                        runs_c, mean, sd = result.scores[c, k, li], result.score_mean[c, k, li], result.score_std[c, k, li]
                        colour = f"C{c % 10}"
                    else:
                        runs_c, mean, sd = result.scores[C, k, li], result.random_mean[k, li], result.random_std[k, li]
                        colour = RANDOM
                    ax.bar(x, mean, 0.8, color=colour, alpha=0.45 if c < C else 0.35, edgecolor=colour, lw=0.8)
                    spread = [[min(sd, mean)], [min(sd, 1 - mean)]]  # ±1 sd, inside the scores' range [0, 1]
                    ax.errorbar(x, mean, yerr=spread, color="0.15", lw=0.9, capsize=2)
                    jitter = (np.arange(len(runs_c)) / max(1, len(runs_c) - 1) - 0.5) * 0.5
                    ax.scatter(x + jitter, runs_c, s=5, color=colour if c < C else "0.35", zorder=3, lw=0)
                    if c < C and bool(result.significant[c, k, li]):
                        ax.text(x, min(1.0, mean + sd) + 0.03, "*", ha="center", va="bottom", fontsize=11,
                                fontweight="bold")
            ax.set_xticks([k * group + C / 2 for k in range(K)])
            ax.set_xticklabels([f"{short(cls, 18)}\n({int(n)} images)" for cls, n in zip(classes, result.class_counts)],
                               fontsize=7)
            ax.set_xlim(-0.8, (K - 1) * group + C + 0.8)
            ax.set_ylim(0, 1.15)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
            ax.set_ylabel("TCAV score", fontsize=7)
            ax.grid(axis="y", alpha=0.3)
            if uniform[li]:
                ax.annotate(note, xy=(0.5, 1), xycoords="axes fraction", xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, color="C3")
            ax.set_title(wrap(f"{layer_label(layers[li], types[li])} ({layers[li]})", width / cols - 0.6, 8), fontsize=8,
                         pad=4 + (9 * lines_of(note) if uniform[li] else 0))
        handles = [Patch(facecolor=f"C{c % 10}", alpha=0.6, label=labels[c]) for c in range(C)]
        handles.append(Patch(facecolor=RANDOM, alpha=0.5, label="random (random-vs-random runs)"))
        handles.append(Line2D([], [], ls="none", marker="$*$", color="k", ms=7, label="significant"))
        fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        fig.suptitle(title, fontsize=SUPTITLE_PT, y=1 - 0.05 / height, va="top")
        fig.text(0.5, 1 - (0.08 + 0.15 * lines_of(title)) / height, sub, ha="center", va="top", fontsize=7)
    return fig
