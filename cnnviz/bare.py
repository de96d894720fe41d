"""Your own network, already in memory, ready for every engine: `cnnviz.wrap(model, classes)`; and
what lets every engine take the bare module itself (`as_loaded`, `takes_model`).

Nothing is copied or changed: the engines run the very module (in eval mode for the call, then
back to the mode it was in) and leave no hooks behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ParameterError
from .models import LoadedModel, Preprocessing, _num_outputs, read_labels

__api__ = ("wrap",)  # cnnviz.<name> (a literal: see cnnviz/__init__)



def _triple(value, what: str, positive: bool = False) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (positive and min(out) <= 0):
        need = "three positive numbers" if positive else "three numbers"
        raise ParameterError(f"{what} must be {need}, one per RGB channel, got {value!r}")
    return out  # type: ignore[return-value]


def _size(value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        h, w = pair
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ParameterError(f"input_size must be a positive whole number or (height, width), got {value!r}")
    return int(h), int(w)


def _classes(classes, n_out: int | None) -> list[str]:
    if classes is None:
        return [f"class {i}" for i in range(n_out)] if n_out else []
    if isinstance(classes, (str, os.PathLike)):
        if not Path(classes).is_file():
            raise ParameterError(f"classes {str(classes)!r} is not a file; give a list of names or a text file "
                                 "with one class name per line")
        names = read_labels(classes)
    elif isinstance(classes, Sequence) and all(isinstance(c, str) for c in classes):
        names = [c.strip() for c in classes]
    else:
        raise ParameterError(f"classes must be a list of names or a labels file, got {type(classes).__name__}")
    if n_out is not None and len(names) != n_out:
        raise ParameterError(f"{len(names)} class names for a model with {n_out} outputs; give one name per output")
    return names


def wrap(model: torch.nn.Module, classes=None, *, input_size=None, mean=None, std=None,
         resize: int | None | str = "auto", name: str | None = None, weights: str = "in memory") -> LoadedModel:
    """A `LoadedModel` for an `nn.Module` you already have, for every engine and figure. (Every
    engine also takes the bare module and wraps it so itself, with the settings below left out.)

    classes: class names, one per output (a list, or a text file with one per line); default
      "class 0", "class 1", ... sized from the model's last linear layer.
    input_size: the model's input crop, an int or (height, width).
    mean, std: the normalization of its training, per RGB channel, on pixels scaled to [0, 1].
    resize: the shorter side of a photo before the centre crop; "auto": 256/224 of the crop (as
      torchvision's ImageNet models), None: no resize (photos are scaled only to cover the crop).
    A timm model's `pretrained_cfg` (input size, mean, std, interpolation, crop_pct) gives every
    setting left out here; for any other module the defaults are ImageNet's (224 px, ImageNet
    mean and std, "auto" resize).
    name, weights: how figures and saved results name the model and its weights.
    """
    if not isinstance(model, torch.nn.Module):
        raise ParameterError(f"wrap needs a torch.nn.Module, got {type(model).__name__}; for a model by name use "
                             "cnnviz.load_model")
    declared, _ = declared_preprocessing(model)
    if declared is not None and name is None:
        name = f"timm:{model.pretrained_cfg.get('architecture') or type(model).__name__}"
    if input_size is None and declared is not None:
        crop = declared.crop
        if resize == "auto":
            resize = declared.resize
    else:
        crop = _size(224 if input_size is None else input_size)
    if resize == "auto":
        resize = round(min(crop) * 256 / 224)
    elif resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < min(crop)):
        raise ParameterError(f"resize must be a whole number of at least the crop's shorter side ({min(crop)}), "
                             f"'auto' or None, got {resize!r}")
    base = declared or Preprocessing()
    prep = Preprocessing(crop=crop, resize=resize, mean=_triple(base.mean if mean is None else mean, "mean"),
                         std=_triple(base.std if std is None else std, "std", positive=True),
                         interpolation=base.interpolation)
    return LoadedModel(model, name or type(model).__name__, weights, prep, _classes(classes, _num_outputs(model)))


def takes_model(fn):
    """An engine's public function `fn(lm, ...)` made to take any model (`as_loaded`):
    a `LoadedModel`, a bare `nn.Module` (wrapped with the preprocessing it declares or ImageNet's,
    said once in the result's params["preprocessing_assumed"]) or a model name; and its `layer` /
    `layers` as names, module objects of the model, or lists of either (`layers.layer_address`)."""
    import functools
    import inspect

    layer_args = {i for i, p in enumerate(inspect.signature(fn).parameters.values())
                  if p.name in ("layer", "layers") and p.kind is p.POSITIONAL_OR_KEYWORD}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if args:
            lm, note = as_loaded(args[0])
            args = (lm, *args[1:])
        elif "lm" in kwargs:
            kwargs["lm"], note = as_loaded(kwargs["lm"])
        else:
            note = None
        _captum_names(fn, kwargs)
        from .layers import layer_address

        if layer_args:  # layers given as module objects of the model: their names
            model = (args[0] if args else kwargs.get("lm")).model
            args = tuple(layer_address(model, a) if i in layer_args else a for i, a in enumerate(args))
        for key in ("layer", "layers"):
            if key in kwargs:
                kwargs[key] = layer_address((args[0] if args else kwargs.get("lm")).model, kwargs[key])
        result = fn(*args, **kwargs)
        if note is not None:
            for r in result if isinstance(result, (list, tuple)) else [result]:
                if isinstance(getattr(r, "params", None), dict):
                    r.params["preprocessing_assumed"] = note
        return result

    return call


# captum's names for cnnviz's parameters: the same meaning (taken as cnnviz's), or another meaning (refused)
CAPTUM_SAME = {"n_steps": "ig_steps", "nt_samples": "smooth"}
CAPTUM_OTHER = {"baselines": "baseline= (\"black\", \"mean\", \"white\", \"blur\", a gray level or R,G,B in [0, 1])",
                "sliding_window_shapes": "window= (the occluder's side in pixels, or (height, width))",
                "strides": "stride= (pixels, or (height, width))"}


def _captum_names(fn, kwargs: dict) -> None:
    """captum's spelling of a parameter: renamed in place where it means the same as cnnviz's
    (n_steps, nt_samples), else a one-line ParameterError naming cnnviz's spelling."""
    import inspect

    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for theirs in [k for k in kwargs if k in CAPTUM_SAME or k in CAPTUM_OTHER]:
        ours = CAPTUM_SAME.get(theirs)
        if ours is not None and (ours in params or open_ended):
            if ours in kwargs:
                raise ParameterError(f"{theirs}= and {ours}= both given; give {ours}= (cnnviz's name) only")
            kwargs[ours] = kwargs.pop(theirs)
        elif ours is None and theirs in CAPTUM_OTHER and theirs not in params:
            raise ParameterError(f"{theirs}= is captum's name; cnnviz's {fn.__name__} takes {CAPTUM_OTHER[theirs]}")


def declared_preprocessing(model: torch.nn.Module) -> tuple[Preprocessing | None, str]:
    """The preprocessing a module declares, and a sentence saying where it came from: a timm model's
    `pretrained_cfg` (mean, std, input size, interpolation, crop_pct); None for any other module
    (the caller then assumes ImageNet's: torchvision's ImageNet models were trained on those)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size") and cfg.get("mean") and cfg.get("std"):
        from .sources.timm import preprocessing_from_cfg

        prep = preprocessing_from_cfg(cfg)
        return prep, (f"timm pretrained_cfg of the module: mean {_fmt(prep.mean)}, std {_fmt(prep.std)}, "
                      f"{prep.crop[0]}x{prep.crop[1]} px crop of a {prep.resize} px resize "
                      f"(crop_pct {cfg.get('crop_pct') or 0.875}), {prep.interpolation}")
    source = "torchvision ImageNet model" if type(model).__module__.startswith("torchvision.") else None
    why = f"a {source}: its ImageNet transform" if source else "the module declares none"
    return None, f"ImageNet mean/std, 224 px crop of a 256 px resize, bilinear ({why})"


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def as_loaded(model) -> tuple[LoadedModel, str | None]:
    """(the `LoadedModel` an engine runs, a note on the preprocessing assumed or None): a
    `LoadedModel` as it is; a bare `nn.Module` wrapped (`wrap(model)`: a timm model's
    pretrained_cfg, else ImageNet's settings; classes "class N"); a model name loaded
    (`cnnviz.load_model`). Anything else is a one-line ParameterError naming what is taken."""
    if isinstance(model, LoadedModel):
        return model, None
    if isinstance(model, torch.nn.Module):
        _, note = declared_preprocessing(model)
        return wrap(model), note
    accepted = "an nn.Module, a cnnviz LoadedModel (cnnviz.wrap / cnnviz.load_model) or a model name"
    if isinstance(model, str):
        from .errors import CnnvizError
        from .models import load_model

        try:
            return load_model(model), None
        except CnnvizError as e:
            raise ParameterError(f"model {model!r} is not a model name ({e}); give {accepted}") from None
    if isinstance(model, dict):
        raise ParameterError(f"the model is a dict (a state dict?); load it into its module "
                             f"(module.load_state_dict(state)) and give the module: {accepted}")
    what = "a function" if callable(model) else type(model).__name__
    raise ParameterError(f"the model is {what}, not a network; give {accepted}")
