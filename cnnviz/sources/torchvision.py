"""torchvision classification models with a torchvision weights entry, loaded through torchvision's
weights API and the torch.hub cache (a cached file is read without touching the network)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from ..checkpoints import file_id, load_state, read_checkpoint, state_dict_of
from ..errors import ModelError, WeightsUnavailable
from ..loaded import LoadedModel, Preprocessing
from .base import ModelSource


def _torchvision_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, as torchvision's weights metadata gives
    them (`AlexNet_Weights.IMAGENET1K_V1.meta["categories"]`; tests/test_taxonomy.py checks that they
    still agree), read from imagenet_classes.txt beside this module, so that a model outside
    torchvision (EfficientNet-Lite, timm) gets its class names without importing
    torchvision.models, which takes about 2 s (it imports torch._dynamo)."""
    from pathlib import Path

    names = (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise ModelError(f"the installed cnnviz/sources/imagenet_classes.txt holds {len(names)} class names, not 1000; "
                         "reinstall cnnviz")
    return names


def torchvision_cache_path(weights) -> Path:
    """Where torchvision's weights API looks for (and downloads) this weights entry."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)



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
        load_state(model, state_dict_of(read_checkpoint(weights_file, trust), weights_file), str(weights_file))
        ident = file_id(Path(weights_file))
    elif entry is None:
        ident = "random (no weights loaded)"
    else:
        state = _fetch_torchvision_weights(name, entry)
        if name in ("googlenet", "inception_v3"):
            state = {k: v for k, v in state.items() if not k.startswith("aux")}
        load_state(model, state, str(torchvision_cache_path(entry)))
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
    """The entry's state dict, from the torch.hub cache or downloaded into it. A cached file is read
    without touching the network; otherwise the server (or the proxy) must answer within
    CONNECT_TIMEOUT before the download starts, so that a machine without network gets the one-line
    error at once. A failed download leaves no directory it created.

    Safety: the file is read with `weights_only=True` (torch.hub's own loader unpickles cached files
    in full, so a pickle placed in the cache would run code), and its SHA-256 must start with the
    prefix in its name, as torch.hub checks only when it downloads."""
    cache = torchvision_cache_path(entry)
    if not cache.exists():
        problem = unreachable(entry.url)
        if problem:
            raise WeightsUnavailable(f"cannot download weights {entry} for {name} ({problem}); place the file at "
                                     f"{str(cache)!r} or pass --weights-file PATH")
        _download(name, entry, cache)
    check_hash_prefix(cache)
    return _read_cached(cache)


def expected_hash_prefix(path: Path) -> str | None:
    """The SHA-256 prefix a torch.hub file name carries (`alexnet-owt-7be5be79.pth`: 7be5be79)."""
    from torch.hub import HASH_REGEX

    found = HASH_REGEX.search(path.name)
    return found.group(1) if found and found.group(1) else None


_VERIFIED: dict = {}  # (path, size, mtime) -> True: a file is hashed once per process


def check_hash_prefix(path: Path) -> None:
    """Refuse a cached weights file whose SHA-256 does not start with the prefix in its name."""
    prefix = expected_hash_prefix(path)
    if prefix is None:
        return
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(memo):
        return
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if not digest.startswith(prefix):
        raise ModelError(f"cached weights {str(path)!r} are not the file torchvision publishes (SHA-256 {digest[:12]}..., "
                         f"its name says {prefix}...); delete it to download again, or pass --weights-file "
                         f"{str(path)!r} to use it as your own checkpoint")
    _VERIFIED[memo] = True


def _read_cached(path: Path) -> dict:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"cached weights {str(path)!r} hold pickled Python objects, which cnnviz never unpickles "
                         "from the cache (that can run code); delete the file, or if you trust it pass --weights-file "
                         f"{str(path)!r} --trust-checkpoint") from None
    except Exception as e:  # truncated or corrupt files
        raise ModelError(f"cached weights {str(path)!r} are unreadable ({_short(e)}); delete the file and run again, "
                         "or pass --weights-file PATH") from None
    if not isinstance(state, dict):
        raise ModelError(f"cached weights {str(path)!r} hold no state dict; delete the file and run again")
    return state


def _download(name: str, entry, cache: Path) -> None:
    """Download the entry's file into `cache` through torch.hub (which checks the hash prefix)."""
    created = [d for d in (cache.parent, *cache.parent.parents) if not d.exists()]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr), _socket_timeout(DOWNLOAD_TIMEOUT):
            # torch.hub prints "Downloading ..." to stdout
            torch.hub.download_url_to_file(entry.url, str(cache), expected_hash_prefix(cache),
                                           progress=sys.stderr.isatty())
    except Exception as e:  # URLError, timeouts, hash mismatch (torch.hub then removes its temporary)
        for d in created:  # innermost first; only the empty directories made for the download
            with contextlib.suppress(OSError):
                d.rmdir()
        raise WeightsUnavailable(f"cannot download weights {entry} for {name} ({_short(e)}); place the file at "
                                 f"{str(cache)!r} or pass --weights-file PATH") from None


def unreachable(url: str) -> str | None:
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


def _listing() -> list[dict]:
    from torchvision.models import get_model_weights

    rows = []
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


SOURCE = ModelSource("torchvision", claims=lambda name: ":" not in name and name.lower() in _torchvision_models(),
                     load=lambda name, *rest: _load_torchvision(name.lower(), *rest), listing=_listing,
                     names=_torchvision_models)
