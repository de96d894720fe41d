"""Model-randomization sanity check for saliency methods (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps", cascading randomization).

The weights of the network are re-initialized cumulatively from the top (the logits) down to the
bottom (the first convolution); after each step every method's map is computed again for the same
image and the same class, and compared with the map of the trained network by Spearman rank
correlation. A method whose maps explain the model should lose its resemblance to the original
map as the model loses its training; a method whose maps survive randomization shows the image,
not the model (Adebayo et al. find this for guided backprop).

What counts as a layer: every module with parameters of its own (Conv, Linear, BatchNorm, ...),
in the order the forward pass first calls it (`cnnviz.layers.trace_layers`); a module's
parameters are randomized together. Randomizing a layer calls the module's own
`reset_parameters()`, i.e. draws its weights again from PyTorch's default initialization, as
Adebayo et al. re-initialize a layer with its initializer. For BatchNorm this also resets the
running statistics (mean 0, variance 1) besides the affine weights (1, 0): the layer is put back in
its state before training, as a freshly initialized network has it; otherwise it would keep
normalizing with statistics learnt from the trained layers below. A module with parameters but no
`reset_parameters()` gets each parameter redrawn from a normal with that parameter's own mean and
standard deviation.

Models with many layers (EfficientNet-Lite0 has 99 modules with parameters) are randomized in at
most `steps` (default 12) cumulative steps of contiguous layers; `params["step_layers"]` lists
what each step randomized. The user's model is never changed: all of this happens on a deep copy.
Each layer's new values come from a CPU generator seeded by (`seed`, the layer's position), inside
`torch.random.fork_rng`, so the result is deterministic under the seed, independent of how the
layers are grouped into steps, and the global random state is left as it was.

Correlations are computed on absolute values of the maps, as Adebayo et al. report them (the maps
of saliency, guided backprop, deconvnet and Grad-CAM are non-negative anyway; Integrated
Gradients' signed maps are compared by magnitude). A map that is constant (e.g. a Grad-CAM map
that the ReLU sets to zero everywhere) has no ranking: its correlation is NaN.

Beside model randomization, a class-randomization test: with the original model, each method's
map for the top-1 class is compared (Spearman and Pearson of |map|) with its maps for other
classes: the runner-up (the hardest case: a similar class) and `classes - 1` classes drawn at
random with `seed`. A map that explains the class decision changes with the class; one that stays
(guided backprop on EfficientNet-Lite0: goldfinch vs goldfish r = 0.9997; the deconvnet of a
network without max pooling, r = 1 exactly) shows something else, e.g. the image's edges.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ...bare import takes_model
from ...errors import ParameterError
from ...geometry import params_of, stack_thumbnails
from ...layers import default_feature_layer, resolve_layer, trace_layers
from ...models import LoadedModel
from ...results import SanityResult, provenance
from ..common import check_method_list, resolve_device
from .gradients import CAM, METHODS, attribute

__api__ = ("sanity",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_STEPS = 12
DEFAULT_CLASSES = 4
_CAM = CAM
_PER_METHOD = {"ig_steps": ("ig",), "baseline": ("ig",)}  # options only some methods take


# --------------------------------------------------------------------------------------------------
# Rank correlation

def rankdata(values) -> np.ndarray:
    """Ranks 1..n of the flattened `values`; tied values get the average of their ranks."""
    a = np.ravel(np.asarray(values))
    order = np.argsort(a, kind="mergesort")
    inverse = np.empty(a.size, dtype=np.intp)
    inverse[order] = np.arange(a.size)
    s = a[order]
    new = np.r_[True, s[1:] != s[:-1]]
    dense = np.cumsum(new)[inverse]  # 1-based index of each value's group of ties
    starts = np.r_[np.flatnonzero(new), a.size]  # group k spans sorted positions starts[k-1]..starts[k]-1
    return 0.5 * (starts[dense] + starts[dense - 1] + 1)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally sized arrays (flattened), average ranks for ties.
    NaN when either is constant."""
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    if a.size != b.size:
        raise ValueError(f"spearman: sizes differ ({a.size} vs {b.size})")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((ra @ rb) / denom, -1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# Layers and their randomization

def parametrized_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules with parameters of their own, in the order the forward pass first
    calls them (bottom to top)."""
    modules = dict(model.named_modules())
    names: list[str] = []
    seen = set()
    for info in trace_layers(model, example):
        if info.name in seen:
            continue
        seen.add(info.name)
        if any(True for _ in modules[info.name].parameters(recurse=False)):
            names.append(info.name)
    return names


def cascade_steps(layers_bottom_up: list[str], steps: int | None) -> list[list[str]]:
    """The layers randomized at each cumulative step, top first: one layer per step, or at most
    `steps` contiguous chunks of layers."""
    top_down = list(reversed(layers_bottom_up))
    n = len(top_down)
    k = min(n, DEFAULT_STEPS if steps is None else steps)
    if k == n:
        return [[name] for name in top_down]
    return [list(chunk) for chunk in np.array_split(np.array(top_down, dtype=object), k)]


def _layer_seed(seed: int, position: int) -> int:
    return (int(seed) * 1_000_003 + position * 7919 + 12345) % (2**63 - 1)


@torch.no_grad()
def randomize_layer(module: nn.Module, seed: int) -> None:
    """Re-initialize the parameters of `module` (not of its children) from a CPU generator seeded
    with `seed`, leaving the global random state as it was. The module must be on the CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for p in module.parameters(recurse=False):
            mean = float(p.mean()) if p.numel() else 0.0
            std = float(p.std()) if p.numel() > 1 else abs(mean) or 1.0
            p.normal_(mean, std if math.isfinite(std) and std > 0 else 1.0)


# --------------------------------------------------------------------------------------------------
# The check

def pearson(a, b) -> float:
    """Pearson correlation of two equally sized arrays (flattened); NaN when either is constant."""
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(np.clip((a @ b) / denom, -1.0, 1.0)) if denom > 0 else float("nan")


def other_classes(logits: np.ndarray, top1: int, k: int, seed: int) -> list[int]:
    """The classes the top-1 map is compared with: the runner-up, then k - 1 distinct classes drawn
    at random (with `seed`) among the rest."""
    if k <= 0:
        return []
    order = [int(c) for c in np.argsort(-logits, kind="stable") if int(c) != top1]
    chosen = order[:1]
    rest = np.array(order[1:], dtype=np.int64)
    if k > 1 and rest.size:
        chosen += [int(c) for c in np.random.default_rng(seed).choice(rest, size=min(k - 1, rest.size),
                                                                      replace=False)]
    return chosen


@takes_model
def sanity(lm: LoadedModel, image, methods=("saliency", "guided", "gradcam"), seed: int = 0,
           device: str = "auto", steps: int | None = None, layer: str | None = None,
           classes: int = DEFAULT_CLASSES, **options) -> SanityResult:
    """Cascading model-randomization check of `methods` on one `image` (a path or a PIL image).

    steps: at most this many cumulative randomization steps (default 12); a model with fewer
      layers with parameters gets one step per layer.
    layer: the layer for Grad-CAM (default: the last convolutional block), the same at each step.
    classes: how many other classes the class-randomization test compares the top-1 map with
      (the runner-up and classes - 1 random ones; 0: no class test).
    options: passed to `attribute` for the methods that take them (ig_steps and baseline for ig
      only; smooth, noise, smooth_mode for all).
    The class followed at every step is the original model's top-1 for the image.
    """
    methods = check_method_list(methods, METHODS)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ParameterError(f"steps {steps!r} must be a positive whole number")
    for key in ("target", "unit", "method"):
        if key in options:
            raise ParameterError(f"sanity() follows the original top-1 class; {key}= cannot be given")
    if isinstance(image, (list, tuple)):
        raise ParameterError("sanity() takes one image")
    if not isinstance(classes, (int, np.integer)) or isinstance(classes, bool) or classes < 0:
        raise ParameterError(f"classes {classes!r} must be a whole number >= 0 (other classes to compare with)")
    if layer is not None and not any(m in _CAM for m in methods):
        raise ParameterError(f"layer {layer!r} is Grad-CAM's layer, but no Grad-CAM method is checked; drop it")
    for key, users in _PER_METHOD.items():
        if key in options and not any(m in users for m in methods):
            raise ParameterError(f"{key}= is used only by {', '.join(users)}, which is not checked; drop it")
    dev = resolve_device(device)

    # The copy lives on the CPU (randomization there is device-independent); `attribute` moves it to
    # `dev` for each map and back.
    work = copy.deepcopy(lm.model).cpu()
    work_lm = LoadedModel(work, lm.name, lm.weights, lm.preprocessing, list(lm.categories))
    pixels, x, geo = lm.prepare(image, geometry=True)
    layers = parametrized_layers(work, x)
    if not layers:
        raise ParameterError(f"{lm.name} has no layers with parameters to randomize")
    position = {name: i for i, name in enumerate(layers)}
    plan = cascade_steps(layers, steps)
    cam_layer = cam_type = None
    if any(m in _CAM for m in methods):
        info = resolve_layer(work, layer, x) if layer else default_feature_layer(work, x)
        cam_layer, cam_type = info.address, info.type

    def maps_now(target) -> tuple[np.ndarray, object]:
        out, first = [], None
        for m in methods:
            kw = {k: v for k, v in options.items() if m in _PER_METHOD.get(k, (m,))}
            if m in _CAM:
                kw["layer"] = cam_layer
            if options.get("smooth"):
                kw["seed"] = seed
            r = attribute(work_lm, image, m, target=target, device=str(dev), **kw)
            out.append(r.map[0])
            first = first or r
        return np.stack(out).astype(np.float32), first

    original, r0 = maps_now(None)
    target = int(r0.targets[0])
    with torch.inference_mode():
        logits = work.eval()(x).float()[0].numpy()  # a deep copy: its training flag is nobody's
    others = other_classes(logits, target, min(int(classes), len(logits) - 1), seed)
    class_maps = np.stack([maps_now(c)[0] for c in others], axis=1) if others else \
        np.zeros((len(methods), 0, *original.shape[1:]), np.float32)  # M x K x H x W
    class_rho = np.array([[spearman(np.abs(original[i]), np.abs(class_maps[i, k])) for k in range(len(others))]
                          for i in range(len(methods))], dtype=np.float32).reshape(len(methods), len(others))
    class_r = np.array([[pearson(np.abs(original[i]), np.abs(class_maps[i, k])) for k in range(len(others))]
                        for i in range(len(methods))], dtype=np.float32).reshape(len(methods), len(others))
    all_maps = [original]
    modules = dict(work.named_modules())
    for chunk in plan:
        for name in chunk:
            randomize_layer(modules[name], _layer_seed(seed, position[name]))
        all_maps.append(maps_now(target)[0])
    maps = np.stack(all_maps, axis=1)  # M x S x H x W
    rho = np.array([[spearman(np.abs(maps[i, 0]), np.abs(maps[i, s])) for s in range(maps.shape[1])]
                    for i in range(len(methods))], dtype=np.float32)
    step_names = ["original"] + [chunk[-1] for chunk in plan]
    params = {"seed": seed, "target": target, "target_name": lm.class_name(target),
              "top1": int(r0.top1[0]), "layer": cam_layer, "layer_type": cam_type, "steps_requested": steps,
              "step_layers": [[]] + plan, "num_layers": len(layers), "cascade": "top-down, cumulative",
              "reinit": "reset_parameters (BatchNorm: affine and running statistics)",
              "correlation": "spearman of absolute values",
              "class_test": "original model; top-1 map vs the runner-up and random classes (seeded); "
                            "spearman and pearson of absolute values",
              "options": {k: v for k, v in options.items()}, "geometry": params_of([geo])}
    return SanityResult(params=params, provenance=provenance(lm.identity(), str(dev)), image=pixels,
                        original=stack_thumbnails([geo]),
                        steps=np.array(step_names, dtype=str), methods=np.array(methods, dtype=str),
                        spearman=rho, maps=maps, class_targets=np.array(others, dtype=np.int64),
                        class_names=np.array([lm.class_name(c) for c in others], dtype=str),
                        class_spearman=class_rho, class_pearson=class_r, class_maps=class_maps.astype(np.float32))
