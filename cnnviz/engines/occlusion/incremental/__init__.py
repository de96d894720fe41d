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
next to the coarse ones with the largest probability drops; the rest interpolated between coarse
positions). How much thresholding a map tolerates differs by model and weights: EfficientNet-Lite0
(5x5 depthwise kernels, whose changes spread over the whole map within a few blocks) loses its
maps below tau 0.9, and the random-weight VGG-16, ResNet-18 and AlexNet of the tests and
benchmarks lose theirs even at 0.75 (pretrained VGG/ResNet weights cannot be loaded here to say
how they fare). So the default tau, "auto", is measured on each run
(`calibrate_tau`): CALIBRATION_POSITIONS positions spread over the coarse grid are computed exactly
(they are part of the result), then at each of AUTO_TAUS in turn, largest first, while the error
there stays within TAU_TOLERANCE; the smallest tau within it is kept (1, nothing cut, when the
first is not). The error grows as tau shrinks (less of each region is recomputed), so a tau below
one that failed is not tried: where 0.75 fails, 0.5 is not worth its trial run. The error is the
root mean square difference of the target probability divided by its standard deviation over those
positions (scale-free: a map whose values barely vary tolerates only a small absolute error). On
Lite0 over 7 photos this bound rejected every tau of 0.8 (0.19-0.61; Spearman of the whole map
0.82-0.98) and accepted 0.9 in 6 of 7 (0.02-0.16; Spearman 0.995-1.0).
"""

from __future__ import annotations

from ....errors import ParameterError

MODES = ("full", "incremental", "approximate")
AUTO = "auto"
AUTO_TAUS = (0.75, 0.5)  # tried in this order by tau="auto" until one fails; the last within the tolerance is kept
TAU_TOLERANCE = 0.1  # relative RMS error on the calibration positions (see the module docstring)
CALIBRATION_POSITIONS = 16


def check_mode(mode) -> str:
    """One of MODES, or a one-line ParameterError naming the value and the choices."""
    if not isinstance(mode, str) or mode.strip().lower() not in MODES:
        raise ParameterError(f"unknown occlusion mode {mode!r}; use one of {', '.join(MODES)}")
    return mode.strip().lower()


def check_tau(tau) -> float | str:
    """A fraction in (0, 1], or "auto" (measured per run), or a one-line ParameterError."""
    if isinstance(tau, str) and tau.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ParameterError(f"tau {tau!r} must be a number in (0, 1] or auto, e.g. 0.5") from None
    if not 0.0 < value <= 1.0:
        raise ParameterError(f"tau must be in (0, 1] (the fraction of the changed region kept at deep layers), "
                             f"got {tau!r}; e.g. 0.5, or auto")
    return value


def relative_error(approx, exact) -> float:
    """Root mean square of approx - exact, divided by the standard deviation of exact (at least
    1e-6 of its scale): 0 is exact, 1 is an error as large as the map's own variation."""
    import numpy as np

    a, e = np.asarray(approx, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    spread = max(float(e.std()), 1e-6 * max(1.0, float(np.abs(e).max())))
    return float(np.sqrt(np.mean((a - e) ** 2)) / spread)
