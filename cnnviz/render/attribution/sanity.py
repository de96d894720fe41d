"""The model-randomization sanity check figure (Adebayo et al. 2018, Figs. 2 and 4): the Spearman
rank correlation of each method's map with its original map as the layers are randomized from the
top down, and under it one row of maps per method across the same steps, column for column; then
the class-randomization test: per method the top-1 map beside its maps for other classes, each
labelled with its Spearman and Pearson correlation with the top-1 map."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize

from .gradients import NAMES
from ..style import (CATEGORICAL, DEFAULT_WIDTH, MIN_FONT, RC, SEQUENTIAL, SUPTITLE_PT, TEXT_PT, TITLE_PT,
                    check_layout, check_width, fit, layer_label, line_in, lines_of, model_label, short, text_width,
                    max_height, wrap)


GAP_C, MAX_CELL = 0.06, 1.1  # inches between map columns; the largest map


class _Box:
    """Inches from the figure's top-left corner to figure fractions."""

    def __init__(self, fig, W: float, H: float):
        self.fig, self.W, self.H = fig, W, H

    def axes(self, left: float, top: float, w: float, h: float):
        return self.fig.add_axes((left / self.W, 1 - (top + h) / self.H, w / self.W, h / self.H))


def _map(ax, values, clip):
    values = np.abs(values)
    t = float(np.percentile(values, clip)) if clip is not None else float(values.max())
    t = t if t > 0 else (float(values.max()) or 1.0)
    im = ax.imshow(values / t, cmap=SEQUENTIAL, norm=Normalize(0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def figure(result, clip: float | None = 99.5, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """Line plot of rank correlation vs randomization step per method, and the maps (each panel
    scaled to its own `clip` percentile of |map|, as the check compares rankings, not values), in
    a figure `width` inches wide, placed in inches. The maps line up under the plot's steps, so
    `layout` has no effect. Where a map is too narrow for its ρ under it, the plot above gives it."""
    W = check_width(width)
    check_layout(layout)
    p = result.params
    methods = [str(m) for m in result.methods]
    from ...names import readable_name

    steps = [str(s) if str(s) == "original" else short(readable_name(str(s)), 22) for s in result.steps]
    rho = np.asarray(result.spearman, dtype=np.float64)
    m_count, s_count = rho.shape
    k_count = _class_count(result)
    label_w = min(1.0, 0.25 * W)  # the input and the method names
    right = 0.8  # the colorbar with its ticks and label; the plot's y axis
    title = wrap(f"Model-randomization sanity check (Adebayo et al. 2018): {model_label(result.provenance)}, "
                 f"{p.get('num_layers', '?')} layers with parameters in {s_count - 1} steps, seed {p.get('seed')}"
                 + (f"; Grad-CAM at {layer_label(p['layer'], p.get('layer_type'))}" if p.get("layer") else ""), W - 0.1, SUPTITLE_PT)

    def plan(scale: float) -> dict:
        cell = scale * min(MAX_CELL, (W - label_w - right - (s_count - 1) * GAP_C) / s_count)
        narrow = cell < 0.5
        cols = max(s_count, k_count + 1)
        ccell = scale * min(MAX_CELL, (W - label_w - right - (cols - 1) * GAP_C) / cols)
        block_w = s_count * cell + (s_count - 1) * GAP_C
        plot_title = wrap("cascading randomization from the top: each step also randomizes the layers down to the one "
                          "named", block_w, TEXT_PT)
        rot = 90 if narrow else 35
        longest = max(text_width(s, MIN_FONT) for s in steps)
        ticks_in = longest * (1.0 if rot == 90 else 0.6) + 0.15
        head_in = 0.08 + line_in(SUPTITLE_PT, lines_of(title)) + 0.08
        plot_top = head_in + line_in(TEXT_PT, lines_of(plot_title)) + 0.06
        plot_h = 1.5 if scale >= 1 else 1.2
        maps_top = plot_top + plot_h + ticks_in + 0.1
        row_h = cell + (0.04 if narrow else 0.05 + line_in(TEXT_PT))
        y = maps_top + m_count * row_h
        class_note = wrap("class randomization (original model): the top-1 map against the maps for other classes (the "
                          "runner-up, then random ones); ρ, r near 1 for every class = the map ignores the class",
                          W - 0.1, TEXT_PT)
        class_titles = [wrap(t, ccell + GAP_C, TEXT_PT, lines=2) for t in
                        [f"top-1 '{p.get('target_name', '')}'"] + [f"'{n}'" for n in
                                                                    (result.class_names if k_count else [])]]
        class_top = y + 0.2
        title_in = line_in(TEXT_PT, max(lines_of(t) for t in class_titles)) + 0.05
        crow_h = ccell + 0.05 + line_in(TEXT_PT, 3) + 0.06
        bottom = class_top + line_in(TEXT_PT, lines_of(class_note)) + 0.06 + title_in + m_count * crow_h if k_count else y
        H = bottom + 0.1
        return locals()

    # taller than the page (max_height): smaller maps, a lower plot
    geo = plan(fit(lambda f: plan(f)["H"], max_height(W)))
    (cell, narrow, ccell, block_w, plot_title, rot, ticks_in, plot_top, plot_h, maps_top, row_h, class_note,
     class_titles, class_top, title_in, crow_h, H) = (geo[k] for k in (
        "cell", "narrow", "ccell", "block_w", "plot_title", "rot", "ticks_in", "plot_top", "plot_h",
        "maps_top", "row_h", "class_note", "class_titles", "class_top", "title_in", "crow_h", "H"))
    colors = [CATEGORICAL[i % len(CATEGORICAL)] for i in range(m_count)]
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(W, H))
        box = _Box(fig, W, H)
        fig.suptitle(title, fontsize=SUPTITLE_PT, y=1 - 0.06 / H, va="top", linespacing=1.1)
        side = min(label_w - 0.12, 0.9)
        a = box.axes(0.05, plot_top + line_in(TEXT_PT, 2) + 0.06, side, side)
        a.imshow(result.image, interpolation="nearest")
        a.set_title(wrap(f"input, target '{p.get('target_name', '')}'", label_w - 0.05, TEXT_PT, lines=2),
                    fontsize=TEXT_PT, loc="left")
        a.set_xticks([])
        a.set_yticks([])

        ax = box.axes(label_w, plot_top, block_w, plot_h)
        x = np.arange(s_count)
        for i, m in enumerate(methods):
            ax.plot(x, rho[i], "o-", color=colors[i], lw=1.6, ms=4, label=NAMES.get(m, m))
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        low = np.nanmin(rho) if np.isfinite(rho).any() else 0.0
        ax.set_ylim(min(-0.2, float(low) - 0.05), 1.02)
        ax.yaxis.tick_right()
        ax.yaxis.set_label_position("right")
        ax.set_ylabel(wrap("Spearman ρ with original map", plot_h, RC["axes.labelsize"], lines=2))
        ax.set_xticks(x)
        ax.set_xticklabels(steps, rotation=rot, ha="center" if rot == 90 else "right", rotation_mode="anchor"
                           if rot != 90 else "default")
        half = (cell / 2) / (cell + GAP_C)
        ax.set_xlim(-half, s_count - 1 + half)  # step s over the centre of map column s
        ax.grid(axis="y", color="0.9", lw=0.6)
        ax.legend(loc="upper right", frameon=False, ncol=1 if narrow or block_w < 2.6 else min(m_count, 3))
        ax.set_title(plot_title, fontsize=TEXT_PT)

        images = []
        for i, m in enumerate(methods):
            top = maps_top + i * row_h
            _method_label(box, top, cell, NAMES.get(m, m), colors[i], label_w)
            for s_ in range(s_count):
                b = box.axes(label_w + s_ * (cell + GAP_C), top, cell, cell)
                im = _map(b, result.maps[i, s_], clip)
                im.set_gid("map")
                images.append(im)
                r = rho[i, s_]
                if not narrow:
                    b.set_xlabel("ρ n/a" if not np.isfinite(r) else f"ρ = {r:.2f}", fontsize=TEXT_PT, labelpad=1.5)
        cax = box.axes(label_w + block_w + 0.1, maps_top, 0.08, m_count * row_h - 0.05)
        cb = fig.colorbar(images[0], cax=cax, extend="max" if clip is not None else "neither")
        pct = f"{clip:g}th percentile" if clip is not None else "maximum"
        cb.set_label(wrap(f"|map| / its {pct}", max(m_count * row_h, 0.8), RC["axes.labelsize"], lines=2),
                     linespacing=1.0)
        cb.ax.tick_params(labelsize=MIN_FONT)
        if k_count:
            fig.text(0.05 / W, 1 - class_top / H, class_note, fontsize=TEXT_PT, va="top")
            top0 = class_top + line_in(TEXT_PT, lines_of(class_note)) + 0.06 + title_in
            _class_rows(box, result, methods, colors, label_w, ccell, class_titles, top0, crow_h, clip)
    return fig


def _method_label(box, top: float, cell: float, name: str, color, label_w: float) -> None:
    box.fig.text((label_w - 0.08) / box.W, 1 - (top + cell / 2) / box.H, wrap(name, label_w - 0.12, TITLE_PT, lines=3),
                 color=color, ha="right", va="center", fontsize=TITLE_PT, fontweight="bold")


def _class_count(result) -> int:
    t = getattr(result, "class_targets", None)
    return 0 if t is None else int(np.asarray(t).size)


def _class_rows(box, result, methods, colors, label_w, cell, titles, top0, row_h, clip):
    """The class-randomization test: per method the top-1 map (column 1) and its maps for the other
    classes, each with its Spearman ρ and Pearson r against the top-1 map."""
    k_count = _class_count(result)
    for i, m in enumerate(methods):
        top = top0 + i * row_h
        _method_label(box, top, cell, NAMES.get(m, m), colors[i], label_w)
        panels = [(result.maps[i, 0], None)]
        panels += [(result.class_maps[i, k], (result.class_spearman[i, k], result.class_pearson[i, k]))
                   for k in range(k_count)]
        for j, (values, corr) in enumerate(panels):
            b = box.axes(label_w + j * (cell + GAP_C), top, cell, cell)
            _map(b, values, clip).set_gid("class-map")
            if i == 0:
                b.set_title(titles[j], fontsize=TEXT_PT, pad=2)
            if corr is None:
                b.set_xlabel("reference" if cell >= 0.6 else "ref.", fontsize=TEXT_PT, labelpad=1.5)
            else:
                rho, r = (float(v) for v in corr)
                text = "n/a" if not np.isfinite(rho) else f"ρ={rho:.2f}\nr={r:.2f}"
                same = np.isfinite(r) and r >= 0.95
                b.set_xlabel(text + ("\n≈ same" if same else ""), fontsize=TEXT_PT, labelpad=1.5,
                             color="#b2182b" if same else "black", linespacing=1.0)
