"""The strategies figure (SpRAy, Lapuschkin et al. 2019): per class a row, first the t-SNE embedding
of the class's maps coloured by cluster, then each cluster's mean map over its most central image,
with its size, its accuracy and, for a possible shortcut, the flag and where it sits."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..style import CATEGORICAL, DEFAULT_WIDTH, RC, Panels, bare, class_label, model_label

MAX_CLUSTERS_DRAWN = 4  # per class: the largest ones, and every flagged one in their place
FLAG = (0.8, 0.1, 0.1)


def _where(y: float, x: float) -> str:
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"


def _drawn(result, cls: int) -> list[int]:
    qs = [int(q) for q in np.flatnonzero(result.cluster_class == cls)]
    flagged = [q for q in qs if result.cluster_flag[q]]
    rest = [q for q in qs if not result.cluster_flag[q]]
    keep = flagged + rest[: max(0, MAX_CLUSTERS_DRAWN - len(flagged))]
    return sorted(keep)


def _classes(result, classes, limit: int) -> list[int]:
    if classes is not None:
        names = {str(v).lower(): int(k) for k, v in (result.params.get("class_names") or {}).items()}
        asked = [names.get(str(c).lower(), c) for c in (classes if isinstance(classes, (list, tuple)) else [classes])]
        return [int(c) for c in asked if int(c) in set(result.classes.tolist())]
    all_ = [int(c) for c in result.classes]
    flagged = [c for c in all_ if result.cluster_flag[result.cluster_class == c].any()]
    return (flagged + [c for c in all_ if c not in flagged])[:limit]


def _check(result) -> None:
    """Indices that pass the arrays' schema but point nowhere: one line naming the array."""
    from ...errors import ResultError

    Q, K = len(result.cluster_class), len(result.classes)
    problems = [("cluster", result.cluster.size and (result.cluster.min() < 0 or result.cluster.max() >= Q)),
                ("cluster_class", not set(result.cluster_class.tolist()) <= set(result.classes.tolist())),
                ("classes", K == 0 or not set(result.classes.tolist()) <= set(result.image_class.tolist())),
                ("rep_index", result.rep_index.size and (result.rep_index.min() < -1
                                                         or result.rep_index.max() >= len(result.files))),
                ("cluster_reasons", len(result.params["cluster_reasons"]) != Q)]
    for name, bad in problems:
        if bad:
            raise ResultError(f"the saved strategies result is inconsistent: {name!r} points outside the clusters, "
                              "classes or files it holds; compute it again with cnnviz strategies")


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row", classes=None, max_classes: int = 4):
    """`classes`: which to draw (names or indices; default the classes with a flagged cluster first,
    then the others, at most `max_classes`)."""
    _check(result)
    p = result.params
    shown = _classes(result, classes, max_classes)
    per = 1 + max(len(_drawn(result, c)) for c in shown)
    titles, feet, cells = [], [], []
    method = p.get("method_label") or p.get("method", "?")
    for c in shown:
        members = result.image_class == c
        k = int(result.class_k[list(result.classes).index(c)])
        how = "eigengap" if p.get("n_clusters") is None else "given"
        titles.append(f"{class_label(result, c)}: {int(members.sum())} images, {k} cluster{'s' * (k != 1)} ({how})")
        feet.append("t-SNE of the maps")
        cells.append(("tsne", c))
        drawn = _drawn(result, c)
        order = [int(q) for q in np.flatnonzero(result.cluster_class == c)]
        for q in drawn:
            j = order.index(q) + 1
            size = int(result.cluster_size[q])
            acc = (f", {100 * result.cluster_correct[q] / size:.0f} % right" if result.cluster_correct[q] >= 0 else "")
            titles.append(f"cluster {j}: {size} image{'s' * (size != 1)}{acc}")
            m = result.cluster_maps[q]
            y, x = np.unravel_index(int(np.argmax(m)), m.shape)
            where = _where((y + 0.5) / m.shape[0], (x + 0.5) / m.shape[1])
            if result.cluster_flag[q]:
                feet.append(f"SHORTCUT? half its mass on {100 * result.cluster_area[q]:.0f} % of the crop, {where}")
            else:
                feet.append(f"half its mass on {100 * result.cluster_area[q]:.0f} % of the crop")
            cells.append(("cluster", q))
        for _ in range(per - 1 - len(drawn)):
            titles.append("")
            feet.append("")
            cells.append(("empty", None))
    nflag = int(result.cluster_flag.sum())
    more = len(result.classes) - len(shown)
    head = (f"Strategies (SpRAy) of {model_label(result.provenance, p)}: {method} maps of "
            f"{p.get('explained_class', 'each image')}, clustered per class; each cluster's mean map over its most "
            f"central image. {nflag} cluster{'s' * (nflag != 1)} flagged as a possible shortcut"
            + (f"; {more} more class{'es' * (more != 1)} in the result, not drawn" if more > 0 else ""))
    with plt.rc_context(RC):
        lay = Panels(len(cells), width, layout, titles=titles, feet=feet, head=head, groups=per, min_panel=1.25,
                     max_picture=1.6, title_lines=2, legend_in=0.5)
        im = None
        for ax, (what, v), foot in zip(lay.axes, cells, feet):
            bare(ax)
            if what == "empty":
                ax.set_axis_off()
            elif what == "tsne":
                _scatter(ax, result, v)
            else:
                q = v
                rep = result.rep_images[q, 0]
                ax.imshow(rep, extent=(0, 1, 1, 0))
                m = result.cluster_maps[q]
                im = ax.imshow(m / max(float(m.max()), 1e-12), cmap="inferno", vmin=0, vmax=1, alpha=0.55,
                               extent=(0, 1, 1, 0), interpolation="bilinear")
                ax.set_xlim(0, 1)
                ax.set_ylim(1, 0)
                order = [int(x) for x in np.flatnonzero(result.cluster_class == result.cluster_class[q])]
                colour = CATEGORICAL[order.index(q) % len(CATEGORICAL)]
                for s in ax.spines.values():
                    s.set_edgecolor(FLAG if result.cluster_flag[q] else colour)
                    s.set_linewidth(3 if result.cluster_flag[q] else 2)
        for k in range(len(cells)):
            lay.foot(k)
        for t in lay.fig.texts:
            if t.get_text().startswith("SHORTCUT?"):
                t.set_color(FLAG)
        if im is not None:
            lay.strip_colorbar(im, "cluster's mean map, share of its peak" if width < 5 else
                               "cluster's mean map, share of its peak (each member's map scaled to sum 1)")
    return lay.fig


