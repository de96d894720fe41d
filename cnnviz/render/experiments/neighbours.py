"""The nearest-neighbour figure in the layout of Krizhevsky et al. 2012 Fig. 4 (right): each row a
query (first column) and its nearest data-set images by the layer's feature vector, nearest
first, with the distance; with labels, neighbours of the query's group are framed."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from ..style import DEFAULT_WIDTH, RC, SUPTITLE_PT, bare, fit, layer_name, max_height, lines_of, model_label, short, wrap

SAME = (0.1, 0.6, 0.2)


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    Q, K = result.distance.shape
    cols = K + 1
    gap = 0.12  # inches between the query column and its neighbours
    tile = (width - 0.1 - gap) / cols
    label_h = 0.36  # two 7 pt lines under each tile
    title = wrap(f"Nearest neighbours in feature space — {model_label(result.provenance, p)}", width - 0.1, SUPTITLE_PT)
    what = wrap(f"{K} nearest by {p['metric']} distance of pooled {layer_name(p['layer'], p.get('layer_type'))} features, nearest first",
                width - 0.2 - tile, 7.0)
    head = 0.15 + 0.15 * lines_of(title) + 0.13 * lines_of(what) + 0.08
    note = None
    if p.get("hit_rate") is not None:
        framed = any(g is not None and qg is not None and g == qg
                     for qg, gs in zip(p.get("query_groups") or [], p.get("neighbour_groups") or []) for g in gs)
        unlabelled = not any(g is not None for g in (p.get("query_groups") or []))
        first = (f"framed: same {p['grouping']} as the query" if framed else
                 f"no query has a {p['grouping']} (unlabelled), so none is framed" if unlabelled else
                 f"framed: same {p['grouping']} as the query (none here)")
        note = wrap(f"{first}. Over the data set ({p['num_labelled']} images, "
                    f"leave-one-out): {100 * p['hit_rate']:.0f}% of the {K} nearest share the {p['grouping']}, "
                    f"chance {100 * p['hit_chance']:.0f}%", width - 0.2, 7.0)
    foot = 0.1 + (0.13 * lines_of(note) + 0.05 if note else 0)
    tile *= fit(lambda f: head + Q * (tile * f + label_h) + foot, max_height(width))  # many queries: smaller
    height = head + Q * (tile + label_h) + foot
    ox = (width - 0.1 - gap - cols * tile) / 2  # the tiles centred when they shrank
    qgroups = p.get("query_groups") or [None] * Q
    ngroups = p.get("neighbour_groups") or [[None] * K] * Q
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        for q in range(Q):
            y0 = height - head - (q + 1) * (tile + label_h) + label_h
            for j in range(cols):
                x0 = ox + 0.05 + j * tile + (gap if j else 0)
                ax = fig.add_axes([x0 / width, y0 / height, (tile - 0.05) / width, (tile - 0.05) / height])
                bare(ax)
                if j == 0:
                    ax.imshow(result.queries[q])
                    n = max(6, int(tile * 13))  # characters a tile's width holds at 7 pt
                    qlabels = p.get("query_labels") or []
                    name = short(str(qlabels[q] if q < len(qlabels) and qlabels[q] else p["query_names"][q]), n)
                    text = name + (f"\n{short(str(qgroups[q]), n)}" if qgroups[q] is not None else "")
                    ax.set_xlabel(text, fontsize=7, labelpad=2, fontweight="bold")
                    continue
                ax.imshow(result.neighbours[q, j - 1])
                g = ngroups[q][j - 1]
                if g is not None and qgroups[q] is not None and g == qgroups[q]:
                    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=2.5, ec=SAME,
                                           clip_on=False))
                name = str(result.files[int(result.index[q, j - 1])]).rsplit("/", 1)[-1]
                labels = p.get("neighbour_labels")
                if labels and labels[q][j - 1]:
                    name = labels[q][j - 1]  # the class, where the labels name one
                n = max(6, int(tile * 13))
                ax.set_xlabel(f"{short(name, n)}\nd = {result.distance[q, j - 1]:.3g}", fontsize=7, labelpad=2)
        fig.text((ox + 0.05) / width + 0.5 * (tile - 0.05) / width, (height - head + 0.04) / height, "query", ha="center",
                 va="bottom", fontsize=7, fontweight="bold")
        fig.text((ox + 0.05 + gap + tile * (1 + K / 2)) / width, (height - head + 0.04) / height, what, ha="center",
                 va="bottom", fontsize=7)
        fig.suptitle(title, fontsize=SUPTITLE_PT, y=1 - 0.05 / height, va="top")
        if note:
            fig.text(0.5, 0.08 / height, note, ha="center", va="bottom", fontsize=7, color="0.2")
    return fig
