"""The class-score map figure: the photo at the analysed scale with the best crop outlined, and
the target class's probability at every crop position drawn over it (each value at its crop's
centre)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..style import DEFAULT_WIDTH, RC, SEQUENTIAL, Panels, bare, gray_background, model_label


def _edges(centres) -> np.ndarray:
    """Cell edges around centres: midpoints between neighbours, half a step beyond the ends."""
    c = np.asarray(centres, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 8, c[0] + 8])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def figure(result, *, width: float = DEFAULT_WIDTH, layout: str = "row"):
    p = result.params
    img = result.image
    H, W = img.shape[:2]
    ch, cw = p["crop"]
    ys, xs = result.positions_y, result.positions_x
    by, bx = p["best_position"]
    name = p["target_name"]
    head = (f"Class-score map: {model_label(result.provenance, p)}, P({name}) for each {cw}×{ch} crop of the photo "
            f"at {W}×{H} px (scale {p['scale']:g}), every {p['stride'][0]} px; highest {p['best_prob']:.2f}")
    titles = ["photo, best crop dashed", f"P({name}) at each crop's centre"]
    with plt.rc_context(RC):
        lay = Panels(2, width, layout, titles=titles, head=head, aspect=H / W, colorbars=[False, True],
                     min_panel=2.0, max_picture=3.4)
        a, b = lay.axes
        a.imshow(img)
        a.add_patch(Rectangle((bx - 0.5, by - 0.5), cw, ch, fill=False, ec="white", lw=1.2, ls="--"))
        bare(a)
        b.imshow(gray_background(img))
        # each value is drawn over the cell around its crop's centre (the grid need not be even: its
        # last position is the image's edge)
        im = b.pcolormesh(_edges(xs + cw / 2 - 0.5), _edges(ys + ch / 2 - 0.5), result.prob, cmap=SEQUENTIAL,
                          vmin=0, vmax=max(float(result.prob.max()), 1e-6), alpha=0.85, shading="flat")
        b.set_xlim(-0.5, W - 0.5)
        b.set_ylim(H - 0.5, -0.5)
        bare(b)
        lay.colorbar(1, im, f"P({name})")
    return lay.fig
