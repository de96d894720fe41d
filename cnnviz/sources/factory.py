"""A user's own `package.module:factory` or `path/to/file.py:factory` plus a checkpoint file. The
factory is the user's code and runs: the module is imported (installed packages first; the working
directory is never searched) or the named file is executed."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

import torch

from ..checkpoints import file_id, load_state, read_checkpoint, state_dict_of
from ..errors import ModelError
from ..loaded import LoadedModel, Preprocessing
from .base import ModelSource, is_file_spec


def _import_factory_module(spec: str, source: str):
    """The module of a factory spec: a Python file (`path/to/net.py`, run from that file) or a
    module importable from sys.path (installed packages, PYTHONPATH). The working directory is
    not searched: a `captum.py` lying there must not replace the installed captum."""
    is_file = is_file_spec(source)
    try:
        if is_file:
            return _import_file(Path(source), spec)
        return importlib.import_module(source)
    except ModelError:
        raise
    except ImportError as e:
        hint = ""
        if Path(f"{source.replace('.', os.sep)}.py").is_file():
            hint = (f"; the working directory is not searched: to run the file here, name it, e.g. "
                    f"--model ./{source.replace('.', '/')}.py:{spec.rpartition(':')[2]}")
        raise ModelError(f"cannot import {source!r} for model {spec!r}: {e}{hint}") from None
    except Exception as e:  # SyntaxError, NameError, ... raised by the user's module itself
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"importing {source!r} for model {spec!r} failed: {type(e).__name__}: {msg}") from None


def _import_file(path: Path, spec: str):
    """Run a Python file as a module named after it (prefixed, so it cannot stand in for an
    installed package). Its folder is searched after sys.path while it imports, for its own
    helper modules."""
    import importlib.util

    if path.suffix != ".py":
        raise ModelError(f"model file {str(path)!r} in {spec!r} should be a .py file")
    if not path.is_file():
        raise ModelError(f"model file not found: {str(path)!r} (from --model {spec!r})")
    path = path.resolve()
    name = f"cnnviz_user_model_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.append(folder)  # after the installed packages, never ahead of them
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _load_factory(spec: str, weights: str | None, weights_file, trust: bool) -> LoadedModel:
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ModelError(f"model {spec!r} should look like package.module:factory or path/to/file.py:factory")
    structure_only = weights is not None and weights.lower() == "none"
    if weights is not None and not structure_only:
        raise ModelError(f"--weights {weights!r} is for torchvision models; your model {spec!r} takes its weights "
                         "from --weights-file (or --weights none for random weights)")
    mod = _import_factory_module(spec, source)
    factory = mod
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            hint = ""
            if Path(f"{source.replace('.', os.sep)}.py").is_file() and not source.endswith(".py"):
                hint = (f" (it was imported from {getattr(mod, '__file__', None) or 'sys.path'}; the working "
                        f"directory is not searched: for the file here use --model ./{source.replace('.', '/')}.py:{attr})")
            raise ModelError(f"{source!r} has no attribute {attr!r}{hint}")
    if weights_file is None and not structure_only:
        raise ModelError(f"model {spec!r} needs its trained weights: pass --weights-file checkpoint.pt")
    if weights_file is None:
        model = _call_factory(factory, spec)
        return LoadedModel(model, spec, "random (no weights loaded)", Preprocessing(), [])
    ckpt = read_checkpoint(weights_file, trust)
    if isinstance(ckpt, torch.nn.Module) and trust:
        model = ckpt
    else:
        model = _call_factory(factory, spec)
        load_state(model, state_dict_of(ckpt, weights_file), str(weights_file))
    return LoadedModel(model, spec, file_id(Path(weights_file)), Preprocessing(), [])


def _call_factory(factory, spec: str) -> torch.nn.Module:
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"calling {spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


SOURCE = ModelSource("your factory", claims=lambda name: ":" in name, load=_load_factory)
