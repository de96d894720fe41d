"""First-layer filters as images (Zeiler & Fergus 2014 Fig. 6, Krizhevsky et al. 2012 Fig. 3) and a
layer's feature maps as a grid, strongest first."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..style import DEFAULT_WIDTH, MIN_FONT, RC, SEQUENTIAL, Panels, bare, layer_label, model_label

DIVERGING = "RdBu_r"
MIN_TILE = 24  # kernels are upsampled (nearest) to at least this many pixels a side


def _normalize(f: np.ndarray) -> np.ndarray:
    """One filter to [0, 1] by its own min and max (as ZF and Krizhevsky show them); flat: gray."""
    lo, hi = float(f.min()), float(f.max())
    return np.full_like(f, 0.5) if hi - lo < 1e-12 else (f - lo) / (hi - lo)


def filter_tiles(weights: np.ndarray) -> np.ndarray:
    """C_out x C_in x kh x kw weights to C_out x s*kh x s*kw (x 3 for RGB) images in [0, 1]: each
    filter normalized on its own, RGB when C_in == 3 (else channel 0 in gray), enlarged by nearest."""
    w = np.asarray(weights, dtype=np.float32)
    rgb = w.shape[1] == 3
    tiles = []
    for f in w:
        t = _normalize(f if rgb else f[:1])
        t = np.transpose(t, (1, 2, 0)) if rgb else t[0]
        tiles.append(t)
    tiles = np.stack(tiles)
    s = max(1, math.ceil(MIN_TILE / max(w.shape[2], w.shape[3])))
    return tiles.repeat(s, axis=1).repeat(s, axis=2)


def filters_figure(result, max_cols: int | None = None, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """Every filter of the first layer as a small image with its channel index, in a figure `width`
    inches wide ("row": as many per row as fit, at most `max_cols`; "grid": about square)."""
    p = result.params
    tiles = filter_tiles(result.weights)
    n = tiles.shape[0]
    rgb = tiles.ndim == 4
    kh, kw = p["kernel"]
    cin = p["in_channels"]
    shown = "RGB" if rgb else f"input channel 0 of {cin}, gray"
    head = (f"First-layer filters: {model_label(result.provenance, p)}, {layer_label(p['layer'], p.get('layer_type'))} ({n} filters, {cin}×{kh}×{kw}, "
            f"{shown}); each filter scaled to [0, 1] by its own min and max; label = output channel")
    with plt.rc_context(RC):
        lay = Panels(n, width, layout, titles=[str(k) for k in range(n)], head=head, min_panel=0.4, gap=0.06,
                     max_cols=max_cols or 16, max_picture=0.9, title_pt=MIN_FONT)
        for k, ax in enumerate(lay.axes):
            bare(ax)
            ax.imshow(tiles[k], cmap=None if rgb else "gray", vmin=0, vmax=1, interpolation="nearest")
            for sp in ax.spines.values():
                sp.set_linewidth(0.4)
                sp.set_color("0.5")
    return lay.fig


def activations_figure(result, top: int = 64, max_cols: int | None = None, width: float = DEFAULT_WIDTH,
                       layout: str = "row"):
    """The input crop, then the `top` strongest feature maps on one colour scale shared by all maps
    (so strengths compare across maps): viridis from min(0, lowest) to the highest value, or, for
    signed maps (a block output without a rectifier), a diverging map symmetric about zero; in a
    figure `width` inches wide."""
    p = result.params
    k = min(int(top), result.maps.shape[0])
    maps = result.maps[:k]
    lo, hi = min(0.0, float(maps.min())), float(maps.max())
    signed = lo < -0.05 * max(hi, 0.0)
    cmap = SEQUENTIAL
    if signed:
        hi = max(abs(lo), hi)
        lo, cmap = -hi, DIVERGING
    if hi <= lo:
        hi = lo + 1.0
    h, w = maps.shape[1:]
    titles = ["input"] + [f"ch {int(result.channels[j])}: {float(result.strength[j]):.3g}" for j in range(k)]
    head = (f"Feature maps of {model_label(result.provenance, p)}, {layer_label(p['layer'], p.get('layer_type'))} "
            f"({p['num_channels']}×{h}×{w}): "
            f"the {k} strongest by max activation, of {p['num_channels']}; shared colour scale"
            f"{', centred on 0' if signed else ''}; label: channel: its max activation")
    with plt.rc_context(RC):
        lay = Panels(k + 1, width, layout, titles=titles, head=head, min_panel=0.8, gap=0.08, max_cols=max_cols or 10,
                     max_picture=1.4, title_pt=MIN_FONT, title_lines=2, legend_in=0.5)
        im = None
        for i, ax in enumerate(lay.axes):
            bare(ax)
            if i == 0:
                ax.imshow(result.image)
                continue
            im = ax.imshow(maps[i - 1], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if im is not None:
            lay.strip_colorbar(im, "activation")
    return lay.fig
