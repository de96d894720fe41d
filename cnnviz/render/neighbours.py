"""The nearest-neighbour figure in the layout of Krizhevsky et al. 2012 Fig. 4 (right): each row a
query (first column) and its nearest data-set images by the layer's feature vector, nearest
first, with the distance; with labels, neighbours of the query's group are framed."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from .style import DEFAULT_WIDTH, RC, bare, model_label, short

SAME = (0.1, 0.6, 0.2)


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    Q, K = result.distance.shape
    cols = K + 1
    gap = 0.12  # inches between the query column and its neighbours
    tile = (width - 0.1 - gap) / cols
    label_h = 0.36  # two 7 pt lines under each tile
    head = 0.55
    foot = 0.3 if p.get("hit_rate") is not None else 0.1
    height = head + Q * (tile + label_h) + foot
    qgroups = p.get("query_groups") or [None] * Q
    ngroups = p.get("neighbour_groups") or [[None] * K] * Q
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        for q in range(Q):
            y0 = height - head - (q + 1) * (tile + label_h) + label_h
            for j in range(cols):
                x0 = 0.05 + j * tile + (gap if j else 0)
                ax = fig.add_axes([x0 / width, y0 / height, (tile - 0.05) / width, (tile - 0.05) / height])
                bare(ax)
                if j == 0:
                    ax.imshow(result.queries[q])
                    name = short(str(p["query_names"][q]), 20)
                    text = name + (f"\n{short(str(qgroups[q]), 20)}" if qgroups[q] is not None else "")
                    ax.set_xlabel(text, fontsize=7, labelpad=2, fontweight="bold")
                    continue
                ax.imshow(result.neighbours[q, j - 1])
                g = ngroups[q][j - 1]
                if g is not None and qgroups[q] is not None and g == qgroups[q]:
                    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=2.5, ec=SAME,
                                           clip_on=False))
                file = str(result.files[int(result.index[q, j - 1])]).rsplit("/", 1)[-1]
                ax.set_xlabel(f"{short(file, 18)}\nd = {result.distance[q, j - 1]:.3g}", fontsize=7, labelpad=2)
        fig.text(0.05 / width + 0.5 * (tile - 0.05) / width, 1 - 0.38 / height, "query", ha="center", fontsize=7.5,
                 fontweight="bold")
        fig.text((0.05 + gap + tile * (1 + K / 2)) / width, 1 - 0.38 / height,
                 f"{K} nearest by {p['metric']} distance of pooled {p['layer']} features, nearest first",
                 ha="center", fontsize=7.5)
        fig.suptitle(f"Nearest neighbours in feature space — {model_label(result.provenance, p)}", fontsize=8.5,
                     y=1 - 0.06 / height, va="top")
        if p.get("hit_rate") is not None:
            fig.text(0.5, 0.1 / height,
                     f"framed: same {p['grouping']} as the query. Over the data set ({p['num_labelled']} images, "
                     f"leave-one-out): {100 * p['hit_rate']:.0f}% of the {K} nearest share the {p['grouping']}, "
                     f"chance {100 * p['hit_chance']:.0f}%", ha="center", fontsize=7, color="0.2")
    return fig
