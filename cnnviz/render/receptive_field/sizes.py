"""Receptive-field figure: RF size (height; width too where it differs) per layer, with the
effective stride on a second axis."""

from __future__ import annotations

import numpy as np

from ..style import (CATEGORICAL, DEFAULT_WIDTH, MIN_FONT, RC, check_layout, check_width, layer_name, line_in, plt,
                    short, wrap)


def figure(result, max_labels: int | None = None, width: float = DEFAULT_WIDTH, layout: str = "row", **_):
    """RF size per spatial layer in execution order, in a figure `width` inches wide. Every layer is
    named on the axis, by what it is and where (`cnnviz.layers.readable_name`), when the labels fit
    side by side at 7 pt (or there are at most `max_labels`); otherwise the axis is labelled by block
    ("block 3", "layer2 block 1", "stem", "head": one tick at each block's first layer, thin lines
    between blocks), and only where even the blocks do not fit are they thinned evenly. No name is
    cut. `layout` has no effect: there is one panel."""
    width = check_width(width)
    check_layout(layout)
    keep = np.flatnonzero(result.rf[:, 0] >= 0)
    types = result.types if result.types is not None else [None] * len(result.layers)
    names = [layer_name(str(result.layers[k]), types[k]) for k in keep]
    rf = result.rf[keep]
    stride = result.stride[keep]
    n = len(keep)
    if max_labels is None:  # one 7 pt line per label, on the plot's width
        max_labels = max(2, int((width - 1.3) / (line_in(MIN_FONT) + 0.01)))
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(width, 3.6))
        x = np.arange(n)
        ax.plot(x, rf[:, 0], "-o", ms=2.5, lw=1.2, color=CATEGORICAL[0], label="RF size (height)")
        if n and not np.array_equal(rf[:, 0], rf[:, 1]):
            ax.plot(x, rf[:, 1], "--s", ms=2.5, lw=1.0, color=CATEGORICAL[1], label="RF size (width)")
        size = result.params.get("input_size")
        if size:
            ax.axhline(size[0], color="0.5", lw=0.8, ls=":", label=f"input size ({size[0]})")
        ax.set_ylabel("receptive field (input pixels)")
        ax2 = ax.twinx()
        ax2.step(x, stride[:, 0], where="mid", color=CATEGORICAL[2], lw=0.9, alpha=0.8, label="effective stride")
        ax2.set_ylabel("effective stride", color=CATEGORICAL[2])
        ax2.tick_params(axis="y", colors=CATEGORICAL[2])
        if n <= max_labels:
            ticks, labels = list(x), names
        else:
            starts, labels = _blocks([str(result.layers[k]) for k in keep])
            for s0 in starts[1:]:
                ax.axvline(s0 - 0.5, color="0.85", lw=0.5, zorder=0)
            step = max(1, int(np.ceil(len(starts) / max_labels)))
            ticks, labels = starts[::step], labels[::step]
            ax.set_xlabel(f"layers in execution order ({n}), by block", fontsize=MIN_FONT)
        ax.set_xticks(ticks)
        ax.set_xticklabels([short(t, 30) for t in labels], rotation=90, fontsize=MIN_FONT)
        ax.set_xlim(-0.5, max(n - 0.5, 0.5))
        ax.set_ylim(bottom=0)
        ax2.set_ylim(bottom=0)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", frameon=False)
        model = result.params.get("model", "")
        ax.set_title(wrap(f"Theoretical receptive field per layer{f' of {model}' if model else ''}"
                          + (f" (input {size[0]}x{size[1]})" if size else ""), width - 1.2, RC["axes.titlesize"]))
        fig.tight_layout(pad=0.3)
    return fig


def _blocks(addresses: list[str]) -> tuple[list[int], list[str]]:
    """Where each block starts in a list of layer addresses (in execution order) and its name: the
    leading container and index ("_blocks.3" -> "block 3", "layer2.1" -> "layer2 block 1",
    "features.4" -> "features 4"); the layers before the first block are the "stem", those after
    the last one the "head"."""
    from ...names import readable_name

    keys = []
    for a in addresses:
        parts = a.partition("@")[0].split(".")
        keys.append(".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else None)
    indexed = [i for i, k in enumerate(keys) if k is not None]
    keys = [k if k is not None else ("stem" if not indexed or i < indexed[0] else "head") for i, k in enumerate(keys)]
    starts = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    labels = [keys[i] if keys[i] in ("stem", "head") else readable_name(keys[i]) for i in starts]
    return starts, labels


def effective_figure(erfs, title: str | None = None):
    """One panel per EffectiveRF: the map, the theoretical region as a box, the effective size."""
    from matplotlib.patches import Rectangle

    from ...names import readable_name
    from ..style import SEQUENTIAL, bare

    n = len(erfs)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), squeeze=False)
        for ax, e in zip(axes[0], erfs):
            m = e.map / e.map.max() if e.map.max() > 0 else e.map
            ax.imshow(m, cmap=SEQUENTIAL, vmin=0, vmax=1, interpolation="nearest")
            (r0, r1), (c0, c1) = e.box
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="w", lw=1.0,
                                   ls="--"))
            ax.set_xlim(-0.5, m.shape[1] - 0.5)
            ax.set_ylim(m.shape[0] - 0.5, -0.5)
            bare(ax)
            th = (r1 - r0 + 1, c1 - c0 + 1)
            ax.set_title(f"{short(readable_name(e.address), 20)}\ntheory {th[0]}x{th[1]}, "
                         f"ERF{round(100 * e.mass)} {e.size[0]}x{e.size[1]}", fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig
