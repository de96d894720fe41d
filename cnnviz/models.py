"""`load_model`, which resolves a model name through the model sources of `cnnviz.sources` (timm,
EfficientNet-Lite, a user's factory, torchvision, plug-ins) into a `LoadedModel` (defined in
`cnnviz.loaded`, re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ModelError
from .loaded import (DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, MAX_RESIZED_PIXELS, LoadedModel,  # noqa: F401
                     Preprocessing, check_resized_size)


def available_models() -> list[dict]:
    """Every model name `load_model` accepts here, with where its weights come from."""
    from .sources import sources

    rows = [row for source in sources() for row in source.listing()]
    return sorted(rows, key=lambda r: (not r.get("default"), ":" in r["name"]))  # the default first, patterns last


def load_model(name: str = DEFAULT_MODEL, weights: str | None = None, weights_file: str | os.PathLike | None = None,
               labels: str | os.PathLike | None = None, trust_checkpoint: bool = False,
               preprocessing: Preprocessing | None = None) -> LoadedModel:
    """Load a model by name, in eval mode on the CPU.

    name: a torchvision classification model ("alexnet"), "efficientnet_lite0/1/2", or
      "package.module:factory" / "path/to/file.py:factory" (a callable returning an nn.Module) with
      `weights_file`. A factory is code that runs: only name modules and files you trust.
    weights: a torchvision weights entry ("IMAGENET1K_V1", "AlexNet_Weights.IMAGENET1K_V1",
      "DEFAULT"), or "none" for random weights (structure only).
    weights_file: a checkpoint (state dict) to load instead; read with weights_only=True unless
      `trust_checkpoint` (full unpickling runs code from the file: only for files you trust).
    labels: a text file with one class name per line.
    preprocessing: overrides the model's own preprocessing.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError("empty model name; run `cnnviz models` to list the models")
    name = name.strip()
    check_weights_options(weights, weights_file, trust_checkpoint)
    from .sources import find_source

    lm = find_source(name).load(name, weights, weights_file, trust_checkpoint)
    if labels is not None:
        lm.categories = read_labels(labels)
    if preprocessing is not None:
        lm.preprocessing = preprocessing
    lm.model.eval()
    n_out = _num_outputs(lm.model)
    if n_out is not None and lm.categories and len(lm.categories) != n_out:
        raise ModelError(f"{len(lm.categories)} class names for a model with {n_out} outputs; "
                         "give a --labels file with one name per output")
    if not lm.categories and n_out is not None:
        lm.categories = [f"class {i}" for i in range(n_out)]
    return lm


def check_weights_options(weights: str | None, weights_file, trust_checkpoint: bool) -> None:
    """Weights options that contradict each other, or one that would be ignored."""
    if weights_file is not None and weights is not None and weights.strip().lower() == "none":
        raise ModelError("--weights none (random weights) and --weights-file contradict each other; drop one")
    if trust_checkpoint and weights_file is None:
        raise ModelError("--trust-checkpoint only applies to a --weights-file checkpoint; drop it or give the file")


def _num_outputs(model: torch.nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m.out_features
    return last


def read_labels(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelError(f"labels file not found: {str(p)!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read labels file {str(p)!r}: {e}") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise ModelError(f"labels file {str(p)!r} is empty; it needs one class name per line")
    return names
