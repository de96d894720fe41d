"""timm architectures: `timm:convnext_tiny`, `timm:resnet50.a1_in1k` (a pretrained tag after the dot).

The preprocessing is the architecture's own, from its pretrained config: input size, mean and
std, interpolation, and the centre crop of `crop_pct` of the resized image (resize = floor(size /
crop_pct), as timm's evaluation transform). Weights come from the user's file (`--weights-file`),
from the Hugging Face cache where timm keeps them (read without touching the network; otherwise
downloaded, after a short check that the hub answers), or are random (`--weights none`).
"""

from __future__ import annotations

import difflib
import math
import warnings
from pathlib import Path

from ..checkpoints import file_id, load_state, read_checkpoint, state_dict_of
from ..errors import ModelError, WeightsUnavailable
from ..loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Preprocessing
from .base import ModelSource

PREFIX = "timm:"
HUB_URL = "https://huggingface.co/"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install timm") from None
    return timm


def _architecture(spec: str) -> tuple[str, str | None]:
    """'timm:convnext_tiny.fb_in1k' -> ('convnext_tiny', 'fb_in1k'), checked against timm's list."""
    timm = _timm()
    name = spec[len(PREFIX):].strip()
    arch, _, tag = name.partition(".")
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ModelError(f"timm has no architecture {arch!r}{hint} (`python -c \"import timm; "
                         f"print(timm.list_models('*{arch[:6]}*'))\"` lists them)")
    return arch, tag or None


def _tag(arch: str, tag: str | None, weights: str | None) -> str | None:
    """The pretrained tag asked for: from the name, from --weights (TAG or ARCH.TAG), or timm's
    default for the architecture (None: timm chooses)."""
    if weights is not None and weights.strip().upper() != "DEFAULT":
        w = weights.strip()
        given = w.partition(".")[2] if w.startswith(f"{arch}.") else w
        if tag is not None and given != tag:
            raise ModelError(f"--weights {weights!r} contradicts the tag in timm:{arch}.{tag}; give one of them")
        tag = given
    if tag is not None:
        known = [t.partition(".")[2] for t in _timm().list_pretrained(f"{arch}.*")]
        if tag not in known:
            raise ModelError(f"timm has no pretrained weights {arch}.{tag}; choose one of: "
                             f"{', '.join(known) or '(none)'}, or --weights none / --weights-file PATH")
    return tag


def _cached_file(cfg) -> str | None:
    """The weights file of a pretrained config in the Hugging Face cache, or None."""
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo.partition("@")
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else list(WEIGHT_FILES)
    for filename in names:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _preprocessing(cfg) -> Preprocessing:
    return preprocessing_from_cfg(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))


def preprocessing_from_cfg(cfg: dict) -> Preprocessing:
    """timm's evaluation transform from a pretrained config (the dict a timm model carries as
    `model.pretrained_cfg`): input size, mean, std, interpolation and the centre crop of `crop_pct`
    of the resized image (resize = floor(size / crop_pct))."""
    _, h, w = cfg.get("input_size") or (3, 224, 224)
    crop_pct = cfg.get("crop_pct") or 0.875
    if (cfg.get("crop_mode") or "center") != "center":
        warnings.warn(f"{cfg.get('architecture')}: timm's crop mode {cfg.get('crop_mode')!r} is done here as a "
                      "centre crop", stacklevel=3)
    interpolation = cfg.get("interpolation")
    interpolation = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    return Preprocessing(crop=(h, w), resize=math.floor(min(h, w) / crop_pct),
                         mean=tuple(cfg.get("mean") or IMAGENET_MEAN), std=tuple(cfg.get("std") or IMAGENET_STD),
                         interpolation=interpolation)


def _categories(num_classes: int) -> list[str]:
    if num_classes == 1000:
        from .torchvision import imagenet_categories

        return imagenet_categories()
    return []


def load(spec: str, weights: str | None, weights_file, trust: bool) -> LoadedModel:
    timm = _timm()
    arch, tag = _architecture(spec)
    random = weights is not None and weights.strip().lower() == "none"
    tag = None if random else _tag(arch, tag, weights)
    full = f"{arch}.{tag}" if tag else arch
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None:
        raise ModelError(f"timm has no pretrained config for {full!r}; use --weights none or --weights-file PATH")
    if random or weights_file is not None:
        model = timm.create_model(full, pretrained=False)
        if weights_file is not None:
            load_state(model, state_dict_of(read_checkpoint(weights_file, trust), weights_file), str(weights_file))
            ident = file_id(Path(weights_file))
        else:
            ident = "random (no weights loaded)"
    else:
        model, ident = _pretrained(timm, full, cfg)
    model.eval()
    return LoadedModel(model, f"timm:{full}", ident, _preprocessing(cfg),
                       _categories(getattr(model, "num_classes", 0)))


def _pretrained(timm, full: str, cfg):
    """The model with its pretrained weights: from the cache when they are there, else downloaded
    once the hub has answered within the connect timeout (no network: a one-line error at once)."""
    from .torchvision import unreachable

    label = f"{cfg.architecture}.{cfg.tag}"
    path = _cached_file(cfg)
    if path is None:
        problem = unreachable(HUB_URL)
        if problem:
            where = f"the Hugging Face cache (repo {cfg.hf_hub_id})" if cfg.hf_hub_id else "timm's cache"
            raise WeightsUnavailable(f"cannot download timm weights {label} ({problem}); place them in {where}, "
                                     "or pass --weights-file PATH, or --weights none for random weights")
        try:
            return timm.create_model(full, pretrained=True), f"timm {label}"
        except Exception as e:
            raise WeightsUnavailable(f"cannot download timm weights {label} ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else ''}); pass --weights-file PATH") from None
    try:
        model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay={"file": path})
    except Exception as e:
        raise ModelError(f"cached timm weights {path!r} are unreadable ({type(e).__name__}); delete the file and "
                         "run again, or pass --weights-file PATH") from None
    return model, f"timm {label} ({Path(path).name} from the Hugging Face cache)"


def _listing() -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return [{"name": "timm:ARCH", "source": "timm", "weights": "not installed: pip install timm",
                 "available": False, "default": False}]
    return [{"name": "timm:ARCH[.TAG]", "source": "timm", "weights": "Hugging Face cache, your file, or none "
             "(python -c \"import timm; print(timm.list_models())\" lists ARCH)", "available": True, "default": False}]


SOURCE = ModelSource("timm", claims=lambda name: name.startswith(PREFIX), load=load, listing=_listing)
