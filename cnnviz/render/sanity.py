"""The model-randomization sanity check figure (Adebayo et al. 2018, Figs. 2 and 4): the Spearman
rank correlation of each method's map with its original map as the layers are randomized from the
top down, and under it one row of maps per method across the same steps, column for column; then
the class-randomization test: per method the top-1 map beside its maps for other classes, each
labelled with its Spearman and Pearson correlation with the top-1 map."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.gridspec import GridSpec

from .gradients import NAMES
from .style import CATEGORICAL, RC, SEQUENTIAL, short


def figure(result, clip: float | None = 99.5):
    """Line plot of rank correlation vs randomization step per method, and the maps (each panel
    scaled to its own `clip` percentile of |map|, as the check compares rankings, not values)."""
    p = result.params
    methods = [str(m) for m in result.methods]
    steps = [str(s) for s in result.steps]
    rho = np.asarray(result.spearman, dtype=np.float64)
    m_count, s_count = rho.shape
    k_count = _class_count(result)
    cell = 1.0 if s_count > 8 else 1.3
    width = 1.3 + cell * s_count + 0.6
    class_h = (cell * m_count + 0.5) if k_count else 0.0
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, 2.9 + 0.35 + cell * m_count + 0.5 + class_h))
        outer = GridSpec(3 if k_count else 2, 1, figure=fig,
                         height_ratios=[2.9, cell * m_count] + ([cell * m_count] if k_count else []),
                         hspace=0.4, left=0.02, right=0.96, top=0.93 if not k_count else 0.95, bottom=0.03)
        ratios = [1.3 / cell] + [1.0] * s_count
        top = outer[0].subgridspec(1, s_count + 1, width_ratios=ratios, wspace=0.08)
        grid = outer[1].subgridspec(m_count, s_count + 1, width_ratios=ratios, wspace=0.08, hspace=0.12)

        cell0 = top[0, 0].get_position(fig)
        side = min(cell0.width * 0.55, cell0.height * 0.8 * width / fig.get_figheight())
        a = fig.add_axes([cell0.x0, cell0.y1 - side * fig.get_figwidth() / fig.get_figheight() - 0.04, side,
                          side * fig.get_figwidth() / fig.get_figheight()])
        a.imshow(result.image, interpolation="nearest")
        a.set_title(f"input\ntarget '{short(str(p.get('target_name', '')), 16)}'", fontsize=8.5)
        a.set_xticks([])
        a.set_yticks([])

        ax = fig.add_subplot(top[0, 1:])
        colors = [CATEGORICAL[i % len(CATEGORICAL)] for i in range(m_count)]
        x = np.arange(s_count)
        for i, m in enumerate(methods):
            ax.plot(x, rho[i], "o-", color=colors[i], lw=1.6, ms=4, label=NAMES.get(m, m))
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        low = np.nanmin(rho) if np.isfinite(rho).any() else 0.0
        ax.set_ylim(min(-0.2, float(low) - 0.05), 1.02)
        ax.set_ylabel("Spearman ρ with original map")
        ax.set_xticks(x)
        ax.set_xticklabels([short(s, 28) for s in steps], rotation=35, ha="right", rotation_mode="anchor")
        ax.grid(axis="y", color="0.9", lw=0.6)
        ax.legend(loc="upper right", frameon=False, ncol=min(m_count, 3))
        ax.set_title("cascading randomization from the top: each step also randomizes the layers down to the one named",
                     fontsize=8.5)

        images = []
        for i, m in enumerate(methods):
            label = fig.add_subplot(grid[i, 0])
            label.axis("off")
            label.text(0.95, 0.5, NAMES.get(m, m), color=colors[i], ha="right", va="center", fontsize=9,
                       fontweight="bold", transform=label.transAxes, wrap=True)
            for s in range(s_count):
                b = fig.add_subplot(grid[i, s + 1])
                values = np.abs(result.maps[i, s])
                t = float(np.percentile(values, clip)) if clip is not None else float(values.max())
                t = t if t > 0 else (float(values.max()) or 1.0)
                im = b.imshow(values / t, cmap=SEQUENTIAL, norm=Normalize(0.0, 1.0), interpolation="nearest")
                im.set_gid("map")
                images.append(im)
                b.set_xticks([])
                b.set_yticks([])
                r = rho[i, s]
                b.set_xlabel("ρ n/a (constant)" if not np.isfinite(r) else f"ρ = {r:.2f}", fontsize=7, labelpad=1.5)
        _align(fig, ax, grid, s_count)
        if k_count:
            _class_rows(fig, result, outer[2], methods, colors, ratios, s_count, clip)
        cax = fig.add_axes([0.965, outer[1].get_position(fig).y0, 0.008, outer[1].get_position(fig).height])
        cb = fig.colorbar(images[0], cax=cax, extend="max" if clip is not None else "neither")
        pct = f"{clip:g}th percentile" if clip is not None else "maximum"
        cb.set_label(f"|map| / its {pct}")
        cb.ax.tick_params(labelsize=7)
        model = result.provenance.get("model", "model")
        layer = f"; Grad-CAM at {p['layer']}" if p.get("layer") else ""
        fig.suptitle(f"Model-randomization sanity check (Adebayo et al. 2018): {model}, "
                     f"{p.get('num_layers', '?')} layers with parameters in {s_count - 1} steps, seed {p.get('seed')}"
                     f"{layer}", fontsize=9.5, y=0.995)
    return fig


def _class_count(result) -> int:
    t = getattr(result, "class_targets", None)
    return 0 if t is None else int(np.asarray(t).size)


def _class_rows(fig, result, spec, methods, colors, ratios, s_count, clip):
    """The class-randomization test: per method the top-1 map (column 1) and its maps for the other
    classes, each with its Spearman ρ and Pearson r against the top-1 map."""
    k_count = _class_count(result)
    cols = max(s_count, k_count + 1)
    grid = spec.subgridspec(len(methods), cols + 1, width_ratios=[ratios[0]] + [1.0] * cols, wspace=0.08,
                            hspace=0.4)
    names = [str(n) for n in result.class_names]
    top_name = str(result.params.get("target_name", ""))
    for i, m in enumerate(methods):
        label = fig.add_subplot(grid[i, 0])
        label.axis("off")
        label.text(0.95, 0.5, NAMES.get(m, m), color=colors[i], ha="right", va="center", fontsize=9,
                   fontweight="bold", transform=label.transAxes, wrap=True)
        panels = [(result.maps[i, 0], f"top-1 '{short(top_name, 14)}'", None)]
        panels += [(result.class_maps[i, k], f"'{short(names[k], 14)}'",
                    (result.class_spearman[i, k], result.class_pearson[i, k])) for k in range(k_count)]
        for j, (values, title, corr) in enumerate(panels):
            b = fig.add_subplot(grid[i, j + 1])
            values = np.abs(values)
            t = float(np.percentile(values, clip)) if clip is not None else float(values.max())
            t = t if t > 0 else (float(values.max()) or 1.0)
            b.imshow(values / t, cmap=SEQUENTIAL, norm=Normalize(0.0, 1.0), interpolation="nearest").set_gid("class-map")
            b.set_xticks([])
            b.set_yticks([])
            if i == 0:
                b.set_title(title, fontsize=7.5)
            if corr is None:
                b.set_xlabel("reference", fontsize=7, labelpad=1.5)
            else:
                rho, r = (float(v) for v in corr)
                text = "n/a (constant)" if not np.isfinite(rho) else f"ρ = {rho:.2f}, r = {r:.2f}"
                same = np.isfinite(r) and r >= 0.95
                b.set_xlabel(text + ("\n≈ the same map" if same else ""), fontsize=7, labelpad=1.5,
                             color="#b2182b" if same else "black")
    first = grid[0, 1].get_position(fig)
    fig.text(first.x0, first.y1 + 0.03 * 6 / fig.get_figheight(),
             "class randomization (original model): the top-1 map against the maps for other classes\n"
             "(the runner-up, then random ones); ρ, r near 1 for every class = the map ignores the class",
             fontsize=8.5, va="bottom")


def _align(fig, ax, grid, s_count):
    """Set the line plot's x limits so that step s sits above the centre of map column s."""
    c = [grid[0, s + 1].get_position(fig) for s in range(min(s_count, 2))]
    pos = ax.get_position()
    if s_count < 2:
        ax.set_xlim(-0.5, 0.5)
        return
    centre0, centre1 = (c[0].x0 + c[0].x1) / 2, (c[1].x0 + c[1].x1) / 2
    unit = centre1 - centre0
    ax.set_xlim((pos.x0 - centre0) / unit, (pos.x1 - centre0) / unit)
