"""Where analyses are found. Nothing here lists them: each declares itself where it is defined.

An analysis is three pieces, each in its own module:

- its result type, a `cnnviz.results.Result` dataclass with a `kind` and a `renderer` (a function
  or "module:function", resolved when a figure is first drawn) and, when it can be drawn on the
  original photo, `full_image = True`. Defining the class registers the kind;
- its engine, the function computing that result (in `cnnviz.engines`, usually beside the result);
- its command, a module of the `cnnviz_cli` package with a `register(cli)` function; the CLI
  registers every such module (and every plug-in that has one) when it starts.

So adding an engine touches the engine's own files (engine and result, renderer, command), its
tests and the README. `load_result` meets a kind it does not know yet by importing the engine
modules (and the plug-ins) once, which registers their result types.

Plug-ins. A package outside cnnviz adds an analysis through the entry point group
`cnnviz.analyses`: the entry point names one module that defines the result type (with its
renderer) and, optionally, `register(cli)` for its commands. It is imported when the CLI starts and
when a saved result of an unknown kind is loaded; one that fails to import gives a one-line warning
and is skipped.

    [project.entry-points."cnnviz.analyses"]
    toy = "toy_engine"
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

ENTRY_POINT_GROUP = "cnnviz.analyses"

# every Result type, by kind: filled when a Result subclass is defined (cnnviz.results.Result)
_REGISTRY: dict = {}
_plugins: list[ModuleType] | None = None
_engines_imported = False


def resolve(ref):
    """A callable given as itself or as "package.module:name"."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or ":" not in ref:
        raise TypeError(f"expected a function or 'module:name', got {ref!r}")
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def plugins() -> list[ModuleType]:
    """The plug-in modules named by the `cnnviz.analyses` entry points, imported once."""
    global _plugins
    if _plugins is None:
        from .plugins import load_entry_points

        _plugins = [obj if isinstance(obj, ModuleType) else importlib.import_module(ep.module)
                    for ep, obj in load_entry_points(ENTRY_POINT_GROUP, "analysis plug-in")]
    return _plugins


def _import_engines() -> None:
    """Import every module of `cnnviz.engines` (each result type registers its kind on import)."""
    global _engines_imported
    if _engines_imported:
        return
    from . import engines

    for info in pkgutil.walk_packages(engines.__path__, engines.__name__ + "."):
        importlib.import_module(info.name)
    _engines_imported = True


def _declaring_module(kind: str) -> str | None:
    """The engine module whose text declares the result kind (`kind: ClassVar[str] = "KIND"`),
    found without importing any engine; None when no engine file does."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent
    pattern = re.compile(r'^    kind: ClassVar\[str\] = "' + re.escape(kind) + '"', re.M)
    for path in sorted((root / "engines").rglob("*.py")):
        if pattern.search(path.read_text(encoding="utf-8")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


def result_type(kind: str):
    """The Result class of `kind`: the module that declares it is imported when the kind is not yet
    known (only that one: a redraw needs no other engine), else every engine and the plug-ins; None
    when nothing declares it."""
    if kind not in _REGISTRY:
        module = _declaring_module(kind) if isinstance(kind, str) else None
        if module is not None:
            importlib.import_module(module)
    if kind not in _REGISTRY:
        _import_engines()
        plugins()
    return _REGISTRY.get(kind)


def kinds() -> list[str]:
    """Every result kind declared by cnnviz and its plug-ins."""
    _import_engines()
    plugins()
    return sorted(k for k in _REGISTRY if k != "result")


def renderer(result_cls):
    """The drawing function of a result type (None when it declares none)."""
    ref = getattr(result_cls, "renderer", None)
    return None if ref is None else resolve(ref)
