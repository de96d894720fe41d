"""Figures of an audit (`AuditResult`): the summary figure `cnnviz render` draws (reliability
diagram, deletion and insertion curves) and the pictures of the HTML report."""

from __future__ import annotations

import warnings

import numpy as np

from ..style import CATEGORICAL, RC, Panels, check_layout, check_width, gray_background, short, wrap

import matplotlib.pyplot as plt  # noqa: E402  (style has chosen the backend)

METHOD_NAMES = {"gradcam": "Grad-CAM", "saliency": "saliency", "occlusion": "occlusion", "guided": "guided backprop",
                "deconv": "deconvnet", "guided_gradcam": "guided Grad-CAM", "gradcampp": "Grad-CAM++",
                "layercam": "LayerCAM", "scorecam": "Score-CAM", "rise": "RISE"}


def method_name(m: str) -> str:
    return METHOD_NAMES.get(str(m), str(m))


def class_name(result, index: int) -> str:
    return result.params.get("class_names", {}).get(str(int(index)), f"class {int(index)}")


def _charts(n: int, width: float, layout: str, height: float = 2.1):
    cols = n if layout == "row" and width / n >= 2.0 else max(1, min(n, int(width // 2.4)))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), layout="constrained", squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


RELIABILITY_TOP = 1.42  # the accuracy axis's top: above 1, the legend's band


def draw_reliability(ax, result) -> None:
    """Accuracy per confidence bin against the diagonal (a calibrated model lies on it)."""
    acc = result.reliability_acc.astype(float)
    conf = result.reliability_conf.astype(float)
    count = result.reliability_count
    bins = len(acc)
    edges = np.linspace(0, 1, bins + 1)
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--", label="calibrated")
    if result.params.get("has_labels"):
        ok = count > 0
        ax.bar(edges[:-1][ok], acc[ok], width=1 / bins, align="edge", color=CATEGORICAL[0], alpha=0.8,
               edgecolor="white", lw=0.5)  # the bars are the accuracy the y axis names: no legend entry
        ax.plot(conf[ok], acc[ok], "o", ms=2.5, color="black", label="mean confidence")
        ece = result.params.get("ece")
        ax.set_title(f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability")
    else:
        ax.text(0.5, 0.5, "no labels:\nno calibration", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("Reliability")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, RELIABILITY_TOP)  # a band above accuracy 1 for the legend: no bar or point reaches it
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.spines["left"].set_bounds(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", frameon=False, borderaxespad=0.2, handlelength=1.5)


def draw_curves(ax, result, which: str) -> None:
    curves = result.deletion_curve if which == "deletion" else result.insertion_curve
    key = "deletion_auc" if which == "deletion" else "insertion_auc"
    for j, m in enumerate(result.methods):
        auc = np.nanmean(getattr(result, key)[:, j]) if len(getattr(result, key)) else np.nan
        ax.plot(result.fractions, curves[j], color=CATEGORICAL[j % 10], lw=1.2,
                label=f"{method_name(m)} (AUC {auc:.3f})")
    base = getattr(result, f"baseline_{which}_curve", None)
    if base is not None and len(base):
        auc = np.nanmean(getattr(result, f"baseline_{key}")) if len(getattr(result, f"baseline_{key}")) else np.nan
        ax.plot(result.fractions, base, color="0.35", lw=1.0, ls="--", label=f"random map (AUC {auc:.3f})")
    every = [result.deletion_curve.ravel(), result.insertion_curve.ravel()]
    if base is not None:
        every += [result.baseline_deletion_curve.ravel(), result.baseline_insertion_curve.ravel()]
    ax.set_xlim(0, 1)
    top = max(1e-3, float(np.nanmax(np.concatenate(every)))) * 1.05
    ax.set_ylim(0, top * 1.7)  # room above the curves for the legend: inside them it would hide them
    ticks = [t for t in np.linspace(0, 1, 5) if t <= top]
    ax.set_yticks(ticks if len(ticks) >= 3 else np.linspace(0, top, 3))
    ax.set_xlabel("fraction of pixels " + ("removed" if which == "deletion" else "inserted"))
    ax.set_ylabel("p(explained class)")
    ax.set_title(f"{which.capitalize()} ({'lower' if which == 'deletion' else 'higher'} is better)")
    ax.legend(loc="upper right", frameon=False)


def figure(result, *, width: float = 7.0, layout: str = "row", **_):
    """The summary figure: reliability diagram, mean deletion and insertion curves."""
    width, layout = check_width(width), check_layout(layout)
    with plt.rc_context(RC):
        fig, (a, b, c) = _charts(3, width, layout)
        draw_reliability(a, result)
        draw_curves(b, result, "deletion")
        draw_curves(c, result, "insertion")
        p = result.provenance or {}
        fig.suptitle(wrap(f"Audit of {p.get('model', '?')} on {result.params.get('num_images')} images", width - 0.2))
    return fig


def reliability_figure(result, width: float = 5.0):
    with plt.rc_context(RC):
        fig, (a, b) = _charts(2, width, "row")
        draw_reliability(a, result)
        edges = np.linspace(0, 1, len(result.reliability_count) + 1)
        a.set_title(a.get_title())
        b.bar(edges[:-1], result.reliability_count, width=1 / len(edges[:-1]), align="edge", color="0.5",
              edgecolor="white", lw=0.5)
        b.set_xlim(0, 1)
        b.set_xlabel("confidence (top-1 probability)")
        b.set_ylabel("images")
        b.set_title("How confident the model is")
    return fig


def curves_figure(result, width: float = 6.0):
    with plt.rc_context(RC):
        fig, (a, b) = _charts(2, width, "row")
        draw_curves(a, result, "deletion")
        draw_curves(b, result, "insertion")
    return fig


def _overlay(ax, image: np.ndarray, amap: np.ndarray) -> None:
    ax.imshow(gray_background(image), interpolation="nearest")
    m = np.clip(np.nan_to_num(amap.astype(np.float64)), 0, None)
    top = np.percentile(m, 99.5) if m.max() > 0 else 1.0
    m = np.clip(m / (top or 1.0), 0, 1)
    rgba = plt.get_cmap("inferno")(m)
    rgba[..., 3] = 0.75 * m
    ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def image_figure(result, k: int, width: float = 6.0):
    """One example image: the photo, then the map of each method over it."""
    i = int(result.shown_index[k])
    titles = ["input: " + _verdict(result, i)] + [method_name(m) for m in result.methods]
    with plt.rc_context(RC):
        pan = Panels(1 + len(result.methods), width, "row", titles=titles, min_panel=1.2, max_picture=1.8)
        pan.axes[0].imshow(result.shown_images[k])
        _bare(pan.axes[0])
        for j in range(len(result.methods)):
            _overlay(pan.axes[1 + j], result.shown_images[k], result.shown_maps[k, j])
    return pan.fig


def _verdict(result, i: int) -> str:
    pred = int(result.top5[i, 0])
    text = f"predicted {short(class_name(result, pred), 24)} ({result.top5_prob[i, 0]:.0%})"
    lab = int(result.labels[i])
    if lab >= 0:
        text += "; right" if lab == pred else f"; true: {short(class_name(result, lab), 24)}"
    return text


def wrong_figure(result, k: int, width: float = 7.0):
    """A misclassified image: per method, the map of the predicted class beside that of the true class."""
    i = int(result.wrong_index[k])
    pred, lab = class_name(result, int(result.top5[i, 0])), class_name(result, int(result.labels[i]))
    titles = [f"input (true: {short(lab, 20)})"]
    for m in result.methods:
        titles += [f"{method_name(m)}: predicted {short(pred, 18)}", f"{method_name(m)}: true {short(lab, 18)}"]
    with plt.rc_context(RC):
        pan = Panels(len(titles), width, "row", titles=titles, min_panel=1.2, max_picture=1.6)
        pan.axes[0].imshow(result.wrong_images[k])
        _bare(pan.axes[0])
        for j in range(len(result.methods)):
            _overlay(pan.axes[1 + 2 * j], result.wrong_images[k], result.wrong_pred_maps[k, j])
            _overlay(pan.axes[2 + 2 * j], result.wrong_images[k], result.wrong_true_maps[k, j])
    return pan.fig


def class_figure(result, rows: list[int], width: float = 7.0):
    """Per class (rows: indices into class_indices): its mean input crop, and each method's mean map over it."""
    titles = []
    for r in rows:
        name = short(class_name(result, int(result.class_indices[r])), 22)
        titles.append(f"{name} (n={int(result.class_counts[r])})")
        titles += [method_name(m) for m in result.methods]
    per = 1 + len(result.methods)
    with plt.rc_context(RC):
        pan = Panels(len(titles), width, "row", titles=titles, min_panel=1.0, max_picture=1.3, groups=per)
        for q, r in enumerate(rows):
            img = result.class_images[r]
            pan.axes[q * per].imshow(img, interpolation="bilinear")
            _bare(pan.axes[q * per])
            for j in range(len(result.methods)):
                _overlay(pan.axes[q * per + 1 + j], img, result.class_maps[r, j])
    return pan.fig


def sanity_stops(result) -> list[str]:
    """Per method whose map went all zero at some randomization step (no ranking: its Spearman r is
    undefined, and its line stops there), one sentence saying where and on how many images."""
    steps = [str(v) for v in result.sanity_steps]
    out = []
    for j, m in enumerate(result.sanity_methods):
        bad = ~np.isfinite(result.sanity_spearman[:, j])  # I x S
        if bad.any():
            first = int(np.argmax(bad.any(0)))
            out.append(f"{method_name(m)}'s line stops at \u201c{steps[first]}\u201d: from there its map is all zero "
                       f"(no ranking to correlate) on {int(bad[:, first].sum())} of {bad.shape[0]} image(s).")
    return out


def _two_lines(name: str) -> str:
    """A layer address broken at its last dot before a "_" or a word, so that a long name
    ("_blocks.12._depthwise_conv") takes two short lines instead of being cut."""
    if len(name) <= 14 or "." not in name:
        return name
    cut = name.rfind(".", 0, len(name) - 3)
    return name[:cut + 1] + "\n" + name[cut + 1:]


def sanity_figure(result, width: float = 6.0):
    """Spearman correlation of each method's map with the original, per randomization step: the mean
    over the images (a line per method, in the legend) and their range (a band); a dotted vertical
    line where a method's map went all zero (its correlation undefined from there)."""
    with plt.rc_context(RC):
        fig, (ax,) = _charts(1, width, "row", height=2.6)
        steps = list(result.sanity_steps)
        x = np.arange(len(steps))
        n = len(result.sanity_files)
        for j, m in enumerate(result.sanity_methods):
            v = result.sanity_spearman[:, j].astype(float)  # I x S
            ok = np.isfinite(v)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps: masked by `ok` below
                mean = np.where(ok.any(0), np.nanmean(np.where(ok, v, np.nan), 0), np.nan)
                lo = np.where(ok.any(0), np.nanmin(np.where(ok, v, np.inf), 0), np.nan)
                hi = np.where(ok.any(0), np.nanmax(np.where(ok, v, -np.inf), 0), np.nan)
            colour = CATEGORICAL[j % 10]
            label = method_name(m) + (f" (mean of {n}; band: range)" if n > 1 else "")
            ax.plot(x, mean, color=colour, lw=1.4, marker="o", ms=3, label=label)
            if n > 1:
                ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0)
            bad = ~ok
            if bad.any():
                first = int(np.argmax(bad.any(0)))
                ax.plot([first, first], [-1.05, 1.05], color=colour, ls=":", lw=1.2,  # below the legend's band
                        label=f"{method_name(m)}: map all zero from here ({int(bad[:, first].sum())} of {n})")
        ax.set_xticks(x)
        ax.set_xticklabels([_two_lines(str(s)) for s in steps], fontsize="small")  # whole names, never cut
        ax.set_ylim(-1.05, 1.6)
        ax.set_yticks(np.linspace(-1, 1, 5))
        ax.spines["left"].set_bounds(-1, 1)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylabel("Spearman r with\nthe original map")
        ax.set_xlabel("layers randomized, from the top down to")
        ax.set_title("Model randomization (Adebayo et al. 2018)")
        ax.legend(frameon=False, loc="upper right", fontsize="small", ncol=1 if len(result.sanity_methods) < 3 else 2)
    return fig


def units_figure(result, width: float = 7.0):
    """Per selective unit (a row): its top images' receptive-field patches, with each image's class."""
    k = result.unit_patches.shape[1]
    titles = []
    for v, u in enumerate(result.unit_index):
        for j in range(k):
            c = int(result.unit_top_classes[v, j])
            head = f"unit {int(u)} (SI {result.unit_selectivity[int(u)]:.2f})\n" if j == 0 else "\n"
            titles.append(head + (short(class_name(result, c), 18) if c >= 0 else "-"))
    with plt.rc_context(RC):
        pan = Panels(len(titles), width, "row", titles=titles, min_panel=1.0, max_picture=1.2, groups=k)
        for v in range(len(result.unit_index)):
            for j in range(k):
                ax = pan.axes[v * k + j]
                if result.unit_top_files[v, j] >= 0:
                    ax.imshow(result.unit_patches[v, j])
                _bare(ax)
    return pan.fig