def _scatter(ax, result, c: int) -> None:
    members = np.flatnonzero(result.image_class == c)
    order = [int(q) for q in np.flatnonzero(result.cluster_class == c)]
    e = result.embedding[members]
    known = result.labels[members] >= 0
    wrong = known & (result.predicted[members] != result.labels[members])
    for j, q in enumerate(order):
        sel = result.cluster[members] == q
        colour = FLAG if result.cluster_flag[q] else CATEGORICAL[j % len(CATEGORICAL)]
        ax.scatter(e[sel & ~wrong, 0], e[sel & ~wrong, 1], s=10, color=colour, lw=0)
        ax.scatter(e[sel & wrong, 0], e[sel & wrong, 1], s=14, color=colour, marker="x", lw=0.9)
    for j, q in enumerate(order):
        sel = result.cluster[members] == q
        if sel.any():
            cx, cy = e[sel].mean(0)
            ax.annotate(str(j + 1), (cx, cy), fontsize=7, ha="center", va="center", fontweight="bold",
                        color="black", bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    pad = 0.08 * max(float(np.ptp(e[:, 0])) if len(e) else 1.0, float(np.ptp(e[:, 1])) if len(e) else 1.0, 1e-6)
    if len(e):
        ax.set_xlim(e[:, 0].min() - pad, e[:, 0].max() + pad)
        ax.set_ylim(e[:, 1].min() - pad, e[:, 1].max() + pad)
    ax.set_aspect("auto")
    if wrong.any():
        ax.text(0.02, 0.02, "x: misclassified", transform=ax.transAxes, fontsize=7, va="bottom")
