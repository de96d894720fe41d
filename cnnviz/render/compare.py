"""The figure of a `compare` result: the methods side by side, drawn by the backprop renderer."""

from __future__ import annotations

from .gradients import compare_figure


def figure(result, *, shared_scale: bool | None = None, **options):
    """One panel per method of `result` (a CompareResult); `shared_scale` defaults to what the
    command was asked (maps of the same unit share a colour scale, see compare_figure)."""
    if shared_scale is None:
        shared_scale = bool(result.params.get("shared_scale"))
    return compare_figure(result.parts(), shared_scale=shared_scale, **options)
