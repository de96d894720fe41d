"""Theoretical, effective (Luo et al. 2016) and empirical (Zhou et al. 2015) receptive fields of one
layer side by side, on one pixel scale: both maps are drawn in input pixels relative to the
unit's RF centre, with the theoretical RF as a dashed box on each, the measured size as a solid
box, and the marginal profiles of both against the theoretical extent."""

from __future__ import annotations

import numpy as np

from ..style import (CATEGORICAL, DEFAULT_WIDTH, RC, SEQUENTIAL, SUPTITLE_PT, TEXT_PT, TITLE_PT, colorbar,
                    grid_shape, layer_label, plt, wrap)


def _box(ax, lo_y, hi_y, lo_x, hi_x, **kw):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((lo_x - 0.5, lo_y - 0.5), hi_x - lo_x + 1, hi_y - lo_y + 1, fill=False, **kw))


def _centred(size, extent_lo, extent_hi):
    """A box of `size` pixels centred in [extent_lo, extent_hi]."""
    mid = (extent_lo + extent_hi) / 2.0
    return mid - (size - 1) / 2.0, mid + (size - 1) / 2.0


def _quantile_bounds(marginal, mass, size, centre):
    """The ERF's central `mass` extent along one axis, in pixels from `centre`."""
    c = np.cumsum(marginal)
    if c[-1] <= 0:
        return None
    c = c / c[-1]
    lo = int(np.searchsorted(c, (1 - mass) / 2, side="left"))
    return lo - centre, lo + size - 1 - centre


