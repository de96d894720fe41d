"""Correspondence of object parts across images (Zeiler & Fergus 2014, Sec. 5, Fig. 6, Table 1).

The same part (the left eye, say) is occluded in each of N images of one kind of object, and the
change it makes to a layer's features is compared across the images: for image i and layer l,

    eps_i^l = x_i^l - x~_i^l       (features of the image minus those of the occluded image),

and the consistency of the sign of that change over all ordered pairs of images,

    Delta_l = sum_{i != j} H(sign(eps_i^l), sign(eps_j^l)),

with H the Hamming distance. A lower Delta means the occlusion changes the features the same way in
every image: the layer treats the part alike wherever it is, an implicit correspondence. The
reference is the occlusion of a random region of the same size in each image, over several random
draws. ZF found lower Delta for eyes and nose than for random regions at layer 5, and similar
values at layer 7.

Reported here: Delta normalized to a fraction, Delta_l / (N (N - 1) D_l) with D_l the layer's size
(the mean share of features whose sign of change differs between two images). Each part row gives
the mean over the image pairs and its standard deviation over the pairs; the random row the mean
over the draws and its standard deviation over the draws (the spread a part's value is judged
against), and for each part the share of random draws at or below it (an empirical p-value).

Boxes are (x0, y0, x1, y1) in the photo's pixels (columns x0..x1-1, rows y0..y1-1), as an image
viewer shows them; they are carried into the model's input crop (`cnnviz.geometry`), where the
occluder (the fill colour, the dataset mean by default, as `cnnviz occlusion` fills) is applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ... import schema as S
from ...errors import LayerError, ParameterError
from ...layers import capture, default_feature_layer, layer_name, resolve_layer
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import model_on_device, resolve_device

__api__ = ("correspondence",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_DRAWS = 20
RANDOM = "random"
EXAMPLE = '{"dog1.jpg": {"left eye": [40, 52, 60, 70], "nose": [70, 90, 100, 115]}, "dog2.jpg": {...}}'


@dataclasses.dataclass
class CorrespondenceResult(Result):
    """Sign-change consistency of part occlusions across images.

    images: uint8 N x H x W x 3, the input crops.
    part_boxes: int64 P x N x 4, each part's box in each crop (x0, y0, x1, y1).
    random_boxes: int64 R x N x 4, the random boxes of each draw.
    part_hamming: int64 P x L x N x N, H(sign(eps_i), sign(eps_j)) per part, layer and image pair.
    random_hamming: int64 R x L x N x N, the same per random draw.
    delta: float32 (P + 1) x L, the table's values: each part's normalized Delta, then the random
      draws' mean. spread: float32 (P + 1) x L, the std over pairs (parts) or over draws (random).
    p_value: float32 P x L, the share of random draws whose Delta is at or below the part's.
    region_boxes: int64 N x 4 (or 0 x 4), the region the random boxes were drawn in, when given.
    params: parts (P names), layers (L addresses), layer_sizes (D_l), names, draws, seed...
    """

    kind: ClassVar[str] = "correspondence"
    renderer: ClassVar = "cnnviz.render.experiments.correspondence:figure"
    param_schema: ClassVar[dict] = {"parts": S.TEXTS, "layers": S.TEXTS, "names": S.TEXTS}
    array_schema: ClassVar[dict] = {
        "images": S.Arr("u", ("N", None, None, 3)), "part_boxes": S.Arr("iu", ("P", "N", 4)),
        "random_boxes": S.Arr("iu", ("R", "N", 4)), "part_hamming": S.Arr("iu", ("P", "L", "N", "N")),
        "random_hamming": S.Arr("iu", ("R", "L", "N", "N")), "delta": S.Arr("f", (None, "L")),
        "spread": S.Arr("f", (None, "L")), "p_value": S.Arr("f", ("P", "L")),
        "region_boxes": S.Arr("iu", (None, 4))}
    images: np.ndarray = None
    part_boxes: np.ndarray = None
    random_boxes: np.ndarray = None
    part_hamming: np.ndarray = None
    random_hamming: np.ndarray = None
    delta: np.ndarray = None
    spread: np.ndarray = None
    p_value: np.ndarray = None
    region_boxes: np.ndarray = None


# --------------------------------------------------------------------------------------------------
# The parts file

def read_parts(path: str | os.PathLike, images) -> dict[str, list[list[float]]]:
    """{part: [box per image]} from a JSON file mapping each image's file name (or the path as
    given) to {part name: [x0, y0, x1, y1]} in the photo's pixels. Every image needs the same
    parts. One-line ParameterError for a missing, unreadable or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"parts file not found: {str(p)!r}; give a JSON file mapping each image to its parts' "
                             f"boxes [x0, y0, x1, y1] in pixels, e.g. {EXAMPLE}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ParameterError(f"parts file {str(p)!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                             f"write it like {EXAMPLE}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParameterError(f"cannot read parts file {str(p)!r}: {e}") from None
    return parts_of(data, images, where=f"parts file {str(p)!r}")


def parts_of(data, images, where: str = "parts") -> dict[str, list[list[float]]]:
    """The same from an already parsed mapping {image: {part: box}}."""
    if not isinstance(data, dict) or not data:
        raise ParameterError(f"{where} must be a JSON object mapping each image name to its parts, e.g. {EXAMPLE}")
    keys = [_image_key(im, i) for i, im in enumerate(images)]
    entries = []
    for key, full in keys:
        entry = data.get(full, data.get(key))
        if entry is None:
            known = ", ".join(repr(k) for k in list(data)[:5])
            raise ParameterError(f"{where} has no entry for image {key!r}; it names {known}")
        if not isinstance(entry, dict) or not entry:
            raise ParameterError(f"{where}: the entry for {key!r} must map part names to boxes [x0, y0, x1, y1]")
        entries.append((key, entry))
    names = list(entries[0][1])
    for key, entry in entries[1:]:
        if set(entry) != set(names):
            missing = sorted(set(names) - set(entry)) or sorted(set(entry) - set(names))
            raise ParameterError(f"{where}: {key!r} and {entries[0][0]!r} name different parts ({missing[0]!r}); every "
                                 "image needs the same parts")
    if RANDOM in names:
        raise ParameterError(f"{where}: a part may not be called {RANDOM!r}, the name of the random occlusions' row")
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for key, entry in entries:
        for n in names:
            box = entry[n]
            if (not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
                raise ParameterError(f"{where}: part {n!r} of {key!r} is {box!r}; give a box [x0, y0, x1, y1] of four "
                                     "numbers (pixels)")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ParameterError(f"{where}: part {n!r} of {key!r} is {list(box)!r}, an empty box; x1 must exceed x0 "
                                     "and y1 exceed y0 ([x0, y0, x1, y1])")
            out[n].append([float(v) for v in box])
    return out


def _image_key(im, i: int) -> tuple[str, str]:
    if isinstance(im, np.ndarray):
        return f"image {i}", f"image {i}"
    full = str(getattr(im, "filename", None) or im)
    return Path(full).name, full


def crop_boxes(lm: LoadedModel, images, parts: dict) -> tuple[np.ndarray, list, np.ndarray]:
    """The parts' boxes carried into each image's input crop (P x N x 4 int: x0, y0, x1, y1,
    rounded outward, clipped to the crop), with the prepared images. A box outside its photo, or
    one that misses the crop, is a one-line ParameterError."""
    prepared = [lm.prepare(im, geometry=True) for im in images]
    h, w = lm.input_size
    out = np.zeros((len(parts), len(images), 4), np.int64)
    for pi, (name, boxes) in enumerate(parts.items()):
        for n, (box, (_, _, geo)) in enumerate(zip(boxes, prepared)):
            key = _image_key(images[n], n)[0]
            H0, W0 = geo.original_size
            x0, y0, x1, y1 = box
            if x0 < 0 or y0 < 0 or x1 > W0 or y1 > H0:
                raise ParameterError(f"part {name!r} of {key!r}: box {_fmt(box)} lies outside the image ({W0} x {H0} "
                                     "pixels, x then y); boxes are [x0, y0, x1, y1] in the photo's pixels")
            c = geo.to_crop(np.asarray(box, np.float64))
            cx0, cy0 = max(0, int(math.floor(c[0] + 1e-6))), max(0, int(math.floor(c[1] + 1e-6)))
            cx1, cy1 = min(w, int(math.ceil(c[2] - 1e-6))), min(h, int(math.ceil(c[3] - 1e-6)))
            if cx1 <= cx0 or cy1 <= cy0:
                raise ParameterError(f"part {name!r} of {key!r}: box {_fmt(box)} lies outside the model's input crop "
                                     f"(the centre {w} x {h} after resizing); the model never sees it")
            out[pi, n] = (cx0, cy0, cx1, cy1)
    return out, prepared, np.stack([p for p, _, _ in prepared])


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


MAX_DRAWS = 1000


def random_boxes(part_boxes: np.ndarray, size: tuple[int, int], draws: int, seed: int,
                 within: np.ndarray | None = None) -> np.ndarray:
    """R x N x 4 boxes placed uniformly at random, each as large as the mean of that image's part
    boxes: anywhere in the crop, or inside image n's box `within[n]` (N x 4; where the region is
    smaller than the box, the box is centred on it)."""
    h, w = size
    rng = np.random.default_rng(seed)
    bw = np.round((part_boxes[..., 2] - part_boxes[..., 0]).mean(0)).astype(int).clip(1, w)
    bh = np.round((part_boxes[..., 3] - part_boxes[..., 1]).mean(0)).astype(int).clip(1, h)
    region = np.asarray(within if within is not None else [[0, 0, w, h]] * part_boxes.shape[1], np.int64)
    out = np.zeros((draws, part_boxes.shape[1], 4), np.int64)

    def start(lo, hi, size_, limit):
        if hi - lo >= size_:
            return int(rng.integers(lo, hi - size_ + 1))
        return int(np.clip((lo + hi - size_) // 2, 0, limit - size_))

    for r in range(draws):
        for n in range(part_boxes.shape[1]):
            x0 = start(region[n, 0], region[n, 2], bw[n], w)
            y0 = start(region[n, 1], region[n, 3], bh[n], h)
            out[r, n] = (x0, y0, x0 + bw[n], y0 + bh[n])
    return out


# --------------------------------------------------------------------------------------------------
# The measure

def occlude(x: torch.Tensor, boxes: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
    """x (N x 3 x H x W) with box n (x0, y0, x1, y1) of image n set to `fill` (3 x 1 x 1)."""
    out = x.clone()
    for n, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, int)):
        out[n, :, y0:y1, x0:x1] = fill.to(x.device, x.dtype)
    return out


def sign_hamming(signs: torch.Tensor) -> np.ndarray:
    """N x N Hamming distances between the rows of an N x D sign array (int8)."""
    n = signs.shape[0]
    out = np.zeros((n, n), np.int64)
    for i in range(n):
        out[i] = (signs != signs[i:i + 1]).sum(1).cpu().numpy()
    return out


def normalized_delta(hamming: np.ndarray, size: int) -> float:
    """sum_{i != j} H_ij / (N (N - 1) D): the mean share of features whose sign of change differs."""
    n = hamming.shape[-1]
    return float(hamming.sum() / (n * (n - 1) * size))


def default_layers(model, example: torch.Tensor):
    """ZF's layers 5 and 7 in kind: the last convolutional block's map and the features entering
    the last linear layer."""
    from .invariance import default_layers as inv

    spatial = default_feature_layer(model, example)
    top = inv(model, example)[1]
    return [spatial, top] if spatial.address != top.address else [spatial]


@takes_model
def correspondence(lm: LoadedModel, images, parts, layers=None, draws: int = DEFAULT_DRAWS, seed: int = 0,
                   fill="mean", random_within: str | None = None, device: str = "auto") -> CorrespondenceResult:
    """Sign-change consistency Delta of occluding each part of `parts` in every image of `images`
    (paths, PIL images or uint8 crops), against random boxes of the same size.

    parts: a JSON file path, or {part: [box per image]} / {image name: {part: box}}, boxes
    (x0, y0, x1, y1) in the photos' pixels. layers: addresses (default: the last convolutional
    block and the features entering the last linear layer). draws: random draws (>= 2).
    random_within: the name of a part (e.g. "head") whose box bounds the random boxes, as ZF drew
    random parts of the object; it is not a row of the table. Default: anywhere in the crop.
    """
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2:
        raise ParameterError(f"draws {draws!r} must be a whole number of at least 2 (the random row's spread needs "
                             "two); 20 is the default")
    if draws > MAX_DRAWS:
        raise ParameterError(f"draws {draws} is more than {MAX_DRAWS}: the random row's mean and spread are settled "
                             f"long before (each draw is a forward pass per image pair); use at most {MAX_DRAWS}")
    images = images if isinstance(images, (list, tuple)) else [images]
    if len(images) < 2:
        raise ParameterError(f"{len(images)} image given; correspondence compares images in pairs, give at least 2 "
                             "(Zeiler & Fergus used 5)")
    if isinstance(parts, (str, os.PathLike)):
        parts = read_parts(parts, images)
    elif isinstance(parts, dict) and parts and all(isinstance(v, dict) for v in parts.values()):
        parts = parts_of(parts, images)
    elif not isinstance(parts, dict) or not parts or any(len(v) != len(images) for v in parts.values()):
        raise ParameterError("parts must be a JSON file, {image: {part: box}} or {part: [one box per image]}")
    region = None
    if random_within is not None:
        if random_within not in parts:
            raise ParameterError(f"random_within {random_within!r} is not a part of the parts file, which names "
                                 f"{', '.join(repr(n) for n in parts)}")
        if len(parts) < 2:
            raise ParameterError(f"the parts file names only {random_within!r}, the region of the random boxes; "
                                 "add the parts to compare")
    part_boxes, prepared, pixels = crop_boxes(lm, images, parts)
    if random_within is not None:
        k = list(parts).index(random_within)
        region = part_boxes[k]
        part_boxes = np.delete(part_boxes, k, axis=0)
        parts = {n: v for n, v in parts.items() if n != random_within}
    x = torch.cat([t for _, t, _ in prepared])
    if layers is None:
        infos = default_layers(lm.model, x[:1])
    else:
        infos = [resolve_layer(lm.model, a, x[:1]) for a in layers]
        if len({i.address for i in infos}) != len(infos):
            raise LayerError(f"layers {list(layers)!r} name a layer twice")
    rand = random_boxes(part_boxes, lm.input_size, int(draws), int(seed), region)
    fill_t = lm.preprocessing.fill_value(fill)
    dev = resolve_device(device)
    N, L = len(images), len(infos)
    sizes = []
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        xd = x.to(dev)
        base = _features(model, infos, xd)
        sizes = [int(f[0].numel()) for f in base]

        def hamming(boxes):
            occ = _features(model, infos, occlude(xd, boxes, fill_t))
            return np.stack([sign_hamming(torch.sign(f0 - f1).flatten(1).to(torch.int8)) for f0, f1 in zip(base, occ)])

        part_h = np.stack([hamming(b) for b in part_boxes])
        rand_h = np.stack([hamming(b) for b in rand])
    pairs = ~np.eye(N, dtype=bool)
    delta = np.zeros((len(parts) + 1, L), np.float32)
    spread = np.zeros((len(parts) + 1, L), np.float32)
    p_value = np.zeros((len(parts), L), np.float32)
    rand_delta = np.array([[normalized_delta(rand_h[r, li], sizes[li]) for li in range(L)] for r in range(len(rand))])
    for pi in range(len(parts)):
        for li in range(L):
            per_pair = part_h[pi, li][pairs] / sizes[li]
            delta[pi, li] = per_pair.mean()
            spread[pi, li] = per_pair.std()
            p_value[pi, li] = float(np.mean(rand_delta[:, li] <= per_pair.mean() + 1e-12))
    delta[-1], spread[-1] = rand_delta.mean(0), rand_delta.std(0)
    names = [_image_key(im, i)[0] for i, im in enumerate(images)]
    labels = [layer_name(i.address, i.type) for i in infos]
    if layers is None:
        labels = [f"{labels[0]} (last conv block)"] + ([f"{labels[1]} (top features)"] if L > 1 else [])
    params = {"parts": list(parts), "layers": [i.address for i in infos], "layer_labels": labels,
              "layer_shapes": [list(i.shape) for i in infos], "layer_sizes": sizes, "names": names, "draws": int(draws),
              "seed": int(seed), "fill": fill if isinstance(fill, str) else list(np.ravel(fill)),
              "random_box_size": "the mean of the image's part boxes", "random_within": random_within,
              "delta": "sum_{i!=j} H(sign(eps_i), sign(eps_j)) / (N (N-1) D), eps = x - x_occluded",
              "spread": "parts: std over image pairs; random: std over draws"}
    return CorrespondenceResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=pixels,
                                part_boxes=part_boxes, random_boxes=rand, part_hamming=part_h, random_hamming=rand_h,
                                delta=delta, spread=spread, p_value=p_value,
                                region_boxes=region if region is not None else np.zeros((0, 4), np.int64))


def _features(model, infos, x):
    with contextlib.ExitStack() as stack:
        caps = [stack.enter_context(capture(model, info)) for info in infos]
        model(x)
        return [c.values[-1].float() for c in caps]
