"""cnnviz: see what a convolutional network reacts to.

The top-level functions (`cnnviz.occlusion`, `cnnviz.gradcam`, `cnnviz.audit`, ...) are the ones the
engines declare: each engine module names its public functions in a literal `__api__ = (...)`.
They are found by reading those lines from the files (no engine is imported by `import cnnviz`)
and imported on first use; a new engine appears here by declaring its `__api__`.
"""

from ._version import __version__
from .errors import CnnvizError
from .results import OcclusionResult, Result, load_result
from . import _moved

_moved.install()

# the core names that need torch, imported on first use: `import cnnviz` (and `cnnviz render`, which
# redraws a saved result) import neither torch nor any engine
_LAZY_CORE = {"load_image": "images", "capture": "layers", "resolve_layer": "layers", "trace_layers": "layers",
              "DEFAULT_MODEL": "loaded", "LoadedModel": "loaded", "Preprocessing": "loaded",
              "available_models": "models", "load_model": "models"}
_CORE = ["__version__", "CnnvizError", *_LAZY_CORE, "OcclusionResult", "Result", "load_result", "render"]
_api_index: dict[str, str] | None = None


def _api() -> dict[str, str]:
    """name -> module, from the `__api__` literals of the engine modules (and cnnviz.bare: wrap)."""
    global _api_index
    if _api_index is None:
        import ast
        import re
        from pathlib import Path

        root = Path(__file__).resolve().parent
        found: dict[str, str] = {}
        pattern = re.compile(r"^__api__ = (\(.*?\))", re.M | re.S)
        for path in sorted([root / "bare.py", *(root / "engines").rglob("*.py")]):
            m = pattern.search(path.read_text(encoding="utf-8"))
            if m is None:
                continue
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for name in ast.literal_eval(m.group(1)):
                if name in found and found[name] != module:
                    raise ImportError(f"cnnviz.{name} is declared by both {found[name]} and {module}")
                found[name] = module
        _api_index = found
    return _api_index


def render(result, path=None, **options):
    """Draw a result's figure (and write it to `path`, .png/.pdf/.svg, when given)."""
    from .render import render as _render

    return _render(result, path, **options)


def __getattr__(name: str):
    if name == "__all__":
        return sorted({*_CORE, *_api()})
    if name in _LAZY_CORE:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY_CORE[name]}", __name__), name)
        globals()[name] = value
        return value
    module_name = _api().get(name) if not name.startswith("__") else None
    if module_name is not None:
        import importlib

        module = importlib.import_module(module_name)
        # a package that declares its own name is itself the API (cnnviz.featvis)
        value = module if module_name.endswith("." + name) and not hasattr(module, name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_CORE) | set(_api()))
