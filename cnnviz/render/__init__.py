"""Renderers: one per Result type, sharing the style helpers in `style`."""

from __future__ import annotations

import os

from ..errors import ParameterError, ResultError
from ..files import FIGURE_SUFFIXES, check_output
from .style import save_figure

FULL_IMAGE_KINDS = ("occlusion", "gradients")  # renderers that take full_image=True


def render(result, path: str | os.PathLike | None = None, **options):
    """Draw `result`'s figure; write it to `path` (format from the extension) when given.
    Returns the matplotlib Figure."""
    from . import featvis, filters, gradients, invariance, occlusion, patches, receptive_field, sanity

    drawers = {"occlusion": occlusion.figure, "gradients": gradients.figure, "sanity": sanity.figure,
               "filters": filters.filters_figure, "activations": filters.activations_figure,
               "receptive_field": receptive_field.figure, "patches": patches.figure,
               "featvis": featvis.figure, "invariance": invariance.figure}
    draw = drawers.get(result.kind)
    if draw is None:
        raise ResultError(f"no renderer for {result.kind!r} results")
    if "full_image" in options and result.kind not in FULL_IMAGE_KINDS:
        if options.pop("full_image"):
            raise ParameterError(f"full_image draws occlusion and backprop (gradients) results on the original photo, "
                                 f"not {result.kind!r} results; leave out --full-image")
    target = check_output(path, FIGURE_SUFFIXES) if path is not None else None
    fig = draw(result, **options)
    if target is not None:
        save_figure(fig, target)
    return fig
