"""The evolution figure in the layout of Zeiler & Fergus Fig. 4: one row per unit, one column per
checkpoint (training order, left to right); each tile is the projection of the unit's strongest
activation over the data at that checkpoint (the deconvnet, or guided backprop where the deconvnet
shows no image: the headline says which), cut at its receptive field or where its map is high, with
the activation under it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..units.patches import _outside, _scale_note, stretch
from ..style import DEFAULT_WIDTH, RC, bare, fit, layer_label, max_height, short, text_width, wrap

LABEL_IN = 0.55  # the unit labels at the left
VALUE_IN = 0.16  # the activation under each tile


def _shown(result, c: int, u: int, contrast):
    """Projection tile (c, u) as drawn: stretched by `contrast`, the fill outside the image kept
    (results saved without boxes: as stored)."""
    tile = result.projections[c, u]
    if contrast in (None, 1, 1.0):
        return tile
    if result.boxes is None:
        return tile if result.params.get("crop", "rf") == "rf" else stretch(tile[None], contrast)[0]
    out = _outside(result.boxes[c, u][None], result.params)[0]
    return np.where(out[..., None], tile, stretch(tile[None], contrast)[0])


def figure(result, width: float = DEFAULT_WIDTH, layout: str = "row", patches: bool = False, contrast="auto"):
    """`width` inches wide; with `patches`, each tile's image patch beside its projection.
    `contrast` as in `cnnviz.render.units.patches.figure` ("auto": each projection tile stretched so that
    its faint parts show; 1: as stored, ZF's display)."""
    p = result.params
    C, U = result.values.shape
    per = 2 if patches else 1
    gap = 0.06
    tile = min((width - LABEL_IN - 0.1 - (C * per - 1) * gap) / (C * per), 1.1)
    method = "guided-backprop" if p.get("projection") == "guided" else "deconvnet"  # older results: a sentence
    what = f"{method} projection | image patch" if patches else f"{method} projection"
    where = ("at the receptive field" if p.get("crop", "rf") == "rf" else
             "cropped where the unit's upsampled map is ≥ 50 % of its peak")
    why = ""
    if p.get("projection") == "guided" and p.get("projection_asked", "auto") == "auto":
        why = "; guided backprop, not the deconvnet, whose projections do not depend on the image here"
    elif p.get("deconv_uninformative"):
        why = "; UNINFORMATIVE: the deconvnet's projections here do not depend on the image"
    headline = wrap(f"layer {layer_label(p['layer'], p.get('layer_type'))}: each unit's strongest "
                    f"activation over the data at each checkpoint ({what}, {where}; projections: mid-gray = 0, "
                    f"{_scale_note(contrast)}){why}", width - 0.16, 7)
    head = 0.3 + 7 * 1.22 / 72 * (headline.count("\n") + 1)
    tile *= fit(lambda f: head + U * (tile * f + VALUE_IN + gap) + 0.15, max_height(width))  # at most a page
    height = head + U * (tile + VALUE_IN + gap) + 0.15
    label_w = 0.16 + max(text_width(f"unit {int(u)}", 7) for u in result.units)
    with plt.rc_context(RC):
        fig = plt.figure(figsize=(width, height))
        # the unit labels right beside the tiles, labels and tiles centred together (few
        # checkpoints: no white quarter between the labels and the tiles)
        block = C * per * tile + (C * per - 1) * gap
        x0 = max(label_w, (width - label_w - block) / 2 + label_w)
        for c in range(C):
            left = x0 + c * per * (tile + gap)
            fig.text((left + per * tile / 2 + (per - 1) * gap / 2) / width, 1 - (head - 0.06) / height,
                     short(str(p["labels"][c]), max(6, int(per * tile / 0.055))), ha="center", va="bottom",
                     fontsize=7, fontweight="bold")
            for u in range(U):
                top = head + u * (tile + VALUE_IN + gap)
                tiles = [_shown(result, c, u, contrast)] + ([result.patches[c, u]] if patches else [])
                for j, img in enumerate(tiles):
                    ax = fig.add_axes([(left + j * (tile + gap)) / width, 1 - (top + tile) / height, tile / width,
                                       tile / height])
                    ax.imshow(img, interpolation="nearest")
                    bare(ax)
                fig.text((left + per * tile / 2 + (per - 1) * gap / 2) / width, 1 - (top + tile + 0.02) / height,
                         f"{result.values[c, u]:.3g}", ha="center", va="top", fontsize=7, color="0.3")
        for u in range(U):
            top = head + u * (tile + VALUE_IN + gap)
            fig.text((x0 - 0.08) / width, 1 - (top + tile / 2) / height, f"unit {int(result.units[u])}", ha="right",
                     va="center", fontsize=7).set_gid("unit-label")
        fig.text(0.08 / width, 1 - 0.08 / height, headline, fontsize=7, va="top", linespacing=1.1)
    return fig
