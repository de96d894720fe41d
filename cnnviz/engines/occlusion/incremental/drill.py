"""Adaptive drill-down (Nakandala et al. 2019, Sec. 4.2): the occluder first at a coarse grid
(every STEP-th position of the requested grid on each axis, and the last), then at the fine
positions next to the coarse ones whose probability drop is in the top TOP_FRACTION; every other
fine position is interpolated bilinearly between the coarse positions around it (its top class,
a category, is the nearest coarse position's)."""

from __future__ import annotations

import numpy as np

STEP = 2
TOP_FRACTION = 0.35


def coarse_axis(n: int, step: int = STEP) -> np.ndarray:
    """Every step-th index of 0..n-1, and n-1 (so the far border is seen)."""
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return np.array(idx)


def coarse_positions(ny: int, nx: int, step: int = STEP) -> np.ndarray:
    """Flat (row-major) indices of the coarse grid."""
    cy, cx = coarse_axis(ny, step), coarse_axis(nx, step)
    return (cy[:, None] * nx + cx[None, :]).ravel()


def fine_positions(ny: int, nx: int, coarse: np.ndarray, drops: np.ndarray, step: int = STEP,
                   top_fraction: float | None = None) -> np.ndarray:
    """Flat indices, not coarse, within step-1 positions (each axis) of a coarse position whose drop
    is among the largest `top_fraction` of the coarse drops."""
    top_fraction = TOP_FRACTION if top_fraction is None else top_fraction
    k = max(1, int(np.ceil(top_fraction * len(coarse))))
    chosen = coarse[np.argsort(-drops, kind="stable")[:k]]
    near = np.zeros((ny, nx), dtype=bool)
    for flat in chosen:
        y, x = divmod(int(flat), nx)
        near[max(0, y - step + 1): y + step, max(0, x - step + 1): x + step] = True
    near.ravel()[coarse] = False
    return np.flatnonzero(near)


def nearest_coarse(ny: int, nx: int, step: int = STEP) -> np.ndarray:
    """For every fine position (flat), the flat index of its nearest coarse position."""
    def axis(n):
        c = coarse_axis(n, step)
        return c[np.abs(np.arange(n)[:, None] - c[None, :]).argmin(1)]

    return (axis(ny)[:, None] * nx + axis(nx)[None, :]).ravel()


def interpolate(ny: int, nx: int, values: np.ndarray, step: int = STEP) -> np.ndarray:
    """The ny x nx grid (flat) interpolated bilinearly from `values`, the coarse positions' values
    in the order of `coarse_positions` (row-major over coarse_axis(ny) x coarse_axis(nx)): exact
    at the coarse positions, linear in between along each axis."""
    cy, cx = coarse_axis(ny, step), coarse_axis(nx, step)
    grid = np.asarray(values, dtype=np.float64).reshape(len(cy), len(cx))
    rows = np.stack([np.interp(np.arange(nx), cx, r) for r in grid])             # len(cy) x nx
    full = np.stack([np.interp(np.arange(ny), cy, c) for c in rows.T], axis=1)   # ny x nx
    return full.ravel()
