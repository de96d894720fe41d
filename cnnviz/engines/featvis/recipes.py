"""The recipes users call: `visualize` (any objective), units of a layer, class models (Simonyan et
al. 2014), DeepDream and inversion (Mahendran & Vedaldi 2015). Each returns a FeatvisResult."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...bare import takes_model
from ...errors import LayerError, ParameterError
from ...geometry import CropGeometry, params_of, stack_thumbnails, thumbnail
from ...layers import LayerInfo, StopForward, map_view, record, require_maps, resolve_layer
from ...models import LoadedModel
from ...results import FeatvisResult, provenance
from ..common import model_on_device, progress_bar, resolve_device
from .loop import _Runner, _optimize, _to_uint8
from .metrics import feature_distances
from .objectives import (Objective, alpha_norm, channel, class_logit, class_prob, dream, match, neuron, parse_units,
                         total_variation)
from .param import make_param
from .regularizers import Regularizers
from .transforms import Transforms

def _size_arg(lm: LoadedModel, size) -> tuple[int, int]:
    if size is None:
        return tuple(lm.input_size)
    if isinstance(size, (tuple, list)):
        h, w = (int(v) for v in size)
    else:
        h = w = int(size)
    if min(h, w) < 16 or max(h, w) > 4096:
        raise ParameterError(f"image size {size!r} must be between 16 and 4096 pixels")
    return h, w


PRIORS = ("full", "none")


def _prior_settings(priors: str, param, decorrelate, transforms):
    """`full`: Fourier, decorrelated colour, standard transforms; `none`: plain pixels, no
    transforms. Explicit param / decorrelate / transforms override."""
    if priors not in PRIORS:
        raise ParameterError(f"unknown priors {priors!r}; use full or none")
    full = priors == "full"
    param = param or ("fourier" if full else "pixel")
    decorrelate = (param == "fourier" and full) if decorrelate is None else decorrelate
    transforms = Transforms.parse(transforms if transforms is not None else ("standard" if full else "none"))
    return param, decorrelate, transforms


def _common_params(**kw) -> dict:
    out = {}
    for k, v in kw.items():
        if isinstance(v, Transforms):
            v = v.describe()
        elif isinstance(v, Regularizers):
            v = dataclasses.asdict(v)
        out[k] = v
    return out


def _unit_layer(lm: LoadedModel, layer: str, size) -> LayerInfo:
    example = lm.preprocessing.normalize(np.full((*size, 3), 128, np.uint8))
    info = resolve_layer(lm.model, layer, example)
    if map_view(info.shape) is not None:  # channels last or patch tokens: read as maps
        return require_maps(info)
    if info.shape is None or len(info.shape) not in (1, 3):
        raise LayerError(f"layer {layer!r} outputs {info.shape}; feature visualization needs CxHxW maps or a vector")
    return info


@takes_model
def visualize(lm: LoadedModel, objective: Objective, *, batch: int = 1, size=None, steps: int = 256,
              priors: str = "full", param=None, decorrelate: bool | None = None,
              transforms: str | Transforms | None = None, lr: float = 0.05, l2_decay: float = 0.0,
              blur_every: int = 0, blur_sigma: float = 0.5, clip_percentile: float = 0.0,
              seed: int = 0, log_every: int = 8, device: str = "auto", amp: bool | None = None,
              progress: bool | None = None, labels: Sequence[str] | None = None, mode: str = "custom") -> FeatvisResult:
    """Optimize `batch` images of `size` (default: the model's input size) to maximize `objective`.

    priors: "full" (Fourier spectrum with 1/f scaling, decorrelated colour, random pad, jitter, scale
    and rotation every step) or "none" (plain pixels, no transforms); `param`, `decorrelate` and
    `transforms` override parts; `param` may also be an object of the `ImageParam` protocol
    (`parameters()`, `image()` giving batch x 3 x H x W in [0, 1], `project()`). l2_decay, blur_every/blur_sigma and clip_percentile are Yosinski's
    regularizers (pixel parameterization). Adam with learning rate `lr`.
    """
    if not isinstance(objective, Objective):
        raise ParameterError(f"objective must be built with cnnviz.featvis functions (channel, class_logit, ...), "
                             f"got {type(objective).__name__}")
    if batch < 1:
        raise ParameterError(f"batch {batch!r} must be at least 1")
    hw = _size_arg(lm, size)
    param, decorrelate, tf = _prior_settings(priors, param, decorrelate, transforms)
    regs = Regularizers(l2_decay, blur_every, blur_sigma, clip_percentile)
    dev = resolve_device(device)
    images, logged, history, final = _optimize(
        lm, objective, batch=batch, size=hw, steps=steps, param=param, decorrelate=decorrelate, transforms=tf,
        lr=lr, regularizers=regs, init=None, seed=seed, log_every=log_every, device=dev, amp=amp,
        progress=progress)
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(batch)]
    params = _common_params(mode=mode, objective=objective.description, batch=batch, size=list(hw), steps=steps,
                            priors=priors, param=param if isinstance(param, str) else type(param).__name__,
                            decorrelate=decorrelate, transforms=tf, lr=lr, regularizers=regs, seed=seed, log_every=log_every, amp=bool(amp and dev.type == "cuda"),
                            score_label="objective")
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(images),
                         labels=np.array(labels), objective=final, score=final.copy(), history=history,
                         history_steps=logged, start=np.zeros((0, 0, 3), np.uint8))


def _no_override(options: dict) -> None:
    for key in ("labels", "mode", "batch"):
        if key in options:
            raise ParameterError(f"{key}= is set by this function; call featvis.visualize for a custom {key}")


def _default_batch(lm: LoadedModel, n: int, options: dict) -> int:
    """All `n` images in one batch, unless the device's free memory says fewer (cnnviz.batching).
    Not chosen by timing: chunk k is seeded with seed + k, so the chunking is part of the result
    and must be one size throughout; the size used is recorded and reproduces it."""
    from ...batching import memory_limit
    from ...layers import trace_layers

    dev = resolve_device(options.get("device", "auto"))
    hw = _size_arg(lm, options.get("size"))
    example = torch.zeros(1, 3, *hw)
    # forward activations, their gradients and the optimizer's copies: about 3x the layer outputs
    per_image = 3 * 4 * sum(int(np.prod(i.shape)) for i in trace_layers(lm.model, example) if i.shape)
    return memory_limit(dev, per_image, n)


def _in_batches(n: int, batch_size: int | None, seed: int, run, default: int | None = None) -> FeatvisResult:
    """Call run(start, stop, seed) for consecutive slices of at most `batch_size` images (chunk k
    seeded with seed + k) and join the results into one. `batch_size` None: `default` (or n)."""
    if batch_size is None:
        batch_size = default or n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size {batch_size!r} must be a positive whole number of images")
    parts = [run(start, min(n, start + batch_size), seed + k) for k, start in enumerate(range(0, n, batch_size))]
    res = parts[0]
    if len(parts) > 1:
        res.images = np.concatenate([r.images for r in parts])
        res.labels = np.concatenate([r.labels for r in parts])
        res.objective = np.concatenate([r.objective for r in parts])
        res.score = np.concatenate([r.score for r in parts])
        res.history = np.concatenate([r.history for r in parts], axis=1)
    res.params.update(batch=n, batch_size=int(batch_size), seed=seed,
                      seeds=[seed + k for k in range(len(parts))])
    return res


@takes_model
def visualize_units(lm: LoadedModel, layer: str, units="0:8", *, neuron_centre: bool = False,
                    batch_size: int | None = None, **options) -> FeatvisResult:
    """One image per unit of `layer`, optimized together in one batch (or in batches of at most
    `batch_size` images, the k-th seeded with seed + k): the mean of each unit's feature map (or,
    with `neuron_centre`, its activation at the centre of the map). Options as `visualize`."""
    _no_override(options)
    hw = _size_arg(lm, options.get("size"))
    info = _unit_layer(lm, layer, hw)
    units = parse_units(units, info.shape[0])
    if neuron_centre and len(info.shape) != 3:
        raise ParameterError(f"layer {layer!r} has no spatial maps; drop the neuron option")
    make = neuron if neuron_centre else channel
    seed = options.pop("seed", 0)

    def run(a, b, chunk_seed):
        part = units[a:b]
        return visualize(lm, make(info.address, part), batch=len(part), labels=[f"unit {u}" for u in part],
                         mode="units", seed=chunk_seed, **options)

    res = _in_batches(len(units), batch_size, seed, run,
                      None if batch_size is not None else _default_batch(lm, len(units), options))
    res.params.update(objective=make(info.address, units).description, layer=info.address, units=units, unit_kind="neuron" if neuron_centre else "channel",
                      score_label="centre activation" if neuron_centre else "mean activation")
    return res


@takes_model
def visualize_classes(lm: LoadedModel, targets, *, prob: bool = False, batch_size: int | None = None,
                      **options) -> FeatvisResult:
    """Class models (Simonyan et al. 2014): one image per class maximizing its logit (or, with
    `prob`, its softmax probability). `targets`: class indices or names. The result's score is the
    probability the model gives each image for its class. `batch_size` as in `visualize_units`."""
    _no_override(options)
    if isinstance(targets, (str, int, np.integer)):
        targets = [targets]
    classes = [lm.class_index(t) for t in targets]
    if not classes:
        raise ParameterError("no classes given")
    make = class_prob if prob else class_logit
    seed = options.pop("seed", 0)

    def run(a, b, chunk_seed):
        part = classes[a:b]
        return visualize(lm, make(part), batch=len(part), labels=[lm.class_name(c) for c in part], mode="class",
                         seed=chunk_seed, **options)

    res = _in_batches(len(classes), batch_size, seed, run,
                      None if batch_size is not None else _default_batch(lm, len(classes), options))
    res.params["objective"] = make(classes).description
    x = lm.preprocessing.normalize(res.images)
    dev = resolve_device(options.get("device", "auto"))
    step = res.params["batch_size"]
    with torch.inference_mode(), model_on_device(lm.model, dev) as m:
        probs = torch.cat([torch.softmax(m(x[i:i + step].to(dev)).float(), 1).cpu()
                           for i in range(0, len(x), step)])
    res.score = probs[torch.arange(len(classes)), torch.tensor(classes)].numpy().astype(np.float32)
    res.params.update(classes=classes, score_label="probability", objective_kind="prob" if prob else "logit",
                      top1=[int(i) for i in probs.argmax(1)])
    return res


def _load_pixels(lm: LoadedModel, image, size: int | None, geometry: bool = False):
    """The whole image (not cropped) with its shorter side resized to `size` (default: the
    model's input size), as uint8 H x W x 3; with `geometry`, also its `CropGeometry` (a resize,
    no crop) carrying a downscaled copy of the image."""
    from PIL import Image

    from ...images import load_image, to_rgb

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ParameterError(f"pixel array must be uint8 HxWx3, got {image.dtype} {'x'.join(map(str, image.shape))}")
        img = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        img = to_rgb(image)
    else:
        img = load_image(image)
    short = size or min(lm.input_size)
    if short < 16 or short > 4096:
        raise ParameterError(f"size {short!r} must be between 16 and 4096 pixels")
    w, h = img.size
    s = short / min(w, h)
    resized = img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8).copy()
    if not geometry:
        return pixels
    size_hw = tuple(pixels.shape[:2])
    source = "pixels" if isinstance(image, np.ndarray) else "pil" if isinstance(image, Image.Image) else "file"
    return pixels, CropGeometry((h, w), size_hw, (0, 0), size_hw, source, thumbnail(img))


@takes_model
def deep_dream(lm: LoadedModel, image, layer: str, *, size: int | None = None, octaves: int = 4,
               octave_scale: float = 1.4, steps: int = 10, step_size: float = 0.01, jitter: int = 32,
               seed: int = 0, device: str = "auto", amp: bool | None = None, progress: bool | None = None) -> FeatvisResult:
    """DeepDream (Mordvintsev et al. 2015): starting from `image`, climb the squared activations of
    `layer` over an image pyramid of `octaves` levels (each `octave_scale` smaller), `steps` steps
    per octave; each step rolls the image by a random shift of up to `jitter` pixels and moves it
    by `step_size` (in [0, 1] pixel units) along the gradient divided by its mean absolute value."""
    if octaves < 1 or octave_scale <= 1.0:
        raise ParameterError(f"octaves {octaves!r} must be >= 1 and octave_scale {octave_scale!r} > 1")
    if steps < 1 or step_size <= 0 or jitter < 0:
        raise ParameterError("steps must be >= 1, step_size > 0 and jitter >= 0")
    pixels, geo = _load_pixels(lm, image, size, geometry=True)
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else amp
    base = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    h, w = base.shape[-2:]
    example = lm.preprocessing.normalize(np.full((h, w, 3), 128, np.uint8))
    info = _unit_layer(lm, layer, (h, w))
    if len(info.shape) != 3:
        raise LayerError(f"DeepDream needs a layer with feature maps; {layer!r} outputs {info.shape}")
    objective = dream(info.address)
    runner = _Runner(lm, objective, example, dev, amp)
    gen = torch.Generator().manual_seed(int(seed))
    pyramid = [base]
    for _ in range(octaves - 1):
        ph, pw = pyramid[-1].shape[-2:]
        nh, nw = max(16, round(ph / octave_scale)), max(16, round(pw / octave_scale))
        pyramid.append(F.interpolate(pyramid[-1], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True))
    logged, history = [], []
    total = 0
    with torch.inference_mode(False), torch.enable_grad(), model_on_device(lm.model, dev) as model:
        runner.setup_memory_format(model, base.to(dev))
        detail = torch.zeros_like(pyramid[-1]).to(dev)
        with progress_bar(octaves * steps, "dream", progress, unit="step") as bar:
            for level in reversed(range(octaves)):
                octave_base = pyramid[level].to(dev)
                if detail.shape[-2:] != octave_base.shape[-2:]:
                    detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="bilinear", align_corners=False)
                x = (octave_base + detail).clamp(0, 1)
                for _ in range(steps):
                    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen)) if jitter else (0, 0)
                    xs = torch.roll(x, (dy, dx), (2, 3)).detach().requires_grad_(True)
                    value = runner(model, xs, xs)
                    (g,) = torch.autograd.grad(value.sum(), xs)
                    logged.append(total)  # the image after `total` steps (jittered)
                    history.append(value.detach().float().cpu())
                    g = torch.roll(g, (-dy, -dx), (2, 3))
                    x = (x + step_size * g / g.abs().mean().clamp_min(1e-12)).clamp(0, 1).detach()
                    total += 1
                    bar.update(1)
                detail = x - octave_base
        with torch.no_grad():
            start_value = runner(model, base.to(dev), base.to(dev)).float().cpu()
            final = runner(model, x, x).float().cpu()
        logged.append(total)
        history.append(final)
    params = _common_params(mode="dream", layer=info.address, objective=objective.description, size=[h, w],
                            octaves=octaves, octave_scale=octave_scale, steps=steps, step_size=step_size,
                            jitter=jitter, seed=seed, amp=bool(amp and dev.type == "cuda"),
                            start_objective=float(start_value[0]), score_label="mean squared activation",
                            geometry=params_of([geo]))
    final_np = final.numpy().astype(np.float32)
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(x.cpu()),
                         labels=np.array([f"dream({info.address})"]), objective=final_np, score=final_np.copy(),
                         history=torch.stack(history).numpy().astype(np.float32),
                         history_steps=np.array(logged, np.int32), start=pixels, original=stack_thumbnails([geo]))


@takes_model
def invert(lm: LoadedModel, image, layers: str | Sequence[str], *, steps: int = 300, priors: str = "full",
           param: str | None = None, decorrelate: bool | None = None, transforms: str | Transforms | None = None,
           lr: float | None = None, tv: float = 2.0, beta: float = 2.0, alpha: float = 6.0, alpha_weight: float = 0.1,
           seed: int = 0, log_every: int = 8, device: str = "auto", amp: bool | None = None,
           progress: bool | None = None) -> FeatvisResult:
    """Reconstruct `image` (its input crop) from its representation at each of `layers`
    (Mahendran & Vedaldi 2015): one image per layer, all in one batch, each minimizing its layer's
    relative squared distance to the original's, plus `tv` x total variation (power `beta`) and
    `alpha_weight` x alpha-norm (power `alpha`). Starts from seeded noise. priors: "full" (Fourier
    parameterization with decorrelated colour, jitter of 4 pixels, TV and alpha-norm) or "none"
    (plain pixels, no jitter, no TV, no alpha-norm). On efficientnet_lite0 the full priors reach
    lower feature distances from deep layers than plain pixels with TV (0.17 against 0.34-0.50 from
    _blocks.15 after 150 steps) with a fraction of the high-frequency noise.

    The result's score is the relative feature distance of each reconstruction (0: identical);
    params["start_distance"] has the starting noise's."""
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s.strip()]
    layers = list(layers)
    if not layers:
        raise ParameterError("no layers given to invert")
    if priors not in PRIORS:
        raise ParameterError(f"unknown priors {priors!r}; use full or none")
    if tv < 0 or alpha_weight < 0:
        raise ParameterError("tv and alpha_weight must be >= 0")
    full = priors == "full"
    param = param or ("fourier" if full else "pixel")
    decorrelate = (full and param == "fourier") if decorrelate is None else bool(decorrelate)
    tf = Transforms.parse(transforms if transforms is not None else ("pad=0,jitter=4" if full else "none"))
    if lr is None:
        lr = 0.02 if param == "pixel" else 0.05
    pixels, x0, geo = lm.prepare(image, geometry=True)
    hw = tuple(pixels.shape[:2])
    infos = [_unit_layer(lm, a, hw) for a in layers]
    dev = resolve_device(device)
    # target representations
    names = [i.address for i in infos]
    with torch.inference_mode(), model_on_device(lm.model, dev) as model:
        with record(model, infos, stop=True) as store:
            with contextlib.suppress(StopForward):
                model(x0.to(dev))
            targets = {k: v.detach().float().clone() for k, v in store.items()}
    objective = sum(match(name, targets[name], batch=i) for i, name in enumerate(names))
    if full and tv:
        objective = objective + tv * total_variation(beta)
    if full and alpha_weight:
        objective = objective + alpha_weight * alpha_norm(alpha)
    images, logged, history, final = _optimize(
        lm, objective, batch=len(names), size=hw, steps=steps, param=param, decorrelate=decorrelate, transforms=tf,
        lr=lr, regularizers=Regularizers(), init=None, seed=seed, log_every=log_every, device=dev, amp=amp,
        progress=progress, desc="invert")
    distances = feature_distances(lm, images, names, targets, dev)
    # the starting noise, regenerated from the seed
    gen = torch.Generator().manual_seed(int(seed))
    start = make_param(param, (len(names), 3, *hw), torch.tensor(lm.preprocessing.mean), gen, torch.device("cpu"),
                        decorrelate, None, 1.0).image().detach()
    start_d = feature_distances(lm, start, names, targets, dev)
    params = _common_params(mode="invert", layers=names, objective=objective.description, size=list(hw),
                            steps=steps, priors=priors, param=param, decorrelate=decorrelate, transforms=tf, lr=lr,
                            tv=tv if full else 0.0, beta=beta, alpha=alpha, alpha_weight=alpha_weight if full else 0.0,
                            seed=seed, log_every=log_every, start_distance=[float(v) for v in start_d],
                            score_label="relative feature distance", geometry=params_of([geo]))
    return FeatvisResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=_to_uint8(images),
                         labels=np.array(names), objective=final, score=distances, history=history,
                         history_steps=logged, start=pixels, original=stack_thumbnails([geo]))
