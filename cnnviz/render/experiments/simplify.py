"""The simplification figure in the manner of Zhou et al. 2015, Fig. 2: each image above its minimal
image (the superpixels the greedy search could remove in gray), and under them the probability of
each image's class against the fraction of the image removed, one curve per image, with the removal
that would have changed the class marked."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..style import CATEGORICAL, DEFAULT_WIDTH, RC, bare, fit, max_height, short, wrap

MIN_COLUMN = 1.55  # inches one image column needs for its two-line titles at 7 pt


def _boundaries(segments: np.ndarray) -> np.ndarray:
    """H x W bool: pixels whose right or lower neighbour is in another superpixel."""
    b = np.zeros(segments.shape, bool)
    b[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    b[:-1, :] |= segments[:-1, :] != segments[1:, :]
    return b


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row"):
    """The figure `width` inches wide: where every image's pair fits in one row, each image beside
    its minimal image, side by side; else images in columns, each above its minimal image (wrapped
    onto more rows of pairs where they do not fit; "grid": about as many pair rows as columns); the
    curve panel below. At most the page's height (`max_height`): the pictures shrink to fit."""
    p = result.params
    N = result.images.shape[0]
    side = 2 * N <= int(width // MIN_COLUMN)  # one image (or two on a page): original | minimal in a row
    cols = max(1, min(N, int(width // MIN_COLUMN)))
    if layout == "grid":
        cols = min(cols, math.ceil(math.sqrt(N)))
    pair_rows = 1 if side else math.ceil(N / cols)
    per_row = 2 * N if side else cols  # pictures in a row
    title_in = 0.08 + 3 * 7 * 1.22 / 72  # three lines of 7 pt
    curve_h = 1.9
    bottom = 0.9 if width >= 5 else 1.05

    def height_of(pic):
        rows = 1 if side else 2 * pair_rows
        return rows * (pic + title_in) + 0.15 * (pair_rows - 1) + curve_h + bottom

    full = min((width - 0.3) / per_row - 0.15, 2.2)
    pic = full * fit(lambda f: height_of(full * f), max_height(width))
    height = height_of(pic)
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        x0 = (width - per_row * pic - (per_row - 1) * 0.15) / 2
        for n in range(N):
            k = int(p["removed"][n])
            color = CATEGORICAL[n % 10]
            shown = result.images[n].astype(np.float32) / 255
            shown[_boundaries(result.segments[n])] = (1.0, 1.0, 0.3)
            for row, (img, title) in enumerate((
                    (shown, f"{short(str(p['names'][n]), 20)}\n{short(str(p['class_names'][n]), 20)}: "
                            f"P = {result.prob[n, 0]:.2f}"),
                    (result.minimal[n], f"minimal: {100 * result.fraction[n, k]:.0f} % removed\n"
                                        f"P = {result.prob[n, k]:.2f}, {k}/{p['num_segments'][n]} superpixels"))):
                if side:
                    left, y = x0 + (2 * n + row) * (pic + 0.15), 0.1 + title_in
                else:
                    r, c = divmod(n, cols)
                    left = x0 + c * (pic + 0.15)
                    y = 0.1 + r * (2 * (pic + title_in) + 0.15) + row * (pic + title_in) + title_in
                ax = fig.add_axes([left / width, 1 - (y + pic) / height, pic / width, pic / height])
                ax.imshow(img)
                bare(ax)
                for s in ax.spines.values():
                    s.set_edgecolor(color)
                    s.set_linewidth(1.5)
                ax.set_title(wrap(title, pic + 0.1, 7, lines=3), fontsize=7, pad=2, linespacing=1.05)
        ax = fig.add_axes([0.55 / width, (0.5 if width >= 5 else 0.62) / height, (width - 0.7) / width, curve_h / height])
        for n in range(N):
            k = int(p["removed"][n])
            color = CATEGORICAL[n % 10]
            f, pr = result.fraction[n, :k + 1], result.prob[n, :k + 1]
            ax.plot(f, pr, color=color, lw=1.2, marker="o", ms=2, label=short(str(p["names"][n]), 24))
            ax.plot([f[-1]], [pr[-1]], marker="*", ms=8, color=color, ls="none")
            if np.isfinite(result.next_prob[n]):
                nxt = float(result.next_fraction[n])
                ax.plot([f[-1], nxt], [pr[-1], result.next_prob[n]], color=color, lw=1, ls=":")
                ax.plot([nxt], [result.next_prob[n]], marker="x", ms=5, color=color, ls="none")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(wrap("fraction of the image removed (greedy, least harmful superpixel first)", width - 0.8, 7),
                      fontsize=7)
        ax.set_ylabel("P(image's class)", fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="*", ms=7, color="0.3", ls="none"),
                    Line2D([], [], marker="x", ms=5, color="0.3", ls="none")]
        labels += ["minimal image", "next removal: class changes"]
        ax.legend(handles, labels, fontsize=7, loc="lower left", frameon=True, framealpha=0.85,
                  ncol=max(1, min(3, int((width - 0.7) // 2.2))))
    return fig

