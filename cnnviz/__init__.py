"""cnnviz: see what a convolutional network reacts to."""

from ._version import __version__

from .errors import CnnvizError
from .images import load_image
from .layers import capture, resolve_layer, trace_layers
from .models import DEFAULT_MODEL, LoadedModel, Preprocessing, available_models, load_model
from .results import OcclusionResult, Result, load_result


def render(result, path=None, **options):
    """Draw a result's figure (and write it to `path`, .png/.pdf/.svg, when given)."""
    from .render import render as _render

    return _render(result, path, **options)


# The engines, imported when first used (`cnnviz.occlusion(...)`): name -> module (the name itself
# when it is a module); `import cnnviz` and the result types stay free of engine imports
_LAZY = {"featvis": ".engines.featvis", "occlusion": ".engines.occlusion", "wrap": ".wrap", "attribute": ".engines.gradients", "sanity": ".engines.sanity", "scan": ".engines.topk",
         "unit_patches": ".engines.patches", "receptive_field": ".engines.receptive_field",
         "effective_receptive_field": ".engines.effective_rf",
         "empirical_receptive_field": ".engines.empirical_rf", "first_layer_filters": ".engines.filters",
         "feature_maps": ".engines.filters",
         "audit": ".engines.audit"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = module if module.__name__.endswith("." + name) and not hasattr(module, name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [*_LAZY, "__version__", "CnnvizError", "load_image", "capture", "resolve_layer", "trace_layers",
           "DEFAULT_MODEL", "LoadedModel", "Preprocessing", "available_models", "load_model", "OcclusionResult",
           "Result", "load_result", "render"]
