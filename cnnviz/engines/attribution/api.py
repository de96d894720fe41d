"""One function per attribution method (`cnnviz.gradcam(lm, images, ...)` is
`cnnviz.attribute(lm, images, "gradcam", ...)`), made from the method table of `methods`, and
`compare`: several methods on the same images, one `CompareResult` per image.

`__api__` names what `cnnviz` offers at its top level; it is read from this file's text without
importing it, so it must stay a literal (a test checks it equals the method table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...bare import takes_model
from . import methods as M
from .gradients import CAM, attribute

if TYPE_CHECKING:
    from ...results import CompareResult, GradientResult

__api__ = ("compare", "saliency", "guided", "deconv", "gradcam", "guided_gradcam", "ig", "gradcampp", "layercam",
           "scorecam", "rise", "lrp_epsilon", "lrp_zplus", "lrp_alphabeta", "lrp_alpha1beta0", "smoothgrad")

# drawn side by side by default: one method of each family; a map that cnnviz flags as
# uninformative for the model (the deconvnet without max pooling) is left out unless asked for
DEFAULT_COMPARE = ("saliency", "guided", "deconv", "gradcam", "ig")


def python_name(method: str) -> str:
    """The function name of a method: "lrp-epsilon" -> "lrp_epsilon"."""
    return method.replace("-", "_")


def _method_function(method: str):
    info = M.get(method)

    def run(lm, images, **options):
        return attribute(lm, images, method, **options)

    run.__name__ = run.__qualname__ = python_name(method)
    run.__module__ = __name__
    run.__annotations__ = {"return": "GradientResult"}
    run.__doc__ = (f"{info.label} maps of `lm` for `images`: `cnnviz.attribute(lm, images, {method!r}, **options)`; "
                   "see `cnnviz.attribute` for the options.")
    return run


for _method in M.names():
    globals()[python_name(_method)] = _method_function(_method)


@takes_model
def smoothgrad(lm, images, base: str = "saliency", **options) -> "GradientResult":
    """SmoothGrad (Smilkov et al. 2017) over `base` (default saliency): `cnnviz.attribute(lm, images,
    "smoothgrad", base=base, ...)`; `smooth` noisy copies (default 25)."""
    return attribute(lm, images, "smoothgrad", base=base, **options)


@takes_model
def compare(lm, images, methods=None, *, shared_scale: bool = False, target=None, layer=None,
            **options) -> "list[CompareResult]":
    """Several attribution maps of each image, for the same class: one `CompareResult` per image
    (draw it with `.render()`). `methods`: names (default: saliency, guided, deconv, gradcam, ig, less
    any map that cnnviz flags as uninformative for this model, named in params["left_out"]); a
    method named here is drawn even when flagged. `layer` is the CAM methods' layer."""
    from ...errors import ParameterError
    from ...results import CompareResult

    asked = methods is not None
    names = [M.canonical(m) for m in (DEFAULT_COMPARE if methods is None else
                                      ([methods] if isinstance(methods, str) else methods))]
    known = M.names()
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise ParameterError(f"methods {bad or names!r} not known; choose from {', '.join(known)}")
    if len(set(names)) < len(names):
        raise ParameterError(f"methods {names!r} name a method twice; give each once")
    results = [attribute(lm, images, m, target=target, layer=layer if m in CAM else None,
                         **{k: v for k, v in options.items() if not (m == "ig" and k == "batch_size")})
               for m in names]  # ig batches its scaled copies itself
    left_out = {}
    if not asked:
        left_out = {r.params["method"]: r.params["uninformative_reason"] for r in results
                    if r.params.get("uninformative")}
        results = [r for r in results if not r.params.get("uninformative")]
    for r in results:
        r.params["class_names"] = {str(int(t)): lm.class_name(int(t)) for t in r.top1}
    out = []
    for i in range(len(results[0].map)):
        c = CompareResult.of(results, i, shared_scale=shared_scale)
        if left_out:
            c.params["left_out"] = left_out
        out.append(c)
    return out
