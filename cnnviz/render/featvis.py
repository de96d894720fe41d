"""Figures for feature visualization results (`cnnviz.engines.featvis`): a grid of optimized images
(units, class models, custom objectives), DeepDream beside its start image with the objective per
step, and inversions beside the original. Images are never smoothed: a PNG (saved at the style's
resolution) enlarges each pixel to a whole number of pixels, a PDF or SVG embeds the pixels as they
are, to be drawn as crisp squares."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from .style import (CATEGORICAL, DEFAULT_WIDTH, RC, bare, check_width, fit, grid_shape, layer_label, line_in,
                    max_height, model_label, short, text_width, wrap)

DPI = RC["savefig.dpi"]
GRID_PX = 200  # grid panels: about this many saved pixels on the longer side (1 inch)
BIG_PX = 300  # dream and inversion panels
MAX_PANEL = 2.0  # inches
TITLE_PT, FOOT_PT, HEAD_PT, DETAIL_PT, NOTE_PT = 8.0, 7.5, 8.5, 7.0, 7.5
MARGIN, GAP_W, GAP_H = 0.06, 0.1, 0.1
PLOT_H, PLOT_LEFT, PLOT_BOTTOM, PLOT_GAP = 1.55, 0.62, 0.42, 0.22
PLOT_MIN_W, PLOT_MIN_H = 1.8, 1.0  # the objective plot beside the pictures (DeepDream): at least this
DREAM_PLOT_H = 0.9  # DeepDream's plot where it goes under the pictures: a strip (the pictures are the figure)
MAX_LEGEND = 8

SCORE_WORDS = {"mean activation": "mean act", "centre activation": "centre act",
               "relative feature distance": "rel. dist", "mean squared activation": "mean sq. act",
               "objective": "objective"}


def figure(result, columns: int | None = None, history: bool | None = None, width: float = DEFAULT_WIDTH,
           layout: str = "row"):
    """The figure for `result.params["mode"]`. `columns`: images per row (default: up to 8, rows
    filled evenly, as many as fit `width` inches; `layout` "grid": about square). `history`: add a
    plot of the objective per image against the step (default: only for DeepDream)."""
    mode = str(result.params.get("mode", "custom"))
    if history is None:
        history = mode == "dream"
    if mode == "dream":
        return _dream(result, history, width)
    if mode == "invert":
        return _invert(result, columns, history, width, layout)
    return _grid_mode(result, mode, columns, history, width, layout)


# --------------------------------------------------------------------------------------------------
# text

def score_text(label: str | None, value: float) -> str:
    """What is printed under an image: "mean act 12.3", "p=0.99", "rel. dist 0.15"."""
    v = float(value)
    if not np.isfinite(v):
        return f"{SCORE_WORDS.get(label, label or 'score')} n/a"
    if label == "probability":
        return f"p={v:.2f}" if v >= 0.01 else f"p={v:.2g}"
    return f"{SCORE_WORDS.get(label, label or 'score')} {sig(v)}"


def sig(v: float) -> str:
    """Three significant digits, trailing zeros kept: 1.00, 0.830, 22.5, 123."""
    return format(float(v), "#.3g").rstrip(".")


def pretty_transforms(text: str | None) -> str:
    """The engine's "pad=16,jitter=8,scale=0.9-1.1,rotate=10" as "pad 16, jitter 8, scale 0.9-1.1,
    rotate 10°", leaving out the parts that do nothing; "none" when none does anything."""
    if not text or text == "none":
        return "none"
    idle = {"pad": "0", "jitter": "0", "scale": "1-1", "rotate": "0"}
    parts = []
    for item in str(text).split(","):
        key, sep, val = item.partition("=")
        if not sep:
            return str(text)
        if idle.get(key) == val:
            continue
        unit = "°" if key == "rotate" else " px" if key in ("pad", "jitter") else ""
        parts.append(f"{key} {val}{unit}")
    return ", ".join(parts) or "none"


