"""Planted shortcuts: marks pasted on images (a coloured patch, a text stamp, a frame), to stress a
model with a cue it should not use, and folders of a mark's examples for a concept test (TCAV).

A mark is placed relative to the crop the model sees. With `preprocessing` (a `Preprocessing` or a
`LoadedModel`), its box is a fraction of the model's input crop: the photo's resize and centre
crop are worked out, the box is carried back into the photo (`CropGeometry.to_original`) and the
mark is drawn there at the photo's scale, so that after cnnviz's preprocessing it lands where
asked, whatever the photo's size and shape. Without it, the box is a fraction of the image given.

    Mark("patch")                      a magenta square near the bottom-right corner
    Mark("text", text="(c) STOCK")     white letters with a black outline, bottom-left
    Mark("frame", width=0.045)         a yellow border along the crop's edge

`paste_mark(image, mark, preprocessing=lm)` returns a copy with the mark (PIL in, PIL out; uint8
array in, array out); `mark.mask((h, w))` is where the mark lies in the crop (for the share of a
map's mass on it); `write_mark_examples(mark, folder, count)` writes the mark on random
backgrounds or on given photos, for `cnnviz.tcav(..., concepts={"mark": folder})`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import ParameterError

__api__ = ("paste_mark", "write_mark_examples")  # cnnviz.<name> (a literal: see cnnviz/__init__)

KINDS = ("patch", "text", "frame")
DEFAULT_BOX = {"patch": (0.72, 0.72, 0.96, 0.96), "text": (0.04, 0.84, 0.66, 0.96), "frame": (0.0, 0.0, 1.0, 1.0)}
DEFAULT_COLOR = {"patch": (255, 0, 255), "text": (255, 255, 255), "frame": (255, 220, 0)}


@dataclasses.dataclass(frozen=True)
class Mark:
    """A mark to paste: `kind` patch, text or frame; `box` (x0, y0, x1, y1) as fractions of the
    model's input crop (or of the image, without a preprocessing); `color` RGB 0-255 (the text's
    fill; its outline is black); `text` the stamp's words; `width` the frame's thickness as a
    fraction of the box's shorter side. Unset fields take the kind's defaults."""

    kind: str = "patch"
    box: tuple[float, float, float, float] | None = None
    color: tuple[int, int, int] | None = None
    text: str = "(c) STOCK"
    width: float = 0.045

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ParameterError(f"unknown mark kind {self.kind!r}; use one of {', '.join(KINDS)}")
        box = DEFAULT_BOX[self.kind] if self.box is None else self.box
        try:
            box = tuple(float(v) for v in box)
        except (TypeError, ValueError):
            box = ()
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ParameterError(f"mark box {self.box!r} must be (x0, y0, x1, y1) fractions of the crop with "
                                 "0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        color = DEFAULT_COLOR[self.kind] if self.color is None else self.color
        try:
            color = tuple(int(v) for v in color)
        except (TypeError, ValueError):
            color = ()
        if len(color) != 3 or not all(0 <= v <= 255 for v in color):
            raise ParameterError(f"mark color {self.color!r} must be three RGB values in 0..255")
        if not 0 < float(self.width) <= 0.5:
            raise ParameterError(f"frame width {self.width!r} must be a fraction of the box in (0, 0.5]")
        if self.kind == "text" and not str(self.text).strip():
            raise ParameterError("a text mark needs some text, e.g. Mark('text', text='(c) STOCK')")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "color", color)

    def pixel_box(self, size: Sequence[int]) -> tuple[int, int, int, int]:
        """The box (x0, y0, x1, y1) in whole pixels of an image (or crop) of `size` (H, W)."""
        h, w = int(size[0]), int(size[1])
        x0, y0, x1, y1 = self.box
        return round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)

    def thickness(self, size: Sequence[int]) -> int:
        """The frame's thickness in pixels of an image (or crop) of `size` (H, W)."""
        x0, y0, x1, y1 = self.pixel_box(size)
        return max(1, round(self.width * min(x1 - x0, y1 - y0)))

    def mask(self, size: Sequence[int]) -> np.ndarray:
        """Where the mark lies in an image (or crop) of `size` (H, W): a boolean H x W array (the
        box of a patch or a stamp, the ring of a frame)."""
        h, w = int(size[0]), int(size[1])
        out = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = self.pixel_box(size)
        out[y0:y1, x0:x1] = True
        if self.kind == "frame":
            t = self.thickness(size)
            out[y0 + t:y1 - t, x0 + t:x1 - t] = False
        return out

    @property
    def name(self) -> str:
        return self.kind if self.kind != "text" else f"text {self.text!r}"


def as_mark(mark: Mark | str) -> Mark:
    if isinstance(mark, Mark):
        return mark
    if isinstance(mark, str):
        return Mark(mark.strip().lower())
    raise ParameterError(f"mark must be a Mark or one of {', '.join(KINDS)}, got {type(mark).__name__}")


def _preprocessing_of(preprocessing):
    if preprocessing is None:
        return None
    prep = getattr(preprocessing, "preprocessing", preprocessing)  # a LoadedModel carries one
    if not hasattr(prep, "crop_image"):
        raise ParameterError(f"preprocessing must be a cnnviz Preprocessing or LoadedModel, got "
                             f"{type(preprocessing).__name__}")
    return prep


def _region(img: Image.Image, prep) -> tuple[float, float, float, float]:
    """The rectangle (x0, y0, x1, y1), in the image's pixels, that the mark's box fractions refer
    to: the model's input crop carried back into the photo, or the whole image."""
    if prep is None:
        return 0.0, 0.0, float(img.width), float(img.height)
    _, geo = prep.crop_image(img, geometry=True)
    return tuple(float(v) for v in geo.crop_box())


