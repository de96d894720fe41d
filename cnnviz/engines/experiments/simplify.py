"""Image simplification (Zhou, Khosla, Lapedriza, Oliva & Torralba 2015, "Object detectors emerge
in deep scene CNNs", Sec. 3.1, Fig. 2).

The image (the model's input crop) is split into superpixels (SLIC, scikit-image), and superpixels
are removed one at a time, greedily: at each step every remaining superpixel is tried, the one
whose removal lowers the probability of the image's class least is removed, and the search stops
when even that removal would change the top-1 class. What is left is a minimal image: about the
least of the image the network needs to keep its answer.

Removed pixels get the fill colour (default: the dataset mean, gray, as the occlusion engine
fills its occluder) in the normalized input. Each step's candidates run through the model in
batches chosen by measuring (`cnnviz.batching.Batches`), padded to full groups so that the
probabilities, and with them the choices, do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ... import schema as S
from ...batching import Batches, check_batch_size, model_work, pad
from ...errors import ParameterError
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import batch_memory_format, model_on_device, progress_bar, resolve_device

__api__ = ("simplify",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_SEGMENTS = 50
DEFAULT_COMPACTNESS = 10.0


@dataclasses.dataclass
class SimplifyResult(Result):
    """Greedy simplification of N images.

    images: uint8 N x H x W x 3, the input crops.
    segments: int32 N x H x W, the superpixel of each pixel (0..S_n-1).
    minimal: uint8 N x H x W x 3, the minimal images (removed superpixels in the fill colour).
    order: int64 N x S, superpixels in the order removed; -1 after the last removal kept.
    prob: float32 N x (S + 1), P(class) after 0, 1, ... removals (NaN after the last).
    fraction: float32 N x (S + 1), the fraction of the image's pixels removed at each step.
    next_prob: float32 N, P(class) after the removal that would have changed the class (NaN when
      every superpixel could be removed); params["next_class"] is the class it gives instead.
    next_fraction: float32 N, the fraction removed with that removal (NaN likewise).
    params: classes / class_names (per image), names, removed (steps kept per image), fill...
    """

    kind: ClassVar[str] = "simplify"
    renderer: ClassVar = "cnnviz.render.experiments.simplify:figure"
    param_schema: ClassVar[dict] = {"class_names": S.TEXTS, "names": S.TEXTS}
    array_schema: ClassVar[dict] = {
        "images": S.Arr("u", ("N", "H", "W", 3)), "segments": S.Arr("iu", ("N", "H", "W")),
        "minimal": S.Arr("u", ("N", "H", "W", 3)), "order": S.Arr("iu", ("N", "S")),
        "prob": S.Arr("f", ("N", None)), "fraction": S.Arr("f", ("N", None)), "next_prob": S.Arr("f", ("N",)),
        "next_fraction": S.Arr("f", ("N",))}
    images: np.ndarray = None
    segments: np.ndarray = None
    minimal: np.ndarray = None
    order: np.ndarray = None
    prob: np.ndarray = None
    fraction: np.ndarray = None
    next_prob: np.ndarray = None
    next_fraction: np.ndarray = None


def superpixels(pixels: np.ndarray, n_segments: int = DEFAULT_SEGMENTS,
                compactness: float = DEFAULT_COMPACTNESS) -> np.ndarray:
    """SLIC superpixels of a uint8 H x W x 3 image, labelled 0..S-1 (int32)."""
    from skimage.segmentation import slic

    labels = slic(pixels, n_segments=int(n_segments), compactness=float(compactness), start_label=0,
                  channel_axis=-1)
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def _check(n_segments, compactness) -> None:
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or not 2 <= n_segments <= 1000:
        raise ParameterError(f"segments {n_segments!r} must be a whole number from 2 to 1000 (Zhou et al. use "
                             "tens; 50 is the default)")
    if not np.isfinite(compactness) or compactness <= 0:
        raise ParameterError(f"compactness {compactness!r} must be a positive number (SLIC's, 10 by default)")


def class_probs(model, x0: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor, cls: int, batches_of,
                layout=torch.contiguous_format) -> tuple:
    """P(cls) and the top-1 class for each candidate: x0 with `masks[k]` (K x H x W bool, True =
    removed) filled. `batches_of(K)` gives the (lo, hi) slices."""
    probs, tops = [], []
    for lo, hi in batches_of(len(masks)):
        m = masks[lo:hi, None].to(x0.device)
        x = torch.where(m, fill, x0).contiguous(memory_format=layout)
        p = torch.softmax(model(pad(x))[: hi - lo].float(), dim=1)
        probs.append(p[:, cls].cpu())
        tops.append(p.argmax(1).cpu())
    return torch.cat(probs).numpy(), torch.cat(tops).numpy()


def greedy_step(model, x0, fill, segments: np.ndarray, removed: np.ndarray, cls: int, batches_of,
                layout=torch.contiguous_format):
    """One step: the remaining superpixel whose removal (on top of `removed`, H x W bool) keeps
    P(cls) highest (ties: the lowest label). Returns (label, its P(cls), its top-1 class, the
    candidates' labels, their P(cls))."""
    remaining = np.unique(segments[~removed])
    seg = torch.as_tensor(segments)
    rem = torch.as_tensor(removed)
    masks = torch.stack([rem | (seg == int(s)) for s in remaining])
    p, top = class_probs(model, x0, fill, masks, cls, batches_of, layout)
    best = int(np.argmax(p))  # the first maximum: the lowest label among equals
    return int(remaining[best]), float(p[best]), int(top[best]), remaining, p


@takes_model
def simplify(lm: LoadedModel, images, n_segments: int = DEFAULT_SEGMENTS, compactness: float = DEFAULT_COMPACTNESS,
             fill="mean", target=None, segments=None, batch_size: int | None = None, device: str = "auto",
             progress: bool | None = None) -> SimplifyResult:
    """Greedy simplification of each image (path, PIL image or uint8 crop).

    target: the class kept (default: each image's top-1); the image must be classified as it.
    segments: int arrays H x W (one per image) to use instead of SLIC superpixels.
    batch_size: candidates per forward pass (default: chosen by measuring).
    """
    _check(n_segments, compactness)
    batch_size = check_batch_size(batch_size)
    images = images if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ParameterError("no images given")
    prepared = [lm.prepare(im) for im in images]
    h, w = lm.input_size
    if segments is not None:
        segments = segments if isinstance(segments, (list, tuple)) else [segments]
        if len(segments) != len(images) or any(np.shape(s) != (h, w) for s in segments):
            raise ParameterError(f"segments must be one {h}x{w} label array per image")
        segs = [np.unique(np.asarray(s), return_inverse=True)[1].reshape(h, w).astype(np.int32) for s in segments]
    else:
        segs = [superpixels(p, n_segments, compactness) for p, _ in prepared]
    fill_t = lm.preprocessing.fill_value(fill)
    fixed = None if target is None else lm.class_index(target)
    dev = resolve_device(device)
    S_max = max(int(s.max()) + 1 for s in segs)
    N = len(images)
    order = np.full((N, S_max), -1, np.int64)
    prob = np.full((N, S_max + 1), np.nan, np.float32)
    fraction = np.full((N, S_max + 1), np.nan, np.float32)
    next_prob = np.full(N, np.nan, np.float32)
    next_fraction = np.full(N, np.nan, np.float32)
    minimal = np.empty((N, h, w, 3), np.uint8)
    classes, next_class, removed_n, records = [], [], [], []
    start = time.perf_counter()
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        fill_d = fill_t.to(dev)
        layout = batch_memory_format(model, prepared[0][1].to(dev))
        work = model_work(model, prepared[0][1].contiguous(memory_format=layout), engine="simplify")
        for n, ((pixels, x0), seg) in enumerate(zip(prepared, segs)):
            x0 = x0.to(dev)
            p0 = torch.softmax(model(x0).float(), 1)[0]
            top0 = int(p0.argmax())
            cls = top0 if fixed is None else fixed
            if top0 != cls:
                raise ParameterError(f"{_name(images[n], n)} is classified as {lm.class_name(top0)!r}, not "
                                     f"{lm.class_name(cls)!r}: simplification keeps the class the model gives; "
                                     "drop --target or give that class")
            classes.append(cls)
            prob[n, 0], fraction[n, 0] = float(p0[cls]), 0.0
            removed = np.zeros((h, w), bool)
            S_n = int(seg.max()) + 1
            record = None

            def batches_of(k):
                nonlocal record
                b = Batches(k, batch_size, device=dev, work=work)
                for lo, hi in b:
                    yield lo, hi
                record = b.record()

            stop_class = None
            with progress_bar(S_n, "simplify", progress, unit="superpixel") as bar:
                for step in range(S_n):
                    label, p, top, _, _ = greedy_step(model, x0, fill_d, seg, removed, cls, batches_of, layout)
                    if top != cls:
                        next_prob[n], stop_class = p, top
                        next_fraction[n] = (removed | (seg == label)).mean()
                        break
                    removed |= seg == label
                    order[n, step] = label
                    prob[n, step + 1], fraction[n, step + 1] = p, removed.mean()
                    bar.update(1)
            records.append(record)
            next_class.append(stop_class)
            removed_n.append(int((order[n] >= 0).sum()))
            keep = torch.as_tensor(~removed)[None, None].to(dev)
            minimal[n] = lm.preprocessing.denormalize(torch.where(keep, x0, fill_d))[0]
    names = [_name(im, i) for i, im in enumerate(images)]
    params = {"classes": classes, "class_names": [lm.class_name(c) for c in classes], "target_given": target is not None,
              "names": names, "num_segments": [int(s.max()) + 1 for s in segs], "removed": removed_n,
              "next_class": next_class,
              "next_class_names": [None if c is None else lm.class_name(c) for c in next_class],
              "segments_requested": int(n_segments), "compactness": float(compactness),
              "superpixels": "given" if segments is not None else "SLIC (scikit-image)",
              "fill": fill if isinstance(fill, str) else list(np.ravel(fill)),
              **({k: v for k, v in (records[-1] or {}).items()} if records and records[-1] else {}),
              "seconds": round(time.perf_counter() - start, 3)}
    return SimplifyResult(params=params, provenance=provenance(lm.identity(), str(dev)),
                          images=np.stack([p for p, _ in prepared]), segments=np.stack(segs), minimal=minimal,
                          order=order, prob=prob, fraction=fraction, next_prob=next_prob,
                          next_fraction=next_fraction)


def _name(im, i: int) -> str:
    if isinstance(im, np.ndarray):
        return f"image {i}"
    return str(getattr(im, "filename", None) or im).replace("\\", "/").rsplit("/", 1)[-1] or f"image {i}"