def _recipe(p: dict) -> str:
    """The optimization settings in a few words."""
    parts = []
    param = p.get("param")
    if param:
        parts.append("Fourier 1/f" if param == "fourier" else "pixels")
    if p.get("decorrelate"):
        parts.append("decorrelated colour")
    tf = p.get("transforms")
    if tf is not None:
        parts.append(f"transforms: {pretty_transforms(tf)}")
    regs = p.get("regularizers") or {}
    if regs.get("l2_decay"):
        parts.append(f"L2 decay {regs['l2_decay']:g}")
    if regs.get("blur_every"):
        parts.append(f"blur σ={regs.get('blur_sigma', 0.5):g} every {regs['blur_every']} steps")
    if regs.get("clip_percentile"):
        parts.append(f"clip below {regs['clip_percentile']:g}th pct")
    if p.get("lr") is not None:
        parts.append(f"Adam lr {p['lr']:g}")
    priors = p.get("priors")
    head = f"priors {priors}" if priors else ""
    return head + (": " if head and parts else "") + ", ".join(parts)


def _steps(p: dict) -> str:
    s = p.get("steps")
    return f"{s} steps" if s is not None else ""


def _join(*parts: str, sep: str = "; ") -> str:
    return sep.join(x for x in parts if x)


# --------------------------------------------------------------------------------------------------
# layout

