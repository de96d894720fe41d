"""Class-score maps over an image larger than the model's input (as OverFeat and fully
convolutional networks read a classifier): the photo is resized so that its shorter side is
`scale` times the model's usual resize, and the model's input crop slides over it; every crop
position gives the probability of the target class and the most probable class.

At scale 1 the centre position is exactly the crop the model normally sees (`predict`'s input).
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ...bare import takes_model
from ... import schema as S
from ...batching import Batches, check_batch_size, model_work, pad
from ...errors import ParameterError
from ...images import load_image
from ...loaded import _INTERPOLATIONS, LoadedModel, check_resized_size
from ...results import Result, provenance
from ..common import as_pair, model_on_device, progress_bar, resolve_device

__api__ = ("scoremap",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

MAX_POSITIONS = 4096


@dataclasses.dataclass
class ScoremapResult(Result):
    """image: uint8 H x W x 3, the photo at the analysed scale. prob: float32 P x Q, the target
    class's probability for the crop whose top-left corner is (positions_y[i], positions_x[j]);
    top_class / top_prob: int32 / float32 P x Q, the most probable class there. params: target,
    target_name, crop, stride, scale, best position."""

    kind: ClassVar[str] = "scoremap"
    renderer: ClassVar = "cnnviz.render.experiments.scoremap:figure"
    param_schema: ClassVar[dict] = {"target": S.INT, "target_name": S.TEXT, "crop": S.PAIR}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", ("H", "W", 3)), "prob": S.Arr("f", ("P", "Q")), "top_class": S.Arr("iu", ("P", "Q")),
        "top_prob": S.Arr("f", ("P", "Q")), "positions_y": S.Arr("iu", ("P",)), "positions_x": S.Arr("iu", ("Q",))}
    image: np.ndarray = None
    prob: np.ndarray = None
    top_class: np.ndarray = None
    top_prob: np.ndarray = None
    positions_y: np.ndarray = None
    positions_x: np.ndarray = None


def _grid(size: int, crop: int, stride: int) -> np.ndarray:
    """Crop offsets from 0 to size - crop every `stride`, with the last one always included (the
    whole image is covered) and the centre offset too when it falls between."""
    offsets = set(range(0, size - crop + 1, stride)) | {size - crop, int(round((size - crop) / 2.0))}
    return np.array(sorted(offsets), dtype=np.int32)


@takes_model
def scoremap(lm: LoadedModel, image, *, target=None, scale: float = 2.0, stride: int | None = None,
             batch_size: int | None = None, device: str = "auto", progress: bool | None = None) -> ScoremapResult:
    """The target class's probability at every position of the model's input crop over `image` (a
    path, PIL image or uint8 HxWx3 array), resized so that its shorter side is `scale` times the
    model's resize (256 for ImageNet models; at scale 1 the centre crop is the usual input).

    target: class index or name (default: the top-1 class of the model's usual input, as `predict`
    gives it). stride: pixels between crop positions (default: a sixteenth of
    the crop, at least 8). batch_size: crops per forward pass (default: chosen by measuring)."""
    scale = float(scale)
    if not 0.5 <= scale <= 8:
        raise ParameterError(f"scale {scale:g} is outside 0.5..8; the shorter side becomes scale x the model's "
                             "resize (use 1 for the usual input, 2-3 for a larger view)")
    ch, cw = lm.preprocessing.crop
    stride = as_pair(stride if stride is not None else max(8, min(ch, cw) // 16), "stride")
    batch_size = check_batch_size(batch_size)
    if isinstance(image, Image.Image):
        photo = image.convert("RGB")
    elif isinstance(image, np.ndarray):
        photo = Image.fromarray(np.asarray(image, np.uint8))
    else:
        photo = load_image(image)
    base = lm.preprocessing.resize or min(ch, cw)
    w, h = photo.size
    s = scale * base / min(w, h)
    size = (max(cw, round(w * s)), max(ch, round(h * s)))
    ny, nx = ((size[1] - ch) // stride[0] + 1, (size[0] - cw) // stride[1] + 1)  # counted before any allocation
    if ny * nx > MAX_POSITIONS:
        raise ParameterError(f"{ny}x{nx} crop positions is more than {MAX_POSITIONS}; use a larger --stride "
                             "or a smaller --scale")
    ys, xs = _grid(size[1], ch, stride[0]), _grid(size[0], cw, stride[1])
    if len(ys) * len(xs) > MAX_POSITIONS:  # the last and centre offsets can add one per axis
        raise ParameterError(f"{len(ys)}x{len(xs)} crop positions is more than {MAX_POSITIONS}; use a larger --stride "
                             "or a smaller --scale")
    check_resized_size(photo.size, size)
    resample = _INTERPOLATIONS[lm.preprocessing.interpolation]  # as the model's own preprocessing resizes
    big = np.asarray(photo.convert("RGB").resize(size, resample, reducing_gap=None), dtype=np.uint8).copy()
    H, W = big.shape[:2]
    target_index = None if target is None else lm.class_index(target)
    dev = resolve_device(device)
    x = lm.preprocessing.normalize(big)  # 1 x 3 x H x W
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    flat_y, flat_x = gy.ravel(), gx.ravel()
    n = flat_y.size
    start = time.perf_counter()
    probs = []
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        x = x.to(dev)
        crops = torch.stack([x[0, :, y:y + ch, xx:xx + cw] for y, xx in zip(flat_y[:1], flat_x[:1])])
        work = model_work(model, crops, engine="scoremap")
        batches = Batches(n, batch_size, device=dev, work=work)
        with progress_bar(n, "scoremap", progress) as bar:
            for lo, hi in batches:
                crops = torch.stack([x[0, :, y:y + ch, xx:xx + cw] for y, xx in zip(flat_y[lo:hi], flat_x[lo:hi])])
                probs.append(torch.softmax(model(pad(crops))[: hi - lo].float(), dim=1).cpu())
                bar.update(hi - lo)
        if target_index is None:  # the usual input's top-1
            target_index = int(model(lm.prepare(photo)[1].to(dev)).argmax())
    p = torch.cat(probs)
    shape = (len(ys), len(xs))
    top_p, top_c = p.max(dim=1)
    prob = p[:, target_index].numpy().astype(np.float32).reshape(shape)
    best = np.unravel_index(int(prob.argmax()), shape)
    params = {"target": target_index, "target_name": lm.class_name(target_index), "target_given": target is not None,
              "crop": [ch, cw], "stride": list(stride), "scale": scale, "image_size": [H, W],
              "num_positions": n, "best_position": [int(ys[best[0]]), int(xs[best[1]])],
              "best_prob": float(prob.max()), **batches.record(), "seconds": round(time.perf_counter() - start, 3)}
    return ScoremapResult(params=params, provenance=provenance(lm.identity(), str(dev)), image=big, prob=prob,
                          top_class=top_c.numpy().astype(np.int32).reshape(shape),
                          top_prob=top_p.numpy().astype(np.float32).reshape(shape),
                          positions_y=ys, positions_x=xs)
