"""Drawing on the whole original photo (`--full-image`): the photo in its own pixel coordinates,
the model's crop outlined by a dashed rectangle, and the part of the photo outside the crop
washed out and hatched, because the model never saw it. Maps are carried onto the photo with the
result's crop geometry (`cnnviz.geometry`)."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from ..errors import ResultError

OUTSIDE_LABEL = "hatched: outside the model's crop, not analysed"


def photo(result, index: int = 0):
    """(photo uint8 HxWx3, its CropGeometry) for image `index` of `result`: the stored downscaled
    photo, or the crop itself when the input was already the model's input (identity mapping)."""
    geo = result.geometry(index)
    if geo.thumbnail is not None:
        return geo.thumbnail, geo
    if geo.is_identity:
        image = np.asarray(result.image)
        return (image[index] if image.ndim == 4 else image), geo
    raise ResultError(f"this {result.kind} result keeps no copy of the original photo; compute it again from the "
                      "image file to draw it on the whole photo")


def extent(geo) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) that lays any picture of the photo over the photo's
    own pixel coordinates."""
    h0, w0 = geo.original_size
    return (0.0, float(w0), float(h0), 0.0)


def crop_extent(geo, ext) -> tuple[float, float, float, float]:
    """An imshow extent (left, right, bottom, top) in crop pixels, carried to photo pixels."""
    left, right, bottom, top = ext
    x0, y0, x1, y1 = geo.to_original(np.array([left, top, right, bottom], dtype=np.float64))
    return (x0, x1, y1, y0)


def draw_photo(ax, picture: np.ndarray, geo) -> None:
    """The photo over the photo's coordinates, with axes limits set to the whole photo."""
    h0, w0 = geo.original_size
    ax.imshow(picture, extent=extent(geo), interpolation="bilinear").set_gid("photo")
    ax.set_xlim(0, w0)
    ax.set_ylim(h0, 0)


def mark_crop(ax, geo) -> None:
    """Outline the crop (dashed, gid "crop") and wash out and hatch the rest (gid "outside")."""
    h0, w0 = geo.original_size
    x0, y0, x1, y1 = (float(v) for v in geo.crop_box())
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w0)), min(y1, float(h0))
    for bx, by, bw, bh in ((0, 0, w0, y0), (0, y1, w0, h0 - y1), (0, y0, x0, y1 - y0), (x1, y0, w0 - x1, y1 - y0)):
        if bw > 1e-6 and bh > 1e-6:
            ax.add_patch(Rectangle((bx, by), bw, bh, facecolor=(1, 1, 1, 0.45), edgecolor=(0.3, 0.3, 0.3, 0.8),
                                   hatch="//", lw=0, gid="outside", zorder=3))
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=2.4, zorder=4, gid="crop_halo"))
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=1.4, ls=(0, (4, 3)), zorder=5,
                           gid="crop"))


def describe(geo) -> str:
    """One line on what part of the photo the model saw."""
    h0, w0 = geo.original_size
    ch, cw = geo.crop_size
    sy, sx = geo.scale
    x0, y0, x1, y1 = geo.crop_box()
    share = max(0.0, (min(x1, w0) - max(x0, 0)) * (min(y1, h0) - max(y0, 0))) / (w0 * h0)
    return f"photo {w0}×{h0}, crop {cw}×{ch} at scale {sx:.3g} ({share:.0%} of the photo)"