def paste_mark(image, mark: Mark | str = "patch", preprocessing=None):
    """A copy of `image` (PIL image or uint8 H x W x 3 array; the same type comes back) with
    `mark` drawn on it. With `preprocessing` (a LoadedModel or Preprocessing) the mark's box is a
    fraction of the model's input crop, placed so that it survives the resize and centre crop;
    without it, a fraction of the image itself."""
    mark = as_mark(mark)
    prep = _preprocessing_of(preprocessing)
    if isinstance(image, Image.Image):
        img, as_array = image.convert("RGB"), False
        if img is image:
            img = img.copy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ParameterError(f"image array must be uint8 H x W x 3, got {image.dtype} "
                                 f"{'x'.join(map(str, image.shape))}")
        img, as_array = Image.fromarray(image.copy()), True
    else:
        raise ParameterError(f"paste_mark needs a PIL image or a uint8 H x W x 3 array, got {type(image).__name__}")
    rx0, ry0, rx1, ry1 = _region(img, prep)
    rw, rh = rx1 - rx0, ry1 - ry0
    bx0, by0, bx1, by1 = mark.box
    box = (rx0 + bx0 * rw, ry0 + by0 * rh, rx0 + bx1 * rw, ry0 + by1 * rh)  # in the image's pixels
    draw = ImageDraw.Draw(img)
    if mark.kind == "patch":
        _fill(draw, _outward(box), mark.color)
    elif mark.kind == "frame":
        # the thickness in the crop's pixels, carried to the image's scale along each axis
        crop_h, crop_w = (prep.crop if prep is not None else (img.height, img.width))
        t = mark.width * min((bx1 - bx0) * crop_w, (by1 - by0) * crop_h)
        tx, ty = t * rw / crop_w, t * rh / crop_h
        x0, y0, x1, y1 = box
        for side in ((x0, y0, x1, y0 + ty), (x0, y1 - ty, x1, y1), (x0, y0, x0 + tx, y1), (x1 - tx, y0, x1, y1)):
            _fill(draw, _outward(side), mark.color)
    else:
        _stamp(img, box, mark)
    return np.asarray(img, dtype=np.uint8).copy() if as_array else img


def _outward(box) -> tuple[int, int, int, int]:
    """A box in continuous pixel coordinates widened to whole pixels (x0, y0, x1, y1), far corner
    excluded: every pixel the box touches."""
    x0, y0, x1, y1 = box
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


def _fill(draw: ImageDraw.ImageDraw, box, color) -> None:
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=tuple(color))  # PIL's rectangle includes its far corner


def _stamp(img: Image.Image, box, mark: Mark) -> None:
    """The mark's text, as large as fits the box, centred in it, in the mark's colour with a black
    outline (PIL's default font, scalable)."""
    x0, y0, x1, y1 = _outward(box)
    w, h = x1 - x0, y1 - y0
    if w < 2 or h < 2:
        return
    size = max(4, int(h * 0.95))
    while True:
        font = ImageFont.load_default(size=size)
        stroke = max(1, round(size / 12))
        if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType: a fixed bitmap font
            stroke = 0
        l, t, r, b = font.getbbox(mark.text, stroke_width=stroke) if stroke else font.getbbox(mark.text)
        if not isinstance(font, ImageFont.FreeTypeFont):
            break
        if (r - l <= w and b - t <= h) or size <= 4:
            break
        size = max(4, int(size * min(w / max(r - l, 1), h / max(b - t, 1)) * 0.98))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(((w - (r - l)) / 2 - l, (h - (b - t)) / 2 - t), mark.text, font=font,
                               fill=(*mark.color, 255), stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
    img.paste(layer, (x0, y0), layer)


def _noise_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field (coarse noise, upsampled bicubically) of `size` (H, W)."""
    h, w = size
    cells = int(rng.integers(2, 9))
    coarse = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)


def write_mark_examples(mark: Mark | str, folder: str | os.PathLike, count: int = 20, backgrounds=None,
                        preprocessing=None, seed: int = 0) -> list[Path]:
    """Write `count` PNG images of `mark` into `folder` (created; it must be new or empty), the
    concept examples of a TCAV test.

    backgrounds: None for smooth random colour fields, or a list of photos (paths or PIL images)
      on which the mark is pasted, each used in turn in a random order (as many times as needed).
    preprocessing: the model's (a LoadedModel or Preprocessing): the mark is placed in the crop
      it sees, and the random fields are squares of its resize size. Without it, 224 x 224 fields
      and the box relative to each image.
    Returns the paths written, in order.
    """
    mark = as_mark(mark)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ParameterError(f"count {count!r} must be a whole number of at least 1 (TCAV needs a handful: 10 or more)")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ParameterError(f"{str(folder)!r} is not an empty folder; give a new or empty folder for the mark's "
                             "examples (nothing in it is replaced)")
    prep = _preprocessing_of(preprocessing)
    photos = None
    if backgrounds is not None:
        photos = list(backgrounds) if not isinstance(backgrounds, (str, os.PathLike)) else [backgrounds]
        if not photos:
            raise ParameterError("backgrounds is an empty list; give photos, or None for random colour fields")
    rng = np.random.default_rng(seed)
    side = (prep.resize or max(prep.crop)) if prep is not None else 224
    order: list[int] = []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(int(count)):
        if photos is None:
            img = _noise_background(rng, (side, side))
        else:
            if not order:
                order = list(rng.permutation(len(photos)))
            bg = photos[order.pop()]
            if isinstance(bg, Image.Image):
                img = bg.convert("RGB")
            else:
                from ...images import load_image

                img = load_image(bg)
        path = folder / f"{mark.kind}_{i:03d}.png"
        paste_mark(img, mark, prep).save(path)
        written.append(path)
    return written