def _panel_size(images: list[np.ndarray], target_px: int) -> tuple[float, float]:
    """Inches of one panel: the largest image enlarged by a whole factor to about `target_px`
    saved pixels on its longer side; an image larger than MAX_PANEL inches at one saved pixel per
    pixel is shown at MAX_PANEL (thinned in a PNG; a PDF or SVG keeps every pixel)."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    s = max(1, round(target_px / max(h, w)))
    pw, ph = w * s / DPI, h * s / DPI
    if max(pw, ph) > MAX_PANEL:
        f = MAX_PANEL / max(pw, ph)
        pw, ph = pw * f, ph * f
    return pw, ph


def _columns(n: int, columns: int | None, width: float, layout: str, most: int = 8) -> int:
    """Images per row: as many as fit `width` ("row", at most `columns` or 8) or about square ("grid")."""
    return grid_shape(n, width, layout, min_panel=0.75, max_cols=columns or most)[1]


class _Layout:
    """Panels in a grid (title above, score below each), a wrapped heading, and optionally a line
    plot under the grid; placed in inches in a figure `width` wide so that text never overlaps."""

    def __init__(self, images, titles, feet, head, detail, cols, target_px, plot_note=None, legend=None,
                 width: float = DEFAULT_WIDTH, plot_beside: bool = False, plot_h: float = PLOT_H):
        plot = plot_note is not None
        self.n = len(images)
        W = check_width(width)
        pw, ph = _panel_size(images, target_px)
        room = (W - 2 * MARGIN - (cols - 1) * GAP_W) / cols
        if pw > room:  # smaller than the pixel target, to fit the width (a PDF keeps every pixel)
            pw, ph = room, ph * room / pw
        self.titles = [wrap(t, pw + 0.04, TITLE_PT, lines=3) for t in titles]
        self.feet = [wrap(t, pw + 0.04, FOOT_PT, lines=2) for t in feet]
        t_lines = max([t.count("\n") + 1 for t in self.titles if t] or [0])
        f_lines = max([t.count("\n") + 1 for t in self.feet if t] or [0])
        title_in = 0.04 + line_in(TITLE_PT, t_lines)
        foot_in = 0.04 + line_in(FOOT_PT, f_lines)
        rows = math.ceil(self.n / cols)
        grid_w = cols * pw + (cols - 1) * GAP_W
        legend_w = 0.0
        if plot and legend:
            legend_w = min(0.4 * W, 0.35 + max(text_width(s, RC["legend.fontsize"]) for s in legend))
        self.legend_chars = legend_w
        self.head = wrap(head, W - 0.1, HEAD_PT)
        self.detail = wrap(detail, W - 0.1, DETAIL_PT) if detail else ""
        head_lines = self.head.count("\n") + 1
        detail_lines = self.detail.count("\n") + 1 if detail else 0
        head_in = 0.1 + line_in(HEAD_PT, head_lines) + (0.04 + line_in(DETAIL_PT, detail_lines) if detail else 0.0)
        limit = max_height(W)

        def grid_height(ph_):
            return rows * (title_in + ph_ + foot_in) + (rows - 1) * GAP_H

        # the plot as a strip beside the pictures where it gets at least PLOT_MIN_W in and the
        # pictures' height, else under them (PLOT_H tall); taller than the page: smaller pictures
        beside = plot and plot_beside and W - 2 * MARGIN - grid_w - PLOT_LEFT - legend_w >= PLOT_MIN_W and \
            ph >= PLOT_MIN_H
        under = PLOT_GAP + plot_h + PLOT_BOTTOM + line_in(NOTE_PT, 2) if plot and not beside else 0.0
        fixed = head_in + MARGIN + under
        if fixed + grid_height(ph) > limit:
            f = fit(lambda f_: fixed + grid_height(ph * f_), limit)
            pw, ph = pw * f, ph * f
            grid_w = cols * pw + (cols - 1) * GAP_W
        cell_h = title_in + ph + foot_in
        grid_h = grid_height(ph)
        if beside:
            plot_w = W - 2 * MARGIN - grid_w - PLOT_LEFT - legend_w - 0.1
        else:
            plot_w = W - PLOT_LEFT - MARGIN - legend_w
        self.plot_note = wrap(plot_note, plot_w, NOTE_PT) if plot_note else ""
        note_in = line_in(NOTE_PT, self.plot_note.count("\n") + 1) if plot_note else 0.0
        if beside:
            H = head_in + max(grid_h, title_in + ph + PLOT_BOTTOM - 0.02) + MARGIN  # the plot's ticks and label
        else:
            H = head_in + grid_h + MARGIN + (PLOT_GAP + note_in + plot_h + PLOT_BOTTOM if plot else 0.0)
        self.fig = plt.figure(figsize=(W, H), dpi=DPI)  # saved at this resolution (see _panel_size)
        x0 = MARGIN if beside else (W - grid_w) / 2
        self.axes = []
        for k in range(self.n):
            i, j = divmod(k, cols)
            left = x0 + j * (pw + GAP_W)
            top = head_in + i * (cell_h + GAP_H) + title_in
            self.axes.append(self.fig.add_axes((left / W, 1 - (top + ph) / H, pw / W, ph / H)))
        self.plot_ax = None
        if beside:  # top with the pictures' (the note above it, in the titles' room), ticks in the feet's
            left = x0 + grid_w + PLOT_LEFT
            top = head_in + max(title_in, note_in + 0.04)
            h = head_in + title_in + ph - top  # bottom with the pictures
            self.plot_ax = self.fig.add_axes((left / W, 1 - (top + h) / H, plot_w / W, h / H))
        elif plot:
            self.plot_ax = self.fig.add_axes((PLOT_LEFT / W, PLOT_BOTTOM / H, plot_w / W, plot_h / H))
        self.fig.suptitle(self.head, fontsize=HEAD_PT, y=1 - 0.05 / H, va="top")
        if detail:
            self.fig.text(0.5, 1 - (0.09 + line_in(HEAD_PT, head_lines)) / H, self.detail, fontsize=DETAIL_PT,
                          color="0.3", ha="center", va="top", linespacing=1.15)

    def show(self, k: int, image: np.ndarray) -> None:
        ax = self.axes[k]
        ax.imshow(image, interpolation="none")  # PNG: nearest; PDF, SVG: the pixels themselves
        bare(ax)
        for s in ax.spines.values():
            s.set_linewidth(0.4)
            s.set_color("0.6")
        if self.titles[k]:
            ax.set_title(self.titles[k], fontsize=TITLE_PT, pad=2.5, linespacing=1.05)
        if self.feet[k]:
            ax.set_xlabel(self.feet[k], fontsize=FOOT_PT, labelpad=2.5, linespacing=1.05)


def _history_plot(ax, steps, values, labels, ylabel, note="", start=None, boundaries=()):
    """Objective per image against the step; a legend (outside, right) for at most MAX_LEGEND lines.
    `note`: a title, already wrapped; `start`: a reference value drawn as a dashed line ("original");
    `boundaries`: dotted verticals."""
    from matplotlib.ticker import MaxNLocator

    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    b = values.shape[1]
    if b <= len(CATEGORICAL):
        colors = [CATEGORICAL[i] for i in range(b)]
    else:
        colors = [plt.get_cmap("viridis")(i / max(1, b - 1)) for i in range(b)]
    marker = "o" if len(steps) <= 24 else None
    lines = []
    for i in range(b):
        lines += ax.plot(steps, values[:, i], color=colors[i], lw=1.3, marker=marker, ms=3)
    if start is not None:
        ax.axhline(start, color="0.45", lw=0.9, ls="--")
        ax.annotate("original", (0, start), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", fontsize=7, color="0.35", va="bottom")
    for s in boundaries:
        ax.axvline(s, color="0.55", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 4, 5, 10]))
    ax.grid(color="0.92", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.margins(x=0.025)
    if note:
        ax.set_title(note, fontsize=NOTE_PT, loc="left", color="0.3", linespacing=1.1)
    if 1 < b <= MAX_LEGEND:
        # handles given explicitly: matplotlib skips labels that start with "_" (layer names do)
        ax.legend(lines, [short(str(s), 20) for s in labels[:b]], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False, borderaxespad=0.0, handlelength=1.5)


def _history_note(p: dict, n: int) -> str:
    note = "objective during the optimization"
    if pretty_transforms(p.get("transforms")) != "none":
        note += ", each step through its random transforms"
    if n > MAX_LEGEND:
        note += f" ({n} images, one line each)"
    return note


def _legend_labels(result, n: int, history: bool) -> list[str] | None:
    if not history or n < 2 or n > MAX_LEGEND:
        return None
    return [short(str(s), 20) for s in result.labels[:n]]


# --------------------------------------------------------------------------------------------------
# modes

def _grid_mode(result, mode: str, columns, history: bool, width: float, layout: str):
    p = result.params
    images = list(result.images)
    n = len(images)
    if n == 0:
        raise ValueError("the result holds no images")
    labels = [str(s) for s in result.labels]
    label = p.get("score_label")
    feet = [score_text(label, v) for v in result.score]
    model = model_label(result.provenance, p)
    if mode == "units":
        kind = "activation at the map's centre" if p.get("unit_kind") == "neuron" else "mean of the feature map"
        head = f"{model}, {layer_label(p['layer'], p.get('layer_type')) if p.get('layer') else '?'}: images maximizing each unit ({kind}), {_steps(p)}"
        detail = _recipe(p)
        ylabel = label or "objective"
    elif mode == "class":
        what = "softmax probability" if p.get("objective_kind") == "prob" else "logit"
        head = f"Class models of {model}: {what} maximized, {_steps(p)}"
        detail = _join(_recipe(p), "p = the model's probability for the class, on the final image")
        ylabel = what
    else:
        head = f"{model}: maximize {p.get('objective', 'the objective')}, {_steps(p)}"
        detail = _recipe(p)
        ylabel = "objective"
    cols = _columns(n, columns, width, layout)
    with plt.rc_context(RC):
        lay = _Layout(images, labels, feet, head, detail, cols, GRID_PX,
                      plot_note=_history_note(p, n) if history else None, legend=_legend_labels(result, n, history),
                      width=width)
        for k in range(n):
            lay.show(k, images[k])
        if history:
            _history_plot(lay.plot_ax, result.history_steps, result.history, labels, ylabel, lay.plot_note)
    return lay.fig


def _dream(result, history: bool, width: float):
    p = result.params
    model = model_label(result.provenance, p)
    layer = layer_label(p["layer"], p.get("layer_type")) if p.get("layer") else "?"
    octaves = p.get("octaves", "?")
    label = p.get("score_label")
    start = result.start
    has_start = start is not None and start.size > 0
    panels, titles, feet = [], [], []
    if has_start:
        panels.append(start)
        titles.append("original")
        feet.append(score_text(label, p["start_objective"]) if "start_objective" in p else "")
    panels.append(result.images[0])
    titles.append(f"DeepDream: {layer}, {octaves} octave{'' if octaves == 1 else 's'}")
    feet.append(score_text(label, result.score[0]))
    head = f"DeepDream of {model} at {layer}"
    detail = (f"{octaves} octave{'' if octaves == 1 else 's'} × {p.get('steps', '?')} steps (scale {p.get('octave_scale', '?')}), "
              f"step size {p.get('step_size', '?')}, jitter {p.get('jitter', '?')} px; "
              f"objective: {label or 'dream'} of the layer")
    per = int(p.get("steps", 0) or 0)  # one logged value per step: octave k starts at entry k * per
    hs = np.asarray(result.history_steps, dtype=np.float64)
    n_oct = int(octaves) if isinstance(octaves, (int, float)) else math.ceil(len(hs) / per) if per else 0
    bounds = [(hs[k * per - 1] + hs[k * per]) / 2 for k in range(1, n_oct) if k * per < len(hs)] if per else []
    note = "objective per step" + ("; dotted: next octave, a larger image" if bounds else "")
    with plt.rc_context(RC):
        cols = _columns(len(panels), None, width, "row")
        lay = _Layout(panels, titles, feet, head, detail, cols, BIG_PX, plot_note=note if history else None,
                      width=width, plot_beside=True, plot_h=DREAM_PLOT_H)
        for k, im in enumerate(panels):
            lay.show(k, im)
        if history:
            _history_plot(lay.plot_ax, result.history_steps, result.history, ["dream"],
                          SCORE_WORDS.get(label, label or "objective"), lay.plot_note,
                          start=p.get("start_objective"), boundaries=bounds)
    return lay.fig


def _invert(result, columns, history: bool, width: float, layout: str):
    p = result.params
    model = model_label(result.provenance, p)
    label = p.get("score_label")
    start = result.start
    has_start = start is not None and start.size > 0
    from ..names import readable_name

    labels = [readable_name(str(s)) for s in result.labels]  # each layer by what and where; the addresses in params
    panels = ([start] if has_start else []) + list(result.images)
    titles = (["original"] if has_start else []) + labels
    feet = ([f"{start.shape[0]}×{start.shape[1]} input crop"] if has_start else []) + \
        [score_text(label, v) for v in result.score]
    if p.get("priors") == "none":
        priors = "no priors"
    else:
        priors = _join(f"priors {p.get('priors', '?')}: TV × {p.get('tv', 0):g} (β={p.get('beta', 2):g})",
                       f"α-norm × {p.get('alpha_weight', 0):g} (α={p.get('alpha', 6):g})",
                       f"transforms: {pretty_transforms(p.get('transforms'))}", sep=", ")
    noise = p.get("start_distance")
    noise_txt = f" (starting noise: {', '.join(f'{v:.2f}' for v in noise)})" if noise else ""
    n = len(labels)
    head = (f"Inversion of {model} from {n} layer{'' if n == 1 else 's'} (Mahendran & Vedaldi 2015), "
            f"{_steps(p)}")
    detail = _join(f"{p.get('param', 'pixel')} parameterization", priors,
                   f"rel. dist = ‖φ(x) − φ(x0)‖² / ‖φ(x0)‖² at the layer{noise_txt}")
    cols = _columns(len(panels), columns, width, layout)
    with plt.rc_context(RC):
        lay = _Layout(panels, titles, feet, head, detail, cols, BIG_PX,
                      plot_note=_history_note(p, n) if history else None, legend=_legend_labels(result, n, history),
                      width=width)
        for k, im in enumerate(panels):
            lay.show(k, im)
        if history:
            ylabel = "−rel. dist − priors" if p.get("priors") != "none" else "−rel. dist"
            _history_plot(lay.plot_ax, result.history_steps, result.history, labels, ylabel, lay.plot_note)
    return lay.fig
