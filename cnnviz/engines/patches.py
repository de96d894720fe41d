"""Image patches and deconvnet projections of each unit's top-k activations (Zeiler & Fergus 2014,
Fig. 2).

For every unit of a top-k scan (`cnnviz.engines.topk.scan`) and each of its top-k images, the image
is prepared as the scan saw it (the model's input crop) and the unit's theoretical receptive field
at the recorded position is cut out of the crop; where the field leaves the image the patch is
filled with a marker colour. With `project=True` the Zeiler-Fergus deconvnet projection of that
single activation (every other activation of the layer set to zero) is cut out the same way and
shown like ZF: scaled around mid-gray by its own largest |value|.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..errors import LayerError, ParameterError
from ..images import load_image
from ..models import LoadedModel
from .. import schema as S
from ..results import Result, provenance
from .common import resolve_device
from .receptive_field import RFInfo, receptive_fields
from .topk import TopkResult, parse_units

DEFAULT_FILL = (220, 220, 220)  # light gray: the part of a receptive field outside the image


@dataclass
class PatchesResult(Result):
    """Receptive-field patches (and deconvnet projections) of the top-k activations per unit.

    patches: uint8 U x k x r x r x 3, the input crop at each activation's receptive field; pixels
      outside the image are `params["fill"]`.
    projections: uint8 U x k x r x r x 3, the deconvnet projection of the single activation, cropped
      the same way, 128 = zero signal, scaled by its own max |value| (ZF); empty (shape (0,)) when
      made with `project=False`.
    inside: bool U x k, whether the receptive field lies inside the image.
    boxes: int64 U x k x 4, (top, bottom, left, right) of the field in the input crop (inclusive).
    values, image_index, position, units, files: as in the top-k result (values -inf and
      image_index -1 for an empty slot).
    """

    kind: ClassVar[str] = "patches"
    renderer: ClassVar = "cnnviz.render.patches:figure"
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


def deconv_projections(lm: LoadedModel, x: torch.Tensor, layer: str, channel: int, positions: torch.Tensor,
                       device: str = "cpu", info=None) -> np.ndarray:
    """Deconvnet projections N x 3 x H x W of channel `channel` of `layer` at one position per image
    (`positions` N x 2, (y, x)): as `attribute(lm, x[i:i+1], "deconv", layer=layer,
    unit=f"{channel}:{y},{x}")` for each image, in one forward and one backward pass."""
    from ..layers import resolve_layer
    from .common import model_on_device
    from .methods import signal_at_input
    from .targets import Target

    info = info if info is not None else resolve_layer(lm.model, layer, x[:1])
    with model_on_device(lm.model, torch.device(device)) as model, torch.inference_mode(False):
        target = Target.at_positions(channel, positions)  # the seed of every backprop method
        g, _ = signal_at_input(model, x.to(device), target, "deconv", info)
    return g.detach().float().cpu().numpy()


def unit_patches(lm: LoadedModel, topk_result: TopkResult, units=None, project: bool = True, device: str = "auto",
                 fill: Sequence[int] = DEFAULT_FILL) -> PatchesResult:
    """Patches (and with `project` deconvnet projections) of the top-k activations of `units`
    (None: every unit of the scan) of a top-k result. The images are read again from
    `params["root"]`; `lm` must be the model (and preprocessing) the scan ran with."""
    r = topk_result
    layer = r.params["layer"]
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
    size = rf.rf
    U, k = len(rows), r.values.shape[1]
    patches = np.empty((U, k, size[0], size[1], 3), np.uint8)
    patches[...] = np.asarray(fill, np.uint8)
    projections = patches.copy() if project else np.zeros((0,), np.uint8)
    inside = np.zeros((U, k), bool)
    boxes = np.full((U, k, 4), -1, np.int64)
    root = Path(r.params.get("root", "."))
    h, w = lm.input_size
    cache: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def prepared(i: int):
        if i not in cache:
            if len(cache) > 256:
                cache.clear()
            cache[i] = lm.prepare(load_image(root / str(r.files[i])))
        return cache[i]

    dev = str(resolve_device(device))
    layer_info = None
    for a, row in enumerate(rows):
        entries = [j for j in range(k) if r.image_index[row, j] >= 0]
        for j in entries:
            y, x = (int(v) for v in r.position[row, j])
            (y0, y1), (x0, x1) = rf.interval(y, x)
            boxes[a, j] = (y0, y1, x0, x1)
            inside[a, j] = y0 >= 0 and x0 >= 0 and y1 < h and x1 < w
            patches[a, j] = crop_box(prepared(int(r.image_index[row, j]))[0], boxes[a, j], fill)
        if not project or not entries:
            continue
        batch = torch.cat([prepared(int(r.image_index[row, j]))[1] for j in entries])
        pos = torch.as_tensor(np.asarray(r.position[row, entries]), dtype=torch.long)
        if layer_info is None:
            from ..layers import resolve_layer

            layer_info = resolve_layer(lm.model, layer, batch[:1])
        signal = deconv_projections(lm, batch, layer, int(r.units[row]), pos, dev, layer_info)
        for j, sig in zip(entries, signal):
            proj8 = np.round(zf_scale(np.transpose(sig, (1, 2, 0))) * 255).clip(0, 255).astype(np.uint8)
            projections[a, j] = crop_box(proj8, boxes[a, j], fill)
    params = {"layer": layer, "layer_type": r.params.get("layer_type"), "k": k, "rf": list(size),
              "stride": list(rf.stride), "padding": list(rf.padding), "input_size": [h, w], "fill": list(fill),
              "projected": bool(project), "root": str(root), "num_units": U,
              "topk_provenance": {n: r.provenance.get(n) for n in ("model", "weights") if n in r.provenance}}
    return PatchesResult(
        params=params, provenance=provenance(lm.identity(), dev), patches=patches, projections=projections,
        inside=inside, boxes=boxes, values=r.values[rows].astype(np.float32), image_index=r.image_index[rows],
        position=r.position[rows], units=np.asarray(wanted, np.int64), files=r.files)
