"""What a model source is (`ModelSource`), apart from the registry in `cnnviz.sources`, so that the
sources themselves import only this."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ModelSource:
    """name: shown by `cnnviz models`. claims(model_name): whether this source loads that name.
    load(model_name, weights, weights_file, trust_checkpoint) -> LoadedModel; weights is None (the
    source's default), "none" (random weights) or the source's own weights name. listing(): rows
    for `cnnviz models` ({"name", "source", "weights", "available", "default"}). names(): model
    names for "did you mean" hints (cheap)."""

    name: str
    claims: Callable[[str], bool]
    load: Callable
    listing: Callable[[], list[dict]] = field(default=lambda: [])
    names: Callable[[], list[str]] = field(default=lambda: [])


def is_file_spec(source: str) -> bool:
    """A factory given by a Python file rather than a module name."""
    return source.endswith(".py") or "/" in source or os.sep in source
