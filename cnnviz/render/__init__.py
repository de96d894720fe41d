"""Renderers: one per Result type, sharing the style helpers in `style`."""

from __future__ import annotations

import os

from ..errors import ParameterError, ResultError
from ..files import FIGURE_SUFFIXES, check_output
from .style import DEFAULT_WIDTH, check_layout, check_max_height, check_width, height_limit, save_figure


def render(result, path: str | os.PathLike | None = None, *, width: float = DEFAULT_WIDTH, layout: str = "row",
           max_height=..., **options):
    """Draw `result`'s figure `width` inches wide (default a page's text width, 7 in: the text is
    then at least 7 pt when printed at that width) with its panels side by side as far as they fit
    (`layout` "row") or about square ("grid"), at most `max_height` inches tall ("page", the
    default: a text block, 9 in at 7 in wide and 8 in in a 3.5 in column; None: no limit; a number
    of inches), the pictures shrunk or laid out in more columns to fit; write it to `path` (format from the extension) when
    given. Returns the matplotlib Figure. The drawing function is the one the result type declares
    (its `renderer`, see cnnviz.analyses)."""
    from ..analyses import renderer

    draw = renderer(type(result))
    if draw is None:
        raise ResultError(f"no renderer for {result.kind!r} results")
    if "full_image" in options and not getattr(result, "full_image", False):
        if options.pop("full_image"):
            raise ParameterError(f"full_image draws occlusion and backprop (gradients) results on the original photo, "
                                 f"not {result.kind!r} results; leave out --full-image")
    width, layout = check_width(width), check_layout(layout)
    limit = check_max_height(max_height) if max_height is not ... else ...
    target = check_output(path, FIGURE_SUFFIXES) if path is not None else None
    if limit is ...:  # the limit in force (a command's --max-height, else a page)
        fig = draw(result, width=width, layout=layout, **options)
    else:
        with height_limit(limit):
            fig = draw(result, width=width, layout=layout, **options)
    if target is not None:
        save_figure(fig, target)
    return fig
