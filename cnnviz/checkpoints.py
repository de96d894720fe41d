"""Checkpoint files: read safely, find the state dict inside, check that it fits the model."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import torch

from .errors import ModelError


def file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{path.name} (sha256 {h.hexdigest()[:16]})"


def read_checkpoint(path: str | os.PathLike, trust: bool = False):
    """Load a checkpoint on the CPU. Safe loading (weights_only) unless `trust`."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {str(p)!r}")
    try:
        with warnings.catch_warnings():
            # torch warns (two lines on stderr) about pickle protocols of files it then refuses; the
            # refusal below says what matters in one line
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not trust:
            raise ModelError(f"{str(p)!r} holds pickled Python objects, which safe loading refuses; if you "
                             "trust its source, pass --trust-checkpoint (unpickling can run arbitrary code)") from None
        raise ModelError(f"cannot unpickle {str(p)!r}: {e}") from None
    except Exception as e:  # zip errors, truncated files, not a torch file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot read checkpoint {str(p)!r}: {msg}") from None


def state_dict_of(obj, path) -> dict:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            prefix = "module."  # saved from DataParallel / DDP
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
            return obj
    raise ModelError(f"{str(path)!r} does not contain a state dict (a mapping of parameter names to tensors)")


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise ModelError(f"checkpoint {source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)
