"""cnnviz: see what a convolutional network reacts to."""

__version__ = "0.1.0"

from .engines import featvis
from .engines.occlusion import occlusion
from .errors import CnnvizError
from .images import load_image
from .layers import capture, resolve_layer, trace_layers
from .models import DEFAULT_MODEL, LoadedModel, Preprocessing, available_models, load_model
from .results import OcclusionResult, Result, load_result


def render(result, path=None, **options):
    """Draw a result's figure (and write it to `path`, .png/.pdf/.svg, when given)."""
    from .render import render as _render

    return _render(result, path, **options)


__all__ = ["__version__", "featvis", "occlusion", "CnnvizError", "load_image", "capture", "resolve_layer", "trace_layers",
           "DEFAULT_MODEL", "LoadedModel", "Preprocessing", "available_models", "load_model", "OcclusionResult",
           "Result", "load_result", "render"]
