"""Zeiler & Fergus 2014, Fig. 2: per unit, a block of projections of its top activations (the
deconvnet, or guided backprop where the deconvnet shows no image: `cnnviz.engines.units.patches`) beside a
block of the image patches (at the unit's receptive field, or where its map is high); several units
in a grid. Without projections only the patch blocks are drawn. The caption names the projection
and the crop."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from ..style import DEFAULT_WIDTH, MIN_FONT, RC, Panels, layer_label, model_label

GAP = 1  # pixels between tiles of a block (white)
METHOD_LABELS = {"deconv": "deconvnet", "guided": "guided-backprop"}
TILE = 64  # tiles are enlarged (nearest) to at least this many pixels a side


def _block(tiles: np.ndarray, present: np.ndarray, side: int, scale: int) -> np.ndarray:
    """k tiles r x r x 3 (uint8) to one side x side mosaic with white gaps; missing tiles white."""
    r = tiles.shape[1] * scale
    size = side * r + (side - 1) * GAP
    out = np.full((size, size, 3), 255, np.uint8)
    for t in range(min(len(tiles), side * side)):
        if not present[t]:
            continue
        i, j = divmod(t, side)
        tile = tiles[t].repeat(scale, 0).repeat(scale, 1)
        out[i * (r + GAP):i * (r + GAP) + r, j * (r + GAP):j * (r + GAP) + r] = tile
    return out


def _outside(boxes: np.ndarray, p: dict) -> np.ndarray:
    """k x r x r: which pixels of each tile lie outside the input crop (they show the fill); none
    for crops at the unit's activation, which lie inside the image."""
    if p.get("crop", "rf") != "rf":
        r = boxes.shape[0]
        ty, tx = p.get("tile") or p["rf"]
        return np.zeros((r, ty, tx), bool)
    h, w = p["input_size"]
    ry, rx = p["rf"]
    ys = boxes[:, 0, None] + np.arange(ry)[None]
    xs = boxes[:, 2, None] + np.arange(rx)[None]
    return ((ys < 0) | (ys >= h))[:, :, None] | ((xs < 0) | (xs >= w))[:, None, :]


def _scale_note(contrast) -> str:
    if contrast in (None, 1, 1.0):
        return "scaled by max |signal|"
    if contrast == "auto":
        return "contrast stretched per tile"
    return f"max |signal| = full scale, ×{float(contrast):g}"


def stretch(tiles: np.ndarray, contrast) -> np.ndarray:
    """Projection tiles (uint8, 128 = zero) with their deviation from mid-gray multiplied by
    `contrast` (clipped), or with "auto" per tile so that its 99th percentile of |deviation| reaches
    full scale (at most x8): the ZF display with the faint surroundings of the peak made visible."""
    if contrast in (None, 1, 1.0):
        return tiles
    dev = tiles.astype(np.float32) - 128.0
    if contrast == "auto":
        q = np.percentile(np.abs(dev).reshape(len(dev), -1), 99, axis=1)
        gain = np.clip(127.0 / np.maximum(q, 1.0), 1.0, 8.0)[:, None, None, None]
    else:
        gain = float(contrast)
    return np.clip(np.round(128.0 + dev * gain), 0, 255).astype(np.uint8)


def figure(result, columns: int | None = None, units=None, k: int = 9, contrast="auto", width: float = DEFAULT_WIDTH,
           layout: str = "row"):
    """One panel per unit: projections (left) and patches (right) of its top `k` (default 9, a 3x3
    block) activations, labelled with layer, channel and top activation, in a figure `width`
    inches wide ("row": as many units per row as fit, at most `columns`; "grid": about square).
    `units`: channels to show (default all). `contrast`: 1 shows the projections as stored (ZF:
    max |signal| = full scale), a number multiplies their deviation from mid-gray, "auto"
    stretches each tile (see `stretch`)."""
    p = result.params
    projected = result.projected
    k = max(1, min(int(k), result.patches.shape[1]))
    side = math.ceil(math.sqrt(k))
    chosen = list(range(len(result.units))) if units is None else \
        [int(np.flatnonzero(result.units == u)[0]) for u in units if (result.units == u).any()]
    n = len(chosen)
    if n == 0:
        raise ValueError("no units to draw")
    r = result.patches.shape[2]
    scale = max(1, math.ceil(TILE / r))
    sep_frac = 0.06
    method = METHOD_LABELS.get(p.get("projection") or "deconv", str(p.get("projection")))
    what = f"{method} projection (left) and image patch (right)" if projected else "image patch"
    if p.get("crop", "rf") == "rf":
        where = (f"at the unit's {p['rf'][0]}×{p['rf'][1]} px receptive field (light gray: outside the image"
                 f"{'; projections: mid-gray = 0, ' + _scale_note(contrast) if projected else ''})")
    else:
        where = (f"cropped where the unit's upsampled map is ≥ {100 * float(p.get('crop_fraction') or 0.5):.0f} % "
                 f"of its peak (its {p['rf'][0]} px receptive field exceeds the {p['input_size'][0]} px image)"
                 f"{'; projections: mid-gray = 0, ' + _scale_note(contrast) if projected else ''}")
    why = ""
    if projected and p.get("projection") == "guided" and p.get("projection_asked") == "auto":
        why = ". Guided backprop, not the deconvnet: the deconvnet's projections do not depend on the image here"
        if (p.get("deconv_check") or {}).get("max_pool_switches") == 0:
            why += " (no max-pool switches)"
    elif projected and (p.get("deconv_check") or {}).get("uninformative"):
        why = ". UNINFORMATIVE: the deconvnet's projections here do not depend on the image (asked for)"
    head = (f"{model_label(result.provenance, p)}, {layer_label(p['layer'], p.get('layer_type'))}: top-{k} "
            f"activations per unit, {what} {where}{why}")
    titles = []
    for u in chosen:
        top = result.values[u, 0]
        val = f"{float(top):.3g}" if np.isfinite(top) else "n/a"
        out = int((~result.inside[u, :k] & (result.image_index[u, :k] >= 0)).sum())
        titles.append(f"ch {int(result.units[u])}, top {val}" + (f", {out} at border" if out else ""))
    with plt.rc_context(RC):
        lay = Panels(n, width, layout, titles=titles, head=head, aspect=1 / (2 + sep_frac) if projected else 1.0,
                     min_panel=1.65 if projected else 0.85, gap=0.12, max_cols=columns or (4 if projected else 6),
                     max_picture=2.6 if projected else 1.3, title_pt=MIN_FONT, title_lines=2)
        lay.fig.set_dpi(RC["savefig.dpi"])  # saved at this resolution
        for ax, u in zip(lay.axes, chosen):
            ax.axis("off")
            present = result.image_index[u, :k] >= 0
            pat = _block(result.patches[u, :k], present, side, scale)
            if projected:
                tiles = result.projections[u, :k]
                tiles = np.where(_outside(result.boxes[u, :k], p)[..., None], tiles, stretch(tiles, contrast))
                proj = _block(tiles, present, side, scale)
                sep = np.full((pat.shape[0], round(pat.shape[1] * sep_frac), 3), 255, np.uint8)
                img = np.concatenate([proj, sep, pat], axis=1)
            else:
                img = pat
            ax.imshow(img, interpolation="nearest", aspect="auto")
    return lay.fig
