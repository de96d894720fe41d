"""Shared figure style: fonts sized for papers, colorbars, categorical colours, atomic saving."""

from __future__ import annotations

import contextlib
import contextvars
import re

import math
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
# Figures are laid out at the width they are printed at (DEFAULT_WIDTH: a page's text width), so
# these sizes are the printed sizes; none is below MIN_FONT.
DEFAULT_WIDTH = 7.0  # inches
MIN_WIDTH = 2.5  # narrower, 7 pt text leaves no room for the pictures
MIN_FONT = 7.0  # pt
LAYOUTS = ("row", "grid")
TITLE_PT, TEXT_PT, SUPTITLE_PT = 7.5, 7.0, 8.0
RC = {"font.size": 7.5, "axes.titlesize": TITLE_PT, "axes.labelsize": 7.0, "legend.fontsize": 7.0,
      "xtick.labelsize": 7.0, "ytick.labelsize": 7.0, "figure.titlesize": SUPTITLE_PT, "figure.dpi": 100,
      "savefig.dpi": 200, **FONT_EMBEDDING}
SEQUENTIAL = "viridis"
CATEGORICAL = list(plt.get_cmap("tab10").colors)
OTHER = (0.78, 0.78, 0.78)


def colorbar(fig, ax, mappable, label: str, extend: str = "neither", height_in: float | None = None):
    """A colorbar beside `ax`, labelled; the label wrapped to the bar's height (`height_in`, default
    the axes' height). In a constrained-layout figure the bar is placed by the layout."""
    if fig.get_layout_engine() is not None:
        cb = fig.colorbar(mappable, ax=ax, extend=extend, fraction=0.06, pad=0.03, aspect=16)
    else:
        cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.05)
        cb = fig.colorbar(mappable, cax=cax, extend=extend)
    if height_in is None:
        height_in = ax.get_position().height * fig.get_figheight()
    cb.set_label(wrap(label, max(height_in, 0.8), RC["axes.labelsize"], lines=2), linespacing=1.0)
    cb.ax.tick_params(labelsize=MIN_FONT, length=2, pad=1)
    return cb


def bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: Path) -> None:
    """Write the figure atomically; the format comes from the extension."""
    with atomic_path(path) as tmp:
        write_figure(fig, tmp, Path(path).suffix)


def write_figure(fig, file: Path, suffix: str) -> None:
    """Write the figure to `file` in the format named by `suffix` (.png, .pdf, .svg), at its own
    size: the renderers lay figures out for the width they are printed at, so a 7 in figure is a
    7 in page (a tight crop would change the width, and with it the printed text size)."""
    with plt.rc_context(FONT_EMBEDDING):
        fig.savefig(file, format=suffix.lower().lstrip("."), dpi=max(fig.dpi, RC["savefig.dpi"]))


def short(name: str, n: int = 22) -> str:
    """`name` for a label about `n` characters wide, never cut in the middle of a word: a name
    with synonyms ("tench, Tinca tinca") keeps its leading ones that fit, anything else longer
    goes onto further lines, broken after a space, dot, underscore, comma, hyphen or slash."""
    name = str(name)
    if len(name) <= n:
        return name
    if ", " in name:
        kept = ""
        for part in name.split(", "):
            trial = f"{kept}, {part}" if kept else part
            if len(trial) > n:
                break
            kept = trial
        name = kept or name.split(", ")[0]
        if len(name) <= n:
            return name
    lines, line = [], ""
    for piece in re.findall(r"[^ ._,/-]*(?:[ ._,/-]+|$)", name):
        if line and len(line + piece.rstrip()) > n:
            lines.append(line.rstrip())
            line = ""
        line += piece
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)


def gray_background(image: np.ndarray) -> np.ndarray:
    g = image.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    return np.repeat(0.35 + 0.65 * g, 3, axis=2)


# --------------------------------------------------------------------------------------------------
# Width and layout: one rule for every renderer

