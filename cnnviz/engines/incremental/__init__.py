"""Occlusion that recomputes only what the occluder changes (Nakandala et al., "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019).

An occluder of 32x32 pixels changes only a small region of each early feature map: its projective
field, which grows with every kernel and stride and is clipped to the map. The incremental mode
runs the unoccluded image once, keeps every layer's output and, for each batch of positions,
recomputes per layer only the changed region (plus the halo the kernel needs), reading the rest
from the kept outputs; where a layer cannot be computed locally (global pooling, flatten, linear,
squeeze-excitation, anything not understood) or the region has grown to the whole map, it goes on
with whole maps. The result equals the full computation up to float rounding.

  regions.py  changed regions, boxes and window gathering
  ops.py      the rule of each graph operation
  sweep.py    tracing (torch.fx), the kept unoccluded pass and the per-batch computation
  drill.py    the approximate mode's adaptive drill-down (coarse grid first, fine where it matters)

The approximate mode adds Krypton's two approximations: projective-field thresholding (a changed
region longer than a fraction tau of its map is cut to its central part; tau = 1 is exact) and
adaptive drill-down (the occluder first at every other grid position, then at the fine positions
next to the coarse ones with the largest probability drops; the rest take the nearest coarse value).
"""

from __future__ import annotations

from ...errors import ParameterError

MODES = ("full", "incremental", "approximate")


def check_mode(mode) -> str:
    """One of MODES, or a one-line ParameterError naming the value and the choices."""
    if not isinstance(mode, str) or mode.strip().lower() not in MODES:
        raise ParameterError(f"unknown occlusion mode {mode!r}; use one of {', '.join(MODES)}")
    return mode.strip().lower()


def check_tau(tau) -> float:
    """A fraction in (0, 1], or a one-line ParameterError."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ParameterError(f"tau {tau!r} must be a number in (0, 1], e.g. 0.5") from None
    if not 0.0 < value <= 1.0:
        raise ParameterError(f"tau must be in (0, 1] (the fraction of the changed region kept at deep layers), "
                             f"got {tau!r}; e.g. 0.5")
    return value
