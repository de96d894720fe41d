"""Your own network, already in memory, ready for every engine: `cnnviz.wrap(model, classes)`.

Nothing is copied or changed: the engines run the very module (in eval mode for the call, then
back to the mode it was in) and leave no hooks behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ParameterError
from .models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Preprocessing, _num_outputs, read_labels

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


def wrap(model: torch.nn.Module, classes=None, *, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
         resize: int | None | str = "auto", name: str | None = None, weights: str = "in memory") -> LoadedModel:
    """A `LoadedModel` for an `nn.Module` you already have, for every engine and figure.

    classes: class names, one per output (a list, or a text file with one per line); default
      "class 0", "class 1", ... sized from the model's last linear layer.
    input_size: the model's input crop, an int or (height, width).
    mean, std: the normalization of its training, per RGB channel, on pixels scaled to [0, 1].
    resize: the shorter side of a photo before the centre crop; "auto": 256/224 of the crop (as
      torchvision's ImageNet models), None: no resize (photos are scaled only to cover the crop).
    name, weights: how figures and saved results name the model and its weights.
    """
    if not isinstance(model, torch.nn.Module):
        raise ParameterError(f"wrap needs a torch.nn.Module, got {type(model).__name__}; for a model by name use "
                             "cnnviz.load_model")
    crop = _size(input_size)
    if resize == "auto":
        resize = round(min(crop) * 256 / 224)
    elif resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < min(crop)):
        raise ParameterError(f"resize must be a whole number of at least the crop's shorter side ({min(crop)}), "
                             f"'auto' or None, got {resize!r}")
    prep = Preprocessing(crop=crop, resize=resize, mean=_triple(mean, "mean"), std=_triple(std, "std", positive=True))
    return LoadedModel(model, name or type(model).__name__, weights, prep, _classes(classes, _num_outputs(model)))