def check_width(width) -> float:
    """The figure width in inches, or a ParameterError naming the value and what to give."""
    from ..errors import ParameterError

    try:
        w = float(width)
    except (TypeError, ValueError):
        w = float("nan")
    if not np.isfinite(w):
        raise ParameterError(f"width {width!r} is not a number of inches; give e.g. 7 for a page or 3.5 for a column")
    if w <= 0:
        raise ParameterError(f"width {width!r} is not positive; give the figure width in inches, e.g. 7 for a page or "
                             "3.5 for a column")
    if w < MIN_WIDTH:
        raise ParameterError(f"width {width!r} in is too narrow: figures are at least {MIN_WIDTH:g} in wide (7 pt text "
                             "and the pictures must fit); give e.g. 3.5 for a column")
    if w > 40:
        raise ParameterError(f"width {width!r} in is wider than any page; give e.g. 7 for a page or 3.5 for a column")
    return w


# The tallest a figure is by default: a page's text block (9 in at a page's 7 in width, 8 in in a
# 3.5 in column, leaving room for the caption). Renderers shrink their pictures, use fewer rows or
# more columns to stay under it; `render(..., max_height=H)` (or None for no limit) asks for another.
PAGE_HEIGHT, COLUMN_HEIGHT = 9.0, 8.0
_max_height = contextvars.ContextVar("cnnviz_max_height", default="page")


def max_height(width: float) -> float:
    """The tallest a figure `width` inches wide may be, in inches (infinite where the caller of
    `render` asked for no limit)."""
    asked = _max_height.get()
    if asked is None:
        return math.inf
    if asked != "page":
        return float(asked)
    return PAGE_HEIGHT if float(width) > 3.5 + 1e-6 else COLUMN_HEIGHT


def check_max_height(value):
    """None (no limit), "page" (the text block's height) or a positive number of inches."""
    from ..errors import ParameterError

    if value is None or value == "page":
        return value
    try:
        h = float(value)
    except (TypeError, ValueError):
        h = float("nan")
    if not np.isfinite(h) or h < 1.0:
        raise ParameterError(f"max_height {value!r} is not a height of at least 1 in; give e.g. 9 for a page, or "
                             "None for no limit")
    return h


@contextlib.contextmanager
def height_limit(value):
    """Within the block, figures are laid out to at most `value` inches tall (see `max_height`)."""
    token = _max_height.set(check_max_height(value))
    try:
        yield
    finally:
        _max_height.reset(token)


def fit(height_of, limit: float, lo: float = 0.3) -> float:
    """The largest scale s in [lo, 1] with height_of(s) <= limit (bisection; height_of grows with
    s); 1 when height_of(1) already fits, `lo` when nothing does."""
    if height_of(1.0) <= limit:
        return 1.0
    if height_of(lo) > limit:
        return lo
    a, b = lo, 1.0
    for _ in range(30):
        m = (a + b) / 2
        a, b = (m, b) if height_of(m) <= limit else (a, m)
    return a


def check_layout(layout) -> str:
    from ..errors import ParameterError

    if layout not in LAYOUTS:
        raise ParameterError(f"layout {layout!r} is not known; use 'row' (panels side by side, wrapped to the width) "
                             "or 'grid' (as square as the panels allow)")
    return layout


