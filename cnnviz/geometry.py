"""Where the model's input crop lies in the original photo, and the maps between the two.

Preprocessing resizes the photo (after its EXIF orientation is applied) and takes a crop of the
resized image; every map and position an engine computes is in that crop's pixels. A
`CropGeometry` records the photo's size, the size it was resized to and the crop's offset and size,
so that points, boxes and maps can be carried back to the photo (and photo boxes into the crop).

Pixel convention (both spaces): continuous coordinates with (0, 0) the top-left *corner* of the
top-left pixel; pixel (row r, column c) covers [c, c + 1) x [r, r + 1) and its centre is
(c + 0.5, r + 0.5). Points are (x, y); boxes are (x0, y0, x1, y1) with (x1, y1) the far corner,
so the pixels of a box are columns x0 .. x1 - 1 and rows y0 .. y1 - 1. In this convention the
resize is a pure per-axis scale (PIL samples output pixel i at input position (i + 0.5) * in / out,
which is this scale applied to pixel centres) and the crop a pure shift:

    x_photo = (x_crop + left) / scale_x,    scale_x = resized_width / photo_width   (same for y).

To map a pixel *index* (c, r), map its centre (c + 0.5, r + 0.5) and subtract 0.5 from the result
if you want an index back.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

THUMBNAIL_MAX = 512  # longest side of the copy of the photo kept in a result, for --full-image


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """One image's path from the photo to the model's input crop (all sizes (height, width)).

    original_size: the photo's size after EXIF orientation; resized_size: its size after the
    resize step (equal to original_size when nothing was resized); crop_offset: (top, left) of the
    crop in the resized image; crop_size: the crop's size (the model's input size). source: "file",
    "pil", "pixels" or "tensor" (the last two: input-size pixels, the identity mapping).
    thumbnail: a downscaled uint8 copy of the photo (longest side <= 512) when the photo was seen,
    kept out of `to_dict` (results store it as an array).
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]
    crop_size: tuple[int, int]
    source: str = "pixels"
    thumbnail: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def identity(cls, height: int, width: int, source: str = "pixels") -> "CropGeometry":
        """The mapping of an image that already is the model's input: nothing resized or cropped."""
        size = (int(height), int(width))
        return cls(size, size, (0, 0), size, source)

    @property
    def scale(self) -> tuple[float, float]:
        """(scale_y, scale_x): resized pixels per photo pixel, from the sizes actually produced."""
        (h0, w0), (h1, w1) = self.original_size, self.resized_size
        return h1 / h0, w1 / w0

    @property
    def is_identity(self) -> bool:
        return (self.original_size == self.crop_size and self.resized_size == self.crop_size
                and tuple(self.crop_offset) == (0, 0))

    def crop_box(self) -> np.ndarray:
        """The crop's box (x0, y0, x1, y1) in photo coordinates."""
        h, w = self.crop_size
        return self.to_original(np.array([0.0, 0.0, w, h]))

    # ---------------------------------------------------------------------------------------------
    # points and boxes

    def to_original(self, coords) -> np.ndarray:
        """Crop coordinates to photo coordinates: an array whose last axis is (x, y) for points or
        (x0, y0, x1, y1) for boxes. Coordinates outside the crop map too (linearly)."""
        a = _coords(coords)
        sy, sx = self.scale
        top, left = self.crop_offset
        mul = np.array([sx, sy] * (a.shape[-1] // 2))
        add = np.array([left, top] * (a.shape[-1] // 2), dtype=np.float64)
        return (a + add) / mul

    def to_crop(self, coords) -> np.ndarray:
        """Photo coordinates to crop coordinates, the inverse of `to_original`. A result outside
        [0, width] x [0, height] lies outside the crop (the model never saw it)."""
        a = _coords(coords)
        sy, sx = self.scale
        top, left = self.crop_offset
        mul = np.array([sx, sy] * (a.shape[-1] // 2))
        add = np.array([left, top] * (a.shape[-1] // 2), dtype=np.float64)
        return a * mul - add

    # ---------------------------------------------------------------------------------------------
    # maps

    def map_to_original(self, values, outside: float = np.nan, shape: Sequence[int] | None = None) -> np.ndarray:
        """A crop-sized map (H x W, or ... x H x W) resampled onto the photo: bilinear between the
        crop's pixel centres (clamped at its border), `outside` (default NaN: not analysed, which is
        not the same as zero evidence) where a photo pixel's centre lies outside the crop.

        shape: the output grid (height, width) covering the whole photo; default the photo's own
        size. A smaller grid (e.g. the thumbnail's) samples the same photo coordinates more coarsely.
        """
        m = np.asarray(values, dtype=np.float64)
        h, w = self.crop_size
        if m.ndim < 2 or tuple(m.shape[-2:]) != (h, w):
            from .errors import ParameterError

            raise ParameterError(f"map of shape {'x'.join(map(str, m.shape))} is not crop-sized ({h}x{w}); "
                                 "give a map with the model's input size as its last two axes")
        oh, ow = (int(v) for v in (shape or self.original_size))
        h0, w0 = self.original_size
        # photo coordinates of the output pixel centres, then crop coordinates
        xs = self.to_crop(np.stack([(np.arange(ow) + 0.5) * w0 / ow, np.zeros(ow)], -1))[:, 0]
        ys = self.to_crop(np.stack([np.zeros(oh), (np.arange(oh) + 0.5) * h0 / oh], -1))[:, 1]
        inside_x, inside_y = (xs >= 0) & (xs < w), (ys >= 0) & (ys < h)
        # continuous crop coordinate -> position among pixel centres (index space)
        fx, fy = np.clip(xs - 0.5, 0, w - 1), np.clip(ys - 0.5, 0, h - 1)
        x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        tx, ty = fx - x0, fy - y0
        top = m[..., y0, :][..., x0] * (1 - tx) + m[..., y0, :][..., x1] * tx
        bottom = m[..., y1, :][..., x0] * (1 - tx) + m[..., y1, :][..., x1] * tx
        out = top * (1 - ty)[:, None] + bottom * ty[:, None]
        out[..., ~inside_y, :] = outside
        out[..., :, ~inside_x] = outside
        return out.astype(np.float32)

    # ---------------------------------------------------------------------------------------------
    # storage

    def to_dict(self) -> dict:
        """JSON-ready (the thumbnail is stored apart, as an array; its size is kept here)."""
        sy, sx = self.scale
        return {"original_size": list(self.original_size), "resized_size": list(self.resized_size),
                "scale": [sy, sx], "crop_offset": list(self.crop_offset), "crop_size": list(self.crop_size),
                "source": self.source,
                "thumbnail_size": None if self.thumbnail is None else list(self.thumbnail.shape[:2]),
                "convention": "pixel corners: pixel (r, c) covers [c, c+1) x [r, r+1); "
                              "photo = (crop + offset) / scale"}

    @classmethod
    def from_dict(cls, d: dict, thumbnail: np.ndarray | None = None) -> "CropGeometry":
        pair = lambda k: tuple(int(v) for v in d[k])  # noqa: E731
        return cls(pair("original_size"), pair("resized_size"), pair("crop_offset"), pair("crop_size"),
                   str(d.get("source", "pixels")), thumbnail)


def _coords(coords) -> np.ndarray:
    a = np.asarray(coords, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] not in (2, 4):
        from .errors import ParameterError

        raise ParameterError(f"coordinates of shape {a.shape} must end in 2 (x, y points) or 4 (x0, y0, x1, y1 "
                             "boxes)")
    return a


def thumbnail(img, max_side: int = THUMBNAIL_MAX) -> np.ndarray:
    """A PIL RGB image as uint8 HxWx3 with its longest side at most `max_side` (area-averaged)."""
    from PIL import Image

    w, h = img.size
    s = min(1.0, max_side / max(w, h))
    if s < 1.0:
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def stack_thumbnails(geometries: Sequence[CropGeometry]) -> np.ndarray | None:
    """The geometries' thumbnails as one uint8 N x H x W x 3 array, each in the top-left corner of
    the largest (the rest zero; each geometry's dict keeps its own size). None when none has one."""
    thumbs = [g.thumbnail for g in geometries]
    if all(t is None for t in thumbs):
        return None
    hmax = max(t.shape[0] for t in thumbs if t is not None)
    wmax = max(t.shape[1] for t in thumbs if t is not None)
    out = np.zeros((len(thumbs), hmax, wmax, 3), np.uint8)
    for i, t in enumerate(thumbs):
        if t is not None:
            out[i, : t.shape[0], : t.shape[1]] = t
    return out


def params_of(geometries: Sequence[CropGeometry]) -> list[dict]:
    """The list stored as params["geometry"]: one dict per image."""
    return [g.to_dict() for g in geometries]
