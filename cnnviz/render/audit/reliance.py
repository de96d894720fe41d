"""The audit report's section on what the model relies on: failure slices (and the strategy
clusters and concept tests when the audit has them), with the sentences they add to the findings."""

from __future__ import annotations

from html import escape

import numpy as np

from . import figures as F

ANCHOR = "reliance"


def _overlay_thumb(ax, image: np.ndarray, amap: np.ndarray | None) -> None:
    """The image, with the map on top as colour whose opacity grows with the map's value (the low
    values leave the photo visible, even a dark one)."""
    import matplotlib

    ax.imshow(image)
    if amap is not None and np.isfinite(amap).any() and np.nanmax(amap) > 0:
        m = np.clip(np.nan_to_num(amap.astype(np.float32)), 0, None)
        m = m / m.max()
        rgba = matplotlib.colormaps["inferno"](m)
        rgba[..., 3] = 0.75 * m
        ax.imshow(rgba, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def slices_figure(result, rows: list[int], labels: list[str], width: float = 7.0):
    """One row per slice: its least confident images with the map of the method the slices use."""
    import matplotlib.pyplot as plt

    thumbs, index = result.slice_thumbs, result.slice_thumb_index
    cols = index.shape[1]
    cell, title = width / (cols + 1.6), 0.14  # inches: an image, and its title above it
    height = len(rows) * (cell + title) + 0.05
    fig, axes = plt.subplots(len(rows), cols, figsize=(width, height), squeeze=False,
                             gridspec_kw={"left": 1.6 / (cols + 1.6), "right": 0.995, "top": 1 - title / height,
                                          "bottom": 0.02 / height, "wspace": 0.04, "hspace": title / cell})
    method = int(result.params.get("slices_method", 0))
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c in range(cols):
            ax = axes[r, c]
            i = int(index[row, c])
            if i < 0:
                ax.axis("off")
                continue
            amap = result.strategy_maps[i, method] if result.strategy_maps is not None else None
            _overlay_thumb(ax, thumbs[row, c], amap)
            ax.set_title(_short(F.class_name(result, int(result.top5[i, 0]))), fontsize=6, pad=1.5)
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    return fig


def _short(name: str, limit: int = 16) -> str:
    """A class name that fits over a thumbnail: whole words up to `limit` characters."""
    if len(name) <= limit:
        return name
    words, out = name.replace(",", " ").split(), ""
    for w in words:
        if len(out) + len(w) + (1 if out else 0) > limit:
            break
        out = f"{out} {w}".strip()
    return out or name[:limit]


def _acc(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _slice_rows(result, by: str) -> tuple[list, list]:
    found = result.params.get(f"slices_by_{by}") or []
    offset = 0 if by == "features" else len(result.params.get("slices_by_features") or [])
    return found, list(range(offset, offset + len(found)))


def section(result, figs, number: int) -> str:
    """The HTML section (an empty string for an audit saved before it existed)."""
    p = result.params
    if "slices_by_features" not in p or result.slice_thumbs is None:
        return ""
    explain = ("Where the model fails, and whether its failures have something in common. The failures are the "
               "labelled images it gets wrong and every image whose top-1 probability is below "
               f"{p.get('slices_low_confidence', 0.5):.0%}. They are grouped by the model's own penultimate features "
               "(what it saw), and separately by the map of the most faithful method (where it looked). A group is a "
               "finding when the model's accuracy on the 10 images of the whole data set nearest to it is below what "
               "95 % of random groups of as many images reach: images like these fail, not only these. What a group's "
               "images share is stated only where it stands out from the data set (brightness, saturation, hue, "
               "where the map sits, class family).")
    method = F.method_name(str(result.methods[int(p.get("slices_method", 0))]))
    body = []
    for by, title in (("features", "Grouped by the penultimate features"), ("maps", f"Grouped by the {method} maps")):
        found, rows = _slice_rows(result, by)
        body.append(f"<h3 id='slices-{by}'>{escape(title)}</h3>")
        if by == "features" and not p.get("slices_features"):
            body.append("<p>The model has no final linear layer whose input could be read: no grouping by features."
                        "</p>")
            continue
        if not found:
            body.append("<p>No group of three or more failures (fewer failures, or none alike).</p>")
            continue
        table = []
        for k, s in enumerate(found):
            verdict = "finding" if s["finding"] else "no worse than random groups"
            table.append([k + 1, s["size"], s["wrong"], s["unsure"], _acc(s["neighbour_accuracy"]),
                          f"{_acc(s['random_accuracy'])} (5th pct. {_acc(s['random_accuracy_low'])})", verdict,
                          "; ".join(s["shares"]) or "nothing that stands out"])
        head = ["slice", "images", "wrong", "unsure", "accuracy near it", "random groups", "verdict", "its images share"]
        body.append(_table(head, table))
        labels = [f"slice {k + 1}\n{s['size']} images" for k, s in enumerate(found)]
        body.append(figs.add(f"slices-{by}", slices_figure(result, rows, labels),
                             f"failure slices grouped by {by}",
                             f"Each row: a slice's least confident images (title: the predicted class) with the "
                             f"{method} map of the predicted class."))
    return (f'<section id="{ANCHOR}">\n<h2>{number}. What the model relies on</h2>\n'
            + _strategies(result, figs) + _concepts(result, figs)
            + f'<h3 id="slices">Failure slices</h3>\n<p class="explain">{escape(explain)}</p>\n' + "\n".join(body)
            + "\n</section>")


MAX_STRATEGY_ROWS = 6


def _strategy_rows(result) -> list[tuple[int, dict, dict]]:
    """(row in strategy_mean_maps, class summary, cluster) of every cluster, in order."""
    out, z = [], 0
    for c in result.params.get("strategies") or []:
        for cl in c["clusters"]:
            out.append((z, c, cl))
            z += 1
    return out


def strategies_figure(result, rows, width: float = 7.0):
    """One row per cluster: its mean map, then its most typical members with their maps."""
    import matplotlib.pyplot as plt

    cols = result.strategy_thumb_index.shape[1] + 1
    cell, title = width / (cols + 1.4), 0.14
    height = len(rows) * (cell + title) + 0.05
    fig, axes = plt.subplots(len(rows), cols, figsize=(width, height), squeeze=False,
                             gridspec_kw={"left": 1.4 / (cols + 1.4), "right": 0.995, "top": 1 - title / height,
                                          "bottom": 0.02 / height, "wspace": 0.04, "hspace": title / cell})
    method = int(result.params.get("strategies_method", 0))
    for r, (z, c, cl) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(result.strategy_mean_maps[z], cmap="inferno", interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("mean map" + (" (flagged)" if cl["flag"] else ""), fontsize=6, pad=1.5,
                     color="#b00000" if cl["flag"] else "black")
        for j in range(cols - 1):
            i = int(result.strategy_thumb_index[z, j])
            if i < 0:
                axes[r, j + 1].axis("off")
                continue
            _overlay_thumb(axes[r, j + 1], result.strategy_thumbs[z, j], result.strategy_maps[i, method])
        label = f"{_short(F.class_name(result, int(c['class'])))}\ncluster of {cl['size']}/{c['images']}"
        ax.text(-0.08, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=7)
    return fig


def _strategies(result, figs) -> str:
    p = result.params
    summary = p.get("strategies")
    if summary is None:
        return ""
    method = F.method_name(str(result.methods[int(p.get("strategies_method", 0))]))
    explain = ("Does the model decide a class in more than one way? Spectral Relevance Analysis (SpRAy, Lapuschkin "
               f"et al. 2019) clusters each class's {method} maps (the true class where labelled, else the predicted "
               "one; classes of 6 images or more): a k-nearest-neighbour graph of the maps at 32 x 32, its "
               "Laplacian's eigengap for the number of clusters, k-means on the spectral embedding. A cluster is "
               "flagged as a possible shortcut when it holds a share of the class and its maps put their mass on a "
               "small region in the same place across its images (a watermark, a frame, a corner).")
    if not summary:
        return (f'<h3 id="strategies">Strategies (SpRAy)</h3>\n<p class="explain">{escape(explain)}</p>\n'
                "<p>No class has 6 images or more: nothing to cluster.</p>\n")
    table = [[F.class_name(result, int(c["class"])), c["images"], c["n_clusters"],
              "; ".join(f"{cl['size']}" + (f" ({cl['accuracy']:.0%} right)" if cl["accuracy"] is not None else "")
                        for cl in c["clusters"]),
              "; ".join(cl["reason"] for cl in c["clusters"] if cl["flag"]) or "none"] for c in summary]
    body = _table(["class", "images", "clusters", "cluster sizes", "flagged"], table)
    rows = _strategy_rows(result)
    flagged = [r for r in rows if r[2]["flag"]]
    pick = (flagged or [r for r in rows if r[1] is summary[0]] or rows)[:MAX_STRATEGY_ROWS]
    if pick and result.strategy_thumbs is not None:
        what = "the flagged clusters" if flagged else f"the clusters of {F.class_name(result, int(summary[0]['class']))}"
        body += figs.add("strategies", strategies_figure(result, pick), "strategy clusters",
                         f"{what[0].upper()}{what[1:]}: each row a cluster's mean {method} map (32 x 32) and its most "
                         "typical images with their maps.")
    return f'<h3 id="strategies">Strategies (SpRAy)</h3>\n<p class="explain">{escape(explain)}</p>\n{body}\n'


def _concepts(result, figs) -> str:
    """The concept tests (TCAV) of an audit run with --concept: a table, and the TCAV figure when the
    result is at hand (a redraw from audit.npz alone has the table; concepts.npz beside it redraws
    the figure with `cnnviz render`)."""
    rows = result.params.get("concepts_tested")
    if not rows:
        return ""
    runs = result.params.get("concepts_runs")
    explain = ("Does a concept, given as a folder of example images, move a class's score? For each concept a "
               "linear classifier separates the layer's activations of its examples from those of random sets of "
               f"the audited images; the TCAV score is the share of the class's images whose score rises along that "
               f"direction (Kim et al. 2018). Over {runs} runs against different random sets, compared by a two-sided "
               "t-test with the same number of runs of random sets against each other, Bonferroni-corrected for the "
               "number of tests. A significant concept above random is one the class's score relies on.")
    table = [[r["concept"], F.class_name(result, int(r["class"])), r["layer"], f"{r['score']:.2f}", f"{r['random']:.2f}",
              f"{r['p_corrected']:.3g}", ("yes, " + r["direction"] + " random") if r["significant"] else "no"]
             for r in rows]
    body = _table(["concept", "class", "layer", "TCAV score", "random runs", "p (corrected)", "significant"], table)
    tested = getattr(result, "concepts", None)
    if tested is not None:
        from ..concepts.tcav import figure

        body += figs.add("concepts", figure(tested), "TCAV scores of the concepts",
                         "Each bar: a concept's mean TCAV score for a class (dots: the runs); gray: the random runs; "
                         "a star where the difference is significant.")
    return f'<h3 id="concepts">Concepts (TCAV)</h3>\n<p class="explain">{escape(explain)}</p>\n{body}\n'



def _table(head, rows) -> str:
    h = "".join(f"<th>{escape(str(x))}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def shortcut_findings(result) -> list[tuple[str, str]]:
    """The flagged strategy clusters, for the top of the findings: possible shortcuts, with the reason."""
    out = []
    for c in result.params.get("strategies") or []:
        for cl in c["clusters"]:
            if cl["flag"]:
                out.append((f"Possible shortcut in class {F.class_name(result, int(c['class']))}: {cl['reason']}.",
                            "strategies"))
    return out


def findings(result) -> list[tuple[str, str]]:
    """The findings sentences of this section: each concept significantly above random, each failure
    slice that is a finding."""
    out = []
    for r in result.params.get("concepts_tested") or []:
        if r["significant"] and r["direction"] == "above":
            out.append((f"Concept '{r['concept']}' drives class {F.class_name(result, int(r['class']))} at "
                        f"{r['layer']}: TCAV score {r['score']:.2f} against {r['random']:.2f} for random sets "
                        f"(corrected p {r['p_corrected']:.3g}).", "concepts"))
    for by in ("features", "maps"):
        for k, s in enumerate(result.params.get(f"slices_by_{by}") or []):
            if s.get("finding"):
                share = f"; its images share: {'; '.join(s['shares'])}" if s["shares"] else ""
                out.append((f"Failure slice {k + 1} (grouped by {by}): {s['size']} images; the model gets "
                            f"{_acc(s['neighbour_accuracy'])} of the images nearest to it right, against "
                            f"{_acc(s['random_accuracy'])} near random groups{share}.", "slices"))
    return out
