"""Image patches and projections of each unit's top-k activations (Zeiler & Fergus 2014, Fig. 2).

For every unit of a top-k scan (`cnnviz.engines.units.topk.scan`) and each of its top-k images, the image
is prepared as the scan saw it (the model's input crop) and a patch around the recorded position is
cut out of the crop (`crop`):
- "rf": the unit's theoretical receptive field at the position, as Zeiler & Fergus show it; where
  the field leaves the image the patch is filled with a marker colour;
- "activation": where the unit's own map is high, as Zhou et al. (2015) and Bau et al. (2017)
  segment a unit's images: the map of the unit on that image is upsampled (bilinear) to the input
  crop and thresholded at ACTIVATION_FRACTION (half) of its value at the recorded position (the
  map's maximum); the patch is the bounding square of the thresholded region that holds the peak
  (at least MIN_CROP_STRIDES strides of the layer a side), moved inside the image where it would
  leave it, and resized to a common tile (the smaller of the field and the image's side). The
  quantile threshold of Bau et al. (top 0.5 % of the unit's activations over the whole data set)
  needs every activation of the data set; a top-k scan keeps only each image's maximum, so the
  threshold here is relative to each tile's own peak;
- "auto" (the default): "rf" where the theoretical field fits in the input crop (AlexNet- and
  VGG-like layers: ZF's figures), "activation" where it is larger than the image (deep layers of
  EfficientNet-Lite: a 339 px field at `_blocks.10` on a 224 px image would show a small photo in a
  large gray square, every field crossing the border).

With `project=True` the projection of that single activation (every other activation of the layer
set to zero) to the input is cut out the same way and shown like ZF: scaled around mid-gray by its
own largest |value|. `projection` chooses the backward rule:
- "deconv": the Zeiler-Fergus deconvnet;
- "guided": guided backprop (Springenberg et al. 2015), which also passes the signal only where the
  forward pass was positive, so it depends on the image where the deconvnet cannot;
- "auto" (the default): the deconvnet, unless cnnviz's own check (`dependence.image_dependence`, as
  `cnnviz deconv` runs it) finds that its projections of this layer do not depend on the image
  (on a network without max-pool switches, such as EfficientNet-Lite, every tile would show the
  unit's fixed pattern): then guided backprop. The check runs on the first unit's top images.
params["projection"] is the method used, params["projection_note"] why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from ...bare import takes_model
from ...errors import LayerError, ParameterError
from ...images import load_image
from ...models import LoadedModel
from ... import schema as S
from ...results import Result, provenance
from ..common import resolve_device
from ..receptive_field.theory import RFInfo, receptive_fields
from .topk import TopkResult, parse_units

__api__ = ("unit_patches",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_FILL = (220, 220, 220)  # light gray: the part of a receptive field outside the image
PROJECTIONS = ("auto", "deconv", "guided")
CROPS = ("auto", "rf", "activation")
ACTIVATION_FRACTION = 0.5  # crop="activation": the region where the upsampled map >= this x its peak
MIN_CROP_STRIDES = 2  # crop="activation": at least this many strides of the layer a side
METHOD_LABELS = {"deconv": "deconvnet", "guided": "guided backprop"}


@dataclass
class PatchesResult(Result):
    """Patches (and projections) of the top-k activations per unit (see the module's docstring).

    patches: uint8 U x k x r x r x 3, the input crop at each activation's receptive field
      (params["crop"] "rf"; pixels outside the image are `params["fill"]`) or at the region where
      the unit's map is high, resized to r x r ("activation").
    projections: uint8 U x k x r x r x 3, the projection of the single activation (params
      ["projection"]: "deconv" or "guided"), cropped the same way, 128 = zero signal, scaled by its
      own max |value| (ZF); empty (shape (0,)) when made with `project=False`.
    inside: bool U x k, whether the receptive field ("rf") or the crop lies inside the image.
    boxes: int64 U x k x 4, (top, bottom, left, right) of the field or the crop in the input crop
      (inclusive).
    values, image_index, position, units, files: as in the top-k result (values -inf and
      image_index -1 for an empty slot).
    """

    kind: ClassVar[str] = "patches"
    renderer: ClassVar = "cnnviz.render.units.patches:figure"
    param_schema: ClassVar[dict] = {"layer": S.TEXT, "input_size": S.PAIR, "rf": S.PAIR}
    array_schema: ClassVar[dict] = {
        "patches": S.Arr("u", ("U", "K", None, None, 3)), "projections": S.Arr("u", [("U", "K", None, None, 3), (0,)]),
        "inside": S.Arr("b", ("U", "K")), "boxes": S.Arr("iu", ("U", "K", 4)), "values": S.Arr("f", ("U", "K")),
        "image_index": S.Arr("iu", ("U", "K")), "units": S.Arr("iu", ("U",)), "files": S.Arr("U", (None,))}
    patches: np.ndarray = None
    projections: np.ndarray = None
    inside: np.ndarray = None
    boxes: np.ndarray = None
    values: np.ndarray = None
    image_index: np.ndarray = None
    position: np.ndarray = None
    units: np.ndarray = None
    files: np.ndarray = None

    @property
    def projected(self) -> bool:
        return self.projections is not None and self.projections.ndim == 5


def crop_box(image: np.ndarray, box: Sequence[int], fill) -> np.ndarray:
    """Rows box[0]..box[1] and columns box[2]..box[3] (inclusive) of an H x W (x C) array; the part
    outside the image is `fill`."""
    y0, y1, x0, x1 = (int(v) for v in box)
    h, w = image.shape[:2]
    out = np.empty((y1 - y0 + 1, x1 - x0 + 1, *image.shape[2:]), dtype=image.dtype)
    out[...] = np.asarray(fill, dtype=image.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h - 1), max(x0, 0), min(x1, w - 1)
    if sy0 <= sy1 and sx0 <= sx1:
        out[sy0 - y0:sy1 - y0 + 1, sx0 - x0:sx1 - x0 + 1] = image[sy0:sy1 + 1, sx0:sx1 + 1]
    return out


def zf_scale(signal: np.ndarray) -> np.ndarray:
    """A projection H x W x 3 to [0, 1]: 0.5 is zero, scaled by its own max |value| (ZF's display)."""
    m = float(np.abs(signal).max())
    if m <= 0 or not np.isfinite(m):
        return np.full(signal.shape, 0.5, np.float32)
    return (0.5 + 0.5 * signal / m).astype(np.float32)


def layer_rf(lm: LoadedModel, layer: str) -> RFInfo:
    infos = {i.address: i for i in receptive_fields(lm.model, lm.input_size)}
    info = infos.get(layer)
    if info is None or info.rf is None:
        raise LayerError(f"layer {layer!r} has no spatial receptive field in {lm.name}")
    return info


def unit_projections(lm: LoadedModel, x: torch.Tensor, layer: str, channel: int, positions: torch.Tensor,
                     device: str = "cpu", info=None, method: str = "deconv") -> np.ndarray:
    """Projections N x 3 x H x W of channel `channel` of `layer` at one position per image
    (`positions` N x 2, (y, x)) under `method` ("deconv" or "guided"): as `attribute(lm, x[i:i+1],
    method, layer=layer, unit=f"{channel}:{y},{x}")` for each image, in one forward and one backward
    pass."""
    from ...layers import resolve_layer
    from ..common import model_on_device
    from ..attribution.methods import signal_at_input
    from ..attribution.targets import Target

    if method not in ("deconv", "guided"):
        raise ParameterError(f"projection {method!r} is not a projection method; use deconv or guided")
    info = info if info is not None else resolve_layer(lm.model, layer, x[:1])
    with model_on_device(lm.model, torch.device(device)) as model, torch.inference_mode(False):
        target = Target.at_positions(channel, positions)  # the seed of every backprop method
        g, _ = signal_at_input(model, x.to(device), target, method, info)
    return g.detach().float().cpu().numpy()


def deconv_projections(lm: LoadedModel, x: torch.Tensor, layer: str, channel: int, positions: torch.Tensor,
                       device: str = "cpu", info=None) -> np.ndarray:
    """`unit_projections` with the Zeiler-Fergus deconvnet."""
    return unit_projections(lm, x, layer, channel, positions, device, info, "deconv")


def deconv_dependence(lm: LoadedModel, x: torch.Tensor, info, channel: int, positions: torch.Tensor,
                      device: str = "cpu") -> dict:
    """cnnviz's check of the deconvnet (`dependence.image_dependence`, as `cnnviz deconv --unit`
    runs it) on the projections of channel `channel` at `positions` (one per image): the params
    entries "uninformative", "uninformative_reason", "gray_image_r", "max_pool_switches"."""
    from ..common import model_on_device
    from ..attribution.dependence import _uninformative, image_dependence
    from ..attribution.targets import Target

    with model_on_device(lm.model, torch.device(device)) as model, torch.inference_mode(False):
        fill = lm.preprocessing.fill_value("mean").to(device)
        rs, switches = image_dependence(model, x.to(device), None, info, Target.at_positions(channel, positions),
                                        fill, 8)
    return _uninformative(lm.name, rs, switches, unit=True)


def unit_maps(lm: LoadedModel, x: torch.Tensor, info, channel: int, device: str = "cpu") -> np.ndarray:
    """The maps N x h x w of channel `channel` of layer `info` on images `x` (a forward pass that
    stops at the layer)."""
    import contextlib

    from ...batching import pad
    from ...layers import StopForward, record
    from ..common import model_on_device

    out = []
    with model_on_device(lm.model, torch.device(device)) as model, torch.inference_mode():
        for i in range(0, len(x), 16):
            xi = x[i:i + 16]
            with record(model, [info], stop=True) as store:
                with contextlib.suppress(StopForward):
                    model(pad(xi).to(device))
            act = store[info.address][:len(xi)]
            out.append(act[:, channel].float().cpu() if act.ndim == 4 else act[:, channel, None, None].float().cpu())
    return torch.cat(out).numpy()


def activation_box(amap: np.ndarray, position: Sequence[int], size: Sequence[int], min_side: int = 1,
                   fraction: float = ACTIVATION_FRACTION) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive, of the square crop where a unit's map `amap` (h x w)
    is high around `position` (y, x) in an input of `size` (H, W): the map upsampled bilinearly
    (align_corners False) to the input, the pixels at or above `fraction` of its value at
    `position`, the connected region of them (8-neighbours) that holds the position's centre, its
    bounding box made square (at least `min_side`, at most the image's smaller side) and moved
    inside the image. A peak <= 0 gives the `min_side` square at the position's centre."""
    from scipy import ndimage

    H, W = (int(v) for v in size)
    h, w = amap.shape
    y, x = (int(v) for v in position)
    cy = min(H - 1, max(0, int(round((y + 0.5) * H / h - 0.5))))  # the centre of cell (y, x) in the input
    cx = min(W - 1, max(0, int(round((x + 0.5) * W / w - 0.5))))
    peak = float(amap[y, x])
    top, bottom, left, right = cy, cy, cx, cx
    if peak > 0 and np.isfinite(peak):
        up = torch.nn.functional.interpolate(torch.as_tensor(amap, dtype=torch.float32)[None, None], size=(H, W),
                                             mode="bilinear", align_corners=False)[0, 0].numpy()
        mask = up >= fraction * peak
        if not mask[cy, cx]:  # the upsampled peak may sit a pixel off the cell's centre
            ys = slice(max(0, cy - H // h), cy + H // h + 1)
            xs = slice(max(0, cx - W // w), cx + W // w + 1)
            win = np.where(mask[ys, xs], up[ys, xs], -np.inf)
            if np.isfinite(win).any():
                dy, dx = np.unravel_index(int(np.argmax(win)), win.shape)
                cy, cx = ys.start + int(dy), xs.start + int(dx)
        if mask[cy, cx]:
            labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
            rows, cols = np.nonzero(labels == labels[cy, cx])
            top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    side = min(max(bottom - top + 1, right - left + 1, int(min_side)), H, W)
    y0 = (top + bottom + 1) // 2 - side // 2
    x0 = (left + right + 1) // 2 - side // 2
    y0 = min(max(y0, 0), H - side)
    x0 = min(max(x0, 0), W - side)
    return y0, y0 + side - 1, x0, x0 + side - 1


def _resized(img: np.ndarray, side: int) -> np.ndarray:
    """An s x s x 3 uint8 crop to side x side (bilinear, PIL: antialiased when shrinking)."""
    from PIL import Image

    if img.shape[0] == side and img.shape[1] == side:
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ParameterError(f"{name} {value!r} is not one of {', '.join(choices)}")
    return value


@takes_model
def unit_patches(lm: LoadedModel, topk_result: TopkResult, units=None, project: bool = True, device: str = "auto",
                 fill: Sequence[int] = DEFAULT_FILL, projection: str = "auto", crop: str = "auto") -> PatchesResult:
    """Patches (and with `project` projections) of the top-k activations of `units` (None: every
    unit of the scan) of a top-k result. The images are read again from `params["root"]`; `lm`
    must be the model (and preprocessing) the scan ran with. `projection`: "auto", "deconv" or
    "guided"; `crop`: "auto", "rf" or "activation" (see the module's docstring)."""
    r = topk_result
    layer = r.params["layer"]
    _check_choice("projection", projection, PROJECTIONS)
    _check_choice("crop", crop, CROPS)
    rf = layer_rf(lm, layer)
    if list(rf.shape) != list(r.params.get("layer_shape", rf.shape)):
        raise ParameterError(f"layer {layer!r} outputs {list(rf.shape)} at input {lm.input_size}, but the scan saw "
                             f"{r.params['layer_shape']}; use the preprocessing the scan ran with")
    scanned = [int(u) for u in r.units]
    wanted = scanned if units is None else parse_units(units)
    missing = [u for u in wanted if u not in scanned]
    if missing:
        raise LayerError(f"units {missing} were not scanned; the scan holds {r.params.get('units', scanned)}")
    rows = [scanned.index(u) for u in wanted]
    fill = tuple(int(v) for v in fill)
    if len(fill) != 3:
        raise ParameterError(f"fill must be an RGB triple, got {fill!r}")
    h, w = lm.input_size
    fits = rf.rf[0] <= h and rf.rf[1] <= w
    crop_used = crop if crop != "auto" else ("rf" if fits else "activation")
    size = tuple(rf.rf) if crop_used == "rf" else (min(max(rf.rf), h, w),) * 2
    min_side = min(h, w, MIN_CROP_STRIDES * max(rf.stride))
    U, k = len(rows), r.values.shape[1]
    patches = np.empty((U, k, size[0], size[1], 3), np.uint8)
    patches[...] = np.asarray(fill, np.uint8)
    projections = patches.copy() if project else np.zeros((0,), np.uint8)
    inside = np.zeros((U, k), bool)
    boxes = np.full((U, k, 4), -1, np.int64)
    root = Path(r.params.get("root", "."))
    cache: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def prepared(i: int):
        if i not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[i] = lm.prepare(load_image(root / str(r.files[i])))
        return cache[i]

    def cut(image: np.ndarray, box) -> np.ndarray:
        tile = crop_box(image, box, fill)
        return tile if crop_used == "rf" else _resized(tile, size[0])

    dev = str(resolve_device(device))
    layer_info = None
    method = None if not project else (projection if projection != "auto" else None)
    check = None
    for a, row in enumerate(rows):
        entries = [j for j in range(k) if r.image_index[row, j] >= 0]
        if not entries:
            continue
        batch = torch.cat([prepared(int(r.image_index[row, j]))[1] for j in entries])
        pos = torch.as_tensor(np.asarray(r.position[row, entries]), dtype=torch.long)
        if layer_info is None:
            from ...layers import resolve_layer

            layer_info = resolve_layer(lm.model, layer, batch[:1])
        maps = unit_maps(lm, batch, layer_info, int(r.units[row]), dev) if crop_used == "activation" else None
        for n, j in enumerate(entries):
            y, x = (int(v) for v in r.position[row, j])
            if crop_used == "rf":
                (y0, y1), (x0, x1) = rf.interval(y, x)
            else:
                y0, y1, x0, x1 = activation_box(maps[n], (y, x), (h, w), min_side)
            boxes[a, j] = (y0, y1, x0, x1)
            inside[a, j] = y0 >= 0 and x0 >= 0 and y1 < h and x1 < w
            patches[a, j] = cut(prepared(int(r.image_index[row, j]))[0], boxes[a, j])
        if not project:
            continue
        if check is None and projection in ("auto", "deconv"):  # cnnviz's check, on the first unit's top images
            check = deconv_dependence(lm, batch, layer_info, int(r.units[row]), pos, dev)
            if method is None:
                method = "guided" if check["uninformative"] else "deconv"
        signal = unit_projections(lm, batch, layer, int(r.units[row]), pos, dev, layer_info, method)
        for j, sig in zip(entries, signal):
            proj8 = np.round(zf_scale(np.transpose(sig, (1, 2, 0))) * 255).clip(0, 255).astype(np.uint8)
            projections[a, j] = cut(proj8, boxes[a, j])
    if project and method is None:
        method = "deconv" if projection == "auto" else projection
    note = None
    if check is not None and check["uninformative"]:
        note = (("guided backprop in place of the deconvnet" if method == "guided" else "the deconvnet, as asked")
                + f"; the deconvnet's projections here do not depend on the image: {check['uninformative_reason']}")
    params = {"layer": layer, "layer_type": r.params.get("layer_type"), "k": k, "rf": list(rf.rf),
              "stride": list(rf.stride), "padding": list(rf.padding), "input_size": [h, w], "fill": list(fill),
              "projected": bool(project), "root": str(root), "num_units": U,
              "projection": method, "projection_asked": projection if project else None, "projection_note": note,
              "deconv_check": ({n: check[n] for n in ("uninformative", "gray_image_r", "max_pool_switches")}
                               if check is not None else None),
              "crop": crop_used, "crop_asked": crop, "tile": list(size),
              "crop_rule": (f"theoretical receptive field ({rf.rf[0]}x{rf.rf[1]} px) at the position" if crop_used == "rf"
                            else f"the unit's map upsampled (bilinear) to the {h}x{w} input, thresholded at "
                                 f"{ACTIVATION_FRACTION:g} x its value at the position, bounding square of the region "
                                 f"holding it (>= {min_side} px), inside the image, resized to {size[0]} px"),
              "crop_fraction": ACTIVATION_FRACTION if crop_used == "activation" else None,
              "topk_provenance": {n: r.provenance.get(n) for n in ("model", "weights") if n in r.provenance}}
    return PatchesResult(
        params=params, provenance=provenance(lm.identity(), dev), patches=patches, projections=projections,
        inside=inside, boxes=boxes, values=r.values[rows].astype(np.float32), image_index=r.image_index[rows],
        position=r.position[rows], units=np.asarray(wanted, np.int64), files=r.files)