def compare_figure(theoretical, effective=None, empirical=None, title: str | None = None, width: float = DEFAULT_WIDTH,
                   layout: str = "row"):
    """Side-by-side figure for one layer, `width` inches wide (the panels wrap to more rows where
    they do not fit; "grid": about square). `theoretical`: its RFInfo; `effective`: an
    EffectiveRF (or None); `empirical`: an EmpiricalRF (or None). At least one of the two maps is
    needed."""
    if effective is None and empirical is None:
        raise ValueError("compare_figure needs an effective or an empirical receptive field (or both)")
    r = theoretical.rf
    half = ((r[0] - 1) / 2.0, (r[1] - 1) / 2.0)
    pad = max(6.0, 0.2 * max(r), (empirical.occluder if empirical is not None else 0) * 1.5)
    lim_y, lim_x = (-half[0] - pad, half[0] + pad), (-half[1] - pad, half[1] + pad)
    panels = [p for p in (effective, empirical) if p is not None]
    n = len(panels) + 1
    th_kw = dict(ec="w", lw=1.1, ls=(0, (3, 2)))
    me_kw = dict(ec=CATEGORICAL[1], lw=1.3)
    rows, cols = grid_shape(n, width, layout, min_panel=2.0)
    pw = width / cols
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, rows * (pw * 0.9 + 0.6) + 1.1), layout="constrained")
        gs = fig.add_gridspec(rows, cols)
        axes = [fig.add_subplot(gs[k // cols, k % cols]) for k in range(n)]
        im = None
        profiles = []
        for ax, p in zip(axes, panels):
            if p is effective:
                (r0, r1), (c0, c1) = p.box
                cy, cx = (r0 + r1) / 2.0, (c0 + c1) / 2.0
                m = p.map / p.map.max() if p.map.max() > 0 else p.map
                hh, ww = m.shape
                ext = (-0.5 - cx, ww - 0.5 - cx, hh - 0.5 - cy, -0.5 - cy)
                label = f"effective RF (Luo et al.; all channels)\nERF{round(100 * p.mass)}: {p.size[0]}×{p.size[1]} px"
                prof_x = m.sum(0)
                offs_x = np.arange(ww) - cx
                profiles.append((offs_x, prof_x / prof_x.max() if prof_x.max() > 0 else prof_x,
                                 "effective (gradient)", CATEGORICAL[0], "-"))
                box = (r0 - cy, r1 - cy, c0 - cx, c1 - cx)
                measured = [_quantile_bounds(m.sum(1), p.mass, p.size[0], cy),
                            _quantile_bounds(m.sum(0), p.mass, p.size[1], cx)]
            else:
                m = p.map
                s = p.stride
                oy, ox = p.offsets_y, p.offsets_x
                ext = (ox[0] - s / 2.0, ox[-1] + s / 2.0, oy[-1] + s / 2.0, oy[0] - s / 2.0)
                (r0, r1), (c0, c1) = theoretical.interval(*p.units[0]) if p.units else ((0, r[0] - 1), (0, r[1] - 1))
                box = (r0 - (r0 + r1) // 2, r1 - (r0 + r1) // 2, c0 - (c0 + c1) // 2, c1 - (c0 + c1) // 2)
                measured = list(p.bounds) if getattr(p, "bounds", None) else None
                label = (f"empirical RF (Zhou et al.)\n≥{round(100 * p.threshold)}% of peak: "
                         f"{p.size[0]}×{p.size[1]} px")
                prof = np.nan_to_num(m).max(0)
                profiles.append((ox, prof / prof.max() if prof.max() > 0 else prof,
                                 f"empirical (occluder {p.occluder} px)", CATEGORICAL[1], "-o"))
            im = ax.imshow(np.ma.masked_invalid(m), cmap=SEQUENTIAL, vmin=0, vmax=1, extent=ext,
                           interpolation="nearest")
            ax.set_facecolor("0.85")
            _box(ax, *box, **th_kw)
            if min(p.size) > 0:
                if measured is None or None in measured:
                    measured = [_centred(p.size[0], box[0], box[1]), _centred(p.size[1], box[2], box[3])]
                _box(ax, *measured[0], *measured[1], **me_kw)
            ax.set_xlim(*lim_x)
            ax.set_ylim(lim_y[1], lim_y[0])
            ax.set_title(wrap(label, pw - 0.6, TITLE_PT), fontsize=TITLE_PT)
            ax.set_xlabel("x from RF centre (px)")
            ax.tick_params(length=2)
        for k, ax in enumerate(axes[:-1]):
            if k % cols == 0:
                ax.set_ylabel("y from RF centre (px)")
        if im is not None:
            colorbar(fig, axes[n - 2], im, "fraction of peak")
        ax = axes[-1]
        ax.axvspan(-half[1] - 0.5, half[1] + 0.5, color="0.88", lw=0, label=f"theoretical extent ({r[1]} px)")
        for offs, prof, lab, col, style in profiles:
            ax.plot(offs, prof, style, color=col, lw=1.2, ms=2.2, label=lab)
        if empirical is not None:
            ax.axhline(empirical.threshold, color=CATEGORICAL[1], lw=0.7, ls=":")
        ax.set_xlim(*lim_x)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("x from RF centre (px)")
        ax.set_ylabel("fraction of peak")
        ax.set_title("profiles (width axis)", fontsize=TITLE_PT)
        ax.spines[["top", "right"]].set_visible(False)
        # the legend for the boxes, once, under the maps
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="0.3", lw=1.1, ls=(0, (3, 2)),
                          label=f"theoretical RF {r[0]}×{r[1]} px (stride {theoretical.stride[0]})"),
                   Line2D([], [], color=CATEGORICAL[1], lw=1.3, label="measured size")]
        h2, l2 = ax.get_legend_handles_labels()
        if empirical is not None:
            h2.append(Line2D([], [], color=CATEGORICAL[1], lw=0.7, ls=":"))
            l2.append(f"threshold ({round(100 * empirical.threshold)}%)")
        ncol = max(1, int(width // 2.4))
        fig.legend(handles=handles + h2, labels=[wrap(t, width / ncol - 0.5, TEXT_PT) for t in
                                                 [h.get_label() for h in handles] + l2],
                   loc="outside lower center", ncol=ncol, frameon=False, fontsize=TEXT_PT)
        if title is None:
            title = f"Receptive field of {layer_label(theoretical.address, getattr(theoretical, 'type', None))}"
            if empirical is not None:
                title += (f", channel {empirical.channel} ({len(empirical.units)} image"
                          f"{'s' if len(empirical.units) != 1 else ''}, occluder {empirical.occluder} px, "
                          f"stride {empirical.stride} px)")
        fig.suptitle(wrap(title, width - 0.1, SUPTITLE_PT), fontsize=SUPTITLE_PT)
    return fig
