"""The figure of a `compare` result: the methods side by side, drawn by the backprop renderer."""

from __future__ import annotations

from .gradients import compare_figure


def figure(result, *, shared_scale: bool | None = None, **options):
    """One panel per method of `result` (a CompareResult); `shared_scale` defaults to what the
    command was asked (maps of the same unit share a colour scale, see compare_figure). The methods
    that the command left out of its defaults as uninformative (params["left_out"]) are named in
    the headline."""
    if shared_scale is None:
        shared_scale = bool(result.params.get("shared_scale"))
    left_out = result.params.get("left_out") or {}
    if left_out and "note" not in options:
        names = {"deconv": "the deconvnet"}
        options["note"] = (f"{', '.join(names.get(m, m) for m in left_out)} left out: its map does not depend on "
                           "the image for this model")
    return compare_figure(result.parts(), shared_scale=shared_scale, **options)