def grid_shape(n: int, width: float, layout: str = "row", min_panel: float = 1.3,
               max_cols: int | None = None) -> tuple[int, int]:
    """(rows, columns) for `n` panels in a figure `width` inches wide, each panel (with what sits
    beside it: colorbar, gaps) at least `min_panel` inches wide so that its 7 pt labels fit.
    "row": as many side by side as fit; "grid": no more columns than rows need (about square).
    Rows are filled evenly (7 panels in two rows: 4 + 3)."""
    width, layout = check_width(width), check_layout(layout)
    n = max(1, int(n))
    cap = min(n, max(1, int((width + 1e-9) // min_panel)))
    if max_cols:
        cap = min(cap, max(1, int(max_cols)))
    if layout == "grid":
        cap = min(cap, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cap)
    return rows, math.ceil(n / rows)


def line_in(pt: float, lines: int = 1) -> float:
    """Inches that `lines` lines of `pt`-point text take."""
    return lines * pt * 1.22 / 72.0


def lines_of(text: str) -> int:
    return text.count("\n") + 1 if text else 0


MARGIN, GAP, ROW_GAP = 0.08, 0.18, 0.1
BAR_IN = 0.07  # a colorbar's thickness (it lies under its picture)
MIN_PICTURE = 1.05  # inches: Panels shrink pictures to fit the page's height down to this (a 1.25 in panel less its gap)


class Panels:
    """`n` pictures in a figure exactly `width` inches wide, placed in inches so that nothing
    overlaps: a wrapped heading, then rows of panels, each a picture with its title above and,
    where asked, a horizontal colorbar (labelled) and a footnote below; a legend strip at the bottom.

    The columns come from `grid_shape` (`layout` "row" or "grid", `min_panel` inches a panel at
    least). `groups`: panels per group, each group starting a new row (one image's panels in a
    multi-image figure); `aspect`: picture height / width; `colorbars`: which panels get one.
    `legend_in`: inches of legend strip under the panels (see `legend_rect`). After drawing, fill
    the colorbars with `colorbar(k, mappable, label)`."""

    def __init__(self, n: int, width: float = DEFAULT_WIDTH, layout: str = "row", *, titles=None, feet=None,
                 head: str = "", aspect: float = 1.0, min_panel: float = 1.25, max_cols: int | None = None,
                 groups: int | None = None, colorbars=False, legend_in: float = 0.0, max_picture: float = 2.4,
                 title_lines: int = 4, extra_cells: int = 0, gap: float = GAP, title_pt: float = TITLE_PT):
        width, layout = check_width(width), check_layout(layout)
        self.gap = gap
        self.width, self.n = width, n
        group = groups or n
        rows_g, cols = grid_shape(group + extra_cells, width, layout, min_panel, max_cols)
        ngroups = math.ceil(n / group)
        self.title_pt = title_pt
        cbars = list(colorbars) if isinstance(colorbars, (list, tuple)) else [bool(colorbars)] * n
        self._args = (n, width, group, ngroups, titles, feet, head, aspect, cbars, legend_in, title_lines)
        full = min((width - 2 * MARGIN - (cols - 1) * gap) / cols, max_picture)
        limit = max_height(width)
        H = self._plan(cols, rows_g, full)
        # taller than the page: more columns where the panels still get most of min_panel (fewer
        # rows), then smaller pictures
        total = group + extra_cells
        for more in range(cols + 1, total + 1):
            if H <= limit:
                break
            rows_more = math.ceil(total / more)
            w_more = min((width - 2 * MARGIN - (more - 1) * gap) / more, max_picture)
            if w_more < 0.75 * (min_panel - gap):
                break
            if rows_more < rows_g:
                cols, rows_g, full = more, rows_more, w_more
                H = self._plan(cols, rows_g, full)
        if H > limit:
            # no picture under MIN_PICTURE in (its notes and colorbar labels need it): such a figure
            # stays taller than the limit
            scale = fit(lambda f: self._plan(cols, rows_g, full * f), limit, lo=min(1.0, MIN_PICTURE / full))
            H = self._plan(cols, rows_g, full * scale)
        pic_w, row_h, row_title, head_in = self.pic_w, self._row_h, self._row_title, self._head_in
        rows = self.rows
        self.fig = plt.figure(figsize=(width, H))
        self.H = H
        x0 = (width - (cols * pic_w + (cols - 1) * gap)) / 2
        self._x = [x0 + c * (pic_w + gap) for c in range(cols)]
        tops, y = [], MARGIN + head_in
        for r in range(self.rows):
            tops.append(y)
            y += row_h[r] + ROW_GAP
        self._top = [t + line_in(title_pt, n_) + (0.05 if n_ else 0.0) for t, n_ in zip(tops, row_title)]
        self._grid_bottom = y - ROW_GAP
        self.axes = []
        for k, (r, c) in enumerate(self.slots):
            ax = self.fig.add_axes(self._rect(self._x[c], self._top[r], pic_w, self.pic_h))
            if self.titles[k]:
                ax.set_title(self.titles[k], fontsize=title_pt, pad=3, linespacing=1.05)
            self.axes.append(ax)
        self._cbars = cbars
        if head:
            self.fig.suptitle(self.head, fontsize=SUPTITLE_PT, y=1 - MARGIN / H, va="top", linespacing=1.1)

    def _plan(self, cols: int, rows_g: int, pic_w: float) -> float:
        """Lay the panels out `cols` to a row, pictures `pic_w` wide; returns the figure's height."""
        n, width, group, ngroups, titles, feet, head, aspect, cbars, legend_in, title_lines = self._args
        gap, title_pt = self.gap, self.title_pt
        self.cols = cols
        self.rows = rows_g * ngroups
        self.slots = [((k // group) * rows_g + (k % group) // cols, (k % group) % cols) for k in range(n)]
        self.pic_w, self.pic_h = pic_w, pic_w * aspect
        self.titles = [wrap(t, pic_w + 0.6 * gap, title_pt, lines=title_lines) if t else ""
                       for t in (titles or [""] * n)]
        self.feet = [wrap(t, pic_w + 0.6 * gap, TEXT_PT, lines=3) if t else "" for t in (feet or [""] * n)]
        self.head = wrap(head, width - 2 * MARGIN, SUPTITLE_PT) if head else ""
        row_title = [0] * self.rows
        row_below = [0.0] * self.rows
        for k, (r, _) in enumerate(self.slots):
            row_title[r] = max(row_title[r], lines_of(self.titles[k]))
            below = (BAR_IN + 0.05 + line_in(MIN_FONT) + 0.04 + line_in(RC["axes.labelsize"], 2)) if cbars[k] else 0.0
            below += (0.04 + line_in(TEXT_PT, lines_of(self.feet[k]))) if self.feet[k] else 0.0
            row_below[r] = max(row_below[r], below)
        head_in = (0.06 + line_in(SUPTITLE_PT, lines_of(self.head))) if head else 0.0
        row_h = [line_in(title_pt, t) + (0.05 if t else 0.0) + self.pic_h + b for t, b in zip(row_title, row_below)]
        self.legend_in = legend_in
        self._row_h, self._row_title, self._head_in = row_h, row_title, head_in
        return MARGIN + head_in + sum(row_h) + ROW_GAP * (self.rows - 1) + legend_in + MARGIN

    def _rect(self, left: float, top: float, w: float, h: float):
        """Figure-fraction rectangle of a box `left`, `top` inches from the top-left corner."""
        return (left / self.width, 1 - (top + h) / self.H, w / self.width, h / self.H)

    def free_rect(self):
        """Figure-fraction rectangle of the unused cells at the end of the last row, or None."""
        r, c = self.slots[-1]
        if c + 1 >= self.cols:
            return None
        left = self._x[c + 1]
        return self._rect(left, self._top[r] - line_in(TITLE_PT), self.width - MARGIN - left,
                          self.pic_h + line_in(TITLE_PT))

    def legend_rect(self):
        """Figure-fraction rectangle of the legend strip under the panels."""
        return self._rect(MARGIN, self._grid_bottom + 0.04, self.width - 2 * MARGIN, self.legend_in - 0.04)

    def strip_colorbar(self, mappable, label: str, extend: str = "neither"):
        """One horizontal colorbar for every panel, centred in the legend strip (`legend_in` must
        leave it about 0.45 in)."""
        from matplotlib.ticker import MaxNLocator

        w = min(3.0, self.width - 2 * MARGIN - 0.4)
        cax = self.fig.add_axes(self._rect((self.width - w) / 2, self._grid_bottom + 0.08, w, BAR_IN))
        cb = self.fig.colorbar(mappable, cax=cax, orientation="horizontal", extend=extend)
        cb.locator = MaxNLocator(nbins=max(2, min(6, int(w / 0.42))))
        cb.update_ticks()
        cb.ax.tick_params(labelsize=MIN_FONT, length=2, pad=1)
        cb.ax.xaxis.get_offset_text().set_fontsize(MIN_FONT)
        cb.set_label(label, labelpad=1, fontsize=RC["axes.labelsize"])
        return cb

    def colorbar(self, k: int, mappable, label: str, extend: str = "neither"):
        """A horizontal colorbar under picture `k`, with at most 4 ticks and the label wrapped to
        the picture's width."""
        from matplotlib.ticker import MaxNLocator

        r, c = self.slots[k]
        inset = min(0.12, self.pic_w * 0.1)  # room for the end ticks' labels, clear of the next panel's
        cax = self.fig.add_axes(self._rect(self._x[c] + inset, self._top[r] + self.pic_h + 0.05,
                                           self.pic_w - 2 * inset, BAR_IN))
        cb = self.fig.colorbar(mappable, cax=cax, orientation="horizontal", extend=extend)
        cb.locator = MaxNLocator(nbins=max(2, min(5, int((self.pic_w - 2 * inset) / 0.42))))
        cb.update_ticks()
        cb.ax.tick_params(labelsize=MIN_FONT, length=2, pad=1)
        cb.ax.xaxis.get_offset_text().set_fontsize(MIN_FONT)
        cb.set_label(wrap(label, self.pic_w + 0.6 * self.gap, RC["axes.labelsize"], lines=2), labelpad=1,
                     linespacing=1.0, fontsize=RC["axes.labelsize"])
        if self.feet[k]:
            self.axes[k].set_xlabel("")
        return cb

    def foot(self, k: int) -> None:
        """Write panel `k`'s footnote under it (under its colorbar when it has one)."""
        if not self.feet[k]:
            return
        r, c = self.slots[k]
        below = self._top[r] + self.pic_h + 0.04
        if self._cbars[k]:
            below += BAR_IN + 0.05 + line_in(MIN_FONT) + 0.04 + line_in(RC["axes.labelsize"], 2)
        self.fig.text((self._x[c] + self.pic_w / 2) / self.width, 1 - below / self.H, self.feet[k],
                      fontsize=TEXT_PT, ha="center", va="top", linespacing=1.05)


def text_width(text: str, pt: float) -> float:
    """Inches that one line of `text` takes at `pt` points in the figure font (measured, a little
    wider than drawn)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    w, _, _ = text_to_path.get_text_width_height_descent(str(text), FontProperties(size=pt), ismath=False)
    return w / 72.0


def wrap(text: str, width_in: float, pt: float = TITLE_PT, lines: int | None = None) -> str:
    """`text` wrapped to lines at most `width_in` inches wide at `pt` points (measured; each
    existing line on its own; a word too long for a line is cut); with `lines`, at most that many
    lines, the last ending in an ellipsis."""
    out = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if text_width(trial, pt) <= width_in or not line:
                line = trial
            else:
                out.append(line)
                line = word
            while text_width(line, pt) > width_in and len(line) > 1:  # one word wider than the line
                cut = max(1, int(len(line) * width_in / text_width(line, pt)) - 1)
                out.append(line[:cut])
                line = line[cut:]
        out.append(line)
    if lines is not None and len(out) > lines:
        out = out[:lines]
        last = out[-1]
        while last and text_width(last + " …", pt) > width_in:
            last = last[:-1]
        out[-1] = last.rstrip() + " …"
    return "\n".join(out)


def suptitle(fig, text: str, width: float, pt: float = SUPTITLE_PT):
    """The figure's title, wrapped to the figure's width."""
    return fig.suptitle(wrap(text, width - 0.1, pt), fontsize=pt)


def model_label(provenance: dict, params: dict | None = None) -> str:
    """The model's name as figures show it, marked when its weights are random (`--weights none`):
    maps of an untrained network must not pass for a trained one's."""
    prov = provenance or {}
    model = str(prov.get("model") or (params or {}).get("model") or "model")
    weights = str(prov.get("weights") or "").strip().lower()
    if weights == "none" or weights.startswith("random"):
        return f"{model} with RANDOM weights (untrained)"
    return model


def class_label(result, index: int) -> str:
    """The name of class `index` for a result that stores no class list: `params["class_names"]`
    where the engine stored them, else (results saved before they did) the ImageNet name for a
    1000-class torchvision or EfficientNet-Lite model loaded by name, else "class N". A model given
    in memory (`cnnviz.wrap`, a bare module) never gets ImageNet names it did not declare."""
    index = int(index)
    names = (result.params or {}).get("class_names") or {}
    if str(index) in names:
        return str(names[str(index)])
    prov = result.provenance or {}
    if (prov.get("num_classes") == 1000 and ":" not in str(prov.get("model", ":"))
            and prov.get("weights") != "in memory"):
        try:
            from ..sources.torchvision import imagenet_categories

            return imagenet_categories()[index]
        except Exception:  # noqa: BLE001 (torchvision without its metadata: fall back to the index)
            pass
    return f"class {index}"


def layer_name(address, kind: str | None = None) -> str:
    """A layer as figures list it (tick labels, legends): what it is and where, no address
    (`cnnviz.layers.readable_name`), as `layer_label` does."""
    from ..names import layer_name as name

    return name(str(address), kind)


def layer_label(address, kind: str | None = None) -> str:
    """A layer as a title or caption names it: what it is and where (an activation by its type
    `kind` where the result recorded it, params["layer_type"]; `cnnviz.layers.readable_name`):
    "head, ReLU6 after the last conv" for Lite0's `_swish@1`. The address itself, what --layer
    takes, stays in the result's params."""
    from ..names import readable_name

    return readable_name(str(address), kind)
