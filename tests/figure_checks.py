"""What every figure must satisfy once laid out for a width: the width asked for, no text under
7 pt, nothing outside the figure, no two texts on top of each other."""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.text import Text

MIN_PT = 7.0


def drawn_texts(fig) -> list[Text]:
    """The text artists the figure draws with something in them: titles, labels, legends, notes
    and the tick labels inside each axis's view (matplotlib keeps hidden ones off the view). Drawn
    at the resolution figures are saved at: at a screen's 100 dpi, hinting makes text up to 10 %
    wider than in a PDF or a saved PNG."""
    from cnnviz.render.style import RC

    fig.set_dpi(RC["savefig.dpi"])
    fig.canvas.draw()
    ticks = {id(lbl) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks() for lbl in (tick.label1, tick.label2)}
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks and not _tick_like(t)]
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if tick.get_visible() and lo - tol <= tick.get_loc() <= hi + tol:
                    texts += [lbl for lbl in (tick.label1, tick.label2) if lbl.get_visible()]
    out = []
    for t in texts:
        if not t.get_visible() or not t.get_text().strip() or (t.axes is not None and not t.axes.get_visible()):
            continue
        out.append(t)
    return list(dict.fromkeys(out))


def _tick_like(t: Text) -> bool:
    """A tick label matplotlib made and dropped (no axes, not in any axis's ticks): not drawn."""
    return t.axes is None and t.figure is not None and t not in t.figure.texts and t is not t.figure._suptitle \
        and t.get_transform() is not None and type(t.get_transform()).__name__ == "BlendedGenericTransform"


def overlaps(fig, texts=None, tolerance_px: float = 1.5) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t, t.get_window_extent(renderer)) for t in (texts or drawn_texts(fig))]
    found = []
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        ix = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        iy = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if ix > tolerance_px and iy > tolerance_px:
            found.append((a.get_text()[:40], b.get_text()[:40]))
    return found


def measure(fig) -> dict:
    """Width, height (inches), smallest font (pt), the drawn extent's width and left edge (inches)
    and the overlapping texts of a figure."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)
    return {"width": fig.get_figwidth(), "height": fig.get_figheight(),
            "min_pt": min(t.get_fontsize() for t in texts), "tight_x0": tight.x0, "tight_x1": tight.x1,
            "tight_y0": tight.y0, "tight_y1": tight.y1,
            "overlaps": overlaps(fig, texts), "texts": texts}


def check(fig, width: float) -> dict:
    """Assert the figure is `width` inches wide, its text is at least MIN_PT, everything drawn lies
    within the width (a tight save would otherwise grow it, and shrink the text when printed at
    `width`), and no two texts overlap. Returns the measurements."""
    m = measure(fig)
    assert np.isclose(m["width"], width), f"figure is {m['width']:.2f} in wide, {width} asked"
    small = sorted({(t.get_fontsize(), t.get_text()[:30]) for t in m["texts"] if t.get_fontsize() < MIN_PT})
    assert not small, f"text under {MIN_PT} pt: {small[:5]}"
    assert m["tight_x0"] >= -0.01 and m["tight_x1"] <= width + 0.01, \
        f"drawn from {m['tight_x0']:.2f} to {m['tight_x1']:.2f} in, outside the {width} in figure"
    assert m["tight_y0"] >= -0.01 and m["tight_y1"] <= m["height"] + 0.01, \
        f"drawn from {m['tight_y0']:.2f} to {m['tight_y1']:.2f} in up, outside the {m['height']:.2f} in figure"
    assert not m["overlaps"], f"overlapping text: {m['overlaps'][:5]}"
    return m
