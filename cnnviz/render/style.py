"""Shared figure style: fonts sized for papers, colorbars, categorical colours, atomic saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() in ("", "agg") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from ..files import atomic_path  # noqa: E402

# TrueType fonts in PDF/EPS (many venues reject Type 3), SVG text kept as <text>. Read when a figure
# is saved, so `write_figure` applies them there too (a renderer's rc_context has ended by then).
FONT_EMBEDDING = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}
RC = {"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "figure.dpi": 100, "savefig.dpi": 200, **FONT_EMBEDDING}
SEQUENTIAL = "viridis"
CATEGORICAL = list(plt.get_cmap("tab10").colors)
OTHER = (0.78, 0.78, 0.78)


def colorbar(fig, ax, mappable, label: str):
    cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.05)
    cb = fig.colorbar(mappable, cax=cax)
    cb.set_label(label)
    cb.ax.tick_params(labelsize=7)
    return cb


def bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: Path) -> None:
    """Write the figure atomically; the format comes from the extension."""
    with atomic_path(path) as tmp:
        write_figure(fig, tmp, Path(path).suffix)


def write_figure(fig, file: Path, suffix: str) -> None:
    """Write the figure to `file` in the format named by `suffix` (.png, .pdf, .svg)."""
    with plt.rc_context(FONT_EMBEDDING):
        fig.savefig(file, format=suffix.lower().lstrip("."), bbox_inches="tight", dpi=max(fig.dpi, RC["savefig.dpi"]))


def short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def gray_background(image: np.ndarray) -> np.ndarray:
    g = image.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    return np.repeat(0.35 + 0.65 * g, 3, axis=2)
