"""Result types and their storage: arrays in an .npz, everything else (parameters, model and
weights identity, versions) in a JSON sidecar of the same name. Results render themselves and show
inline in Jupyter."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import schema as S
from .errors import ResultError
from .files import check_result_output, sidecar_of, write_together

from .analyses import _REGISTRY


def _torchvision_version() -> str:
    """The installed distribution's version (e.g. 0.29.1; torch's build tag is in torch_version),
    read without importing torchvision, which takes about 2 s (it imports torch._dynamo)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        import torchvision

        return torchvision.__version__


def provenance(identity: dict, device: str) -> dict:
    import torch

    from ._version import __version__

    return {**identity, "device": device, "cnnviz_version": __version__, "torch_version": torch.__version__,
            "torchvision_version": _torchvision_version(), "python_version": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


@dataclasses.dataclass
class Result:
    """Base of all results: NumPy array fields go to the npz, `params` and `provenance` to JSON."""

    kind: ClassVar[str] = "result"
    # How its figure is drawn: figure(result, *, width, layout, **options) -> matplotlib Figure, given
    # as the function or as "module:function" (imported when first drawn); None: no figure.
    renderer: ClassVar = None
    full_image: ClassVar[bool] = False  # the renderer can draw on the whole original photo
    # What a saved result of this kind must hold to be drawn (see cnnviz.schema).
    param_schema: ClassVar[dict] = {}
    array_schema: ClassVar[dict] = {}
    params: dict
    provenance: dict
    # uint8 N x H x W x 3: a downscaled copy of each photo (longest side <= 512, zero-padded to the
    # largest; params["geometry"][i]["thumbnail_size"] says how much is photo), when computed from a
    # file or PIL image. Absent otherwise and in results saved before it existed.
    original: np.ndarray = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[cls.kind] = cls
        # Keep the short repr: @dataclass on the subclass adds one only where the class defines none.
        cls.__repr__ = Result.__repr__

    def __repr__(self) -> str:
        """One line: what was computed and the arrays' shapes, not their contents (the dataclass repr
        printed every array, tens of thousands of characters)."""
        p = self.params or {}
        shown = self._key_params()
        arrays = ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'} {v.dtype}" for k, v in self.arrays().items())
        return f"<{type(self).__name__} {shown}; arrays: {arrays}; {len(p)} params>"

    def _key_params(self) -> str:
        p = self.params or {}
        return ", ".join(f"{k}={p[k]!r}" for k in ("model", "method", "layer", "channel", "target_name", "window",
                                                  "stride") if p.get(k) is not None)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.npz) and its sidecar `path` with .json, together: both land or neither.
        Returns the npz path."""
        return write_together(self.writers(path))[0]

    def writers(self, path: str | os.PathLike) -> dict:
        """{file: function writing it} for the npz and its sidecar, for `files.write_together`."""
        p = check_result_output(path)
        meta = {"kind": self.kind, "params": self.params, "provenance": self.provenance,
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.arrays().items()}}
        text = json.dumps(_jsonable(meta), indent=2) + "\n"

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **self.arrays())

        return {p: write_npz, sidecar_of(p): lambda tmp: tmp.write_text(text, encoding="utf-8")}

    # ---------------------------------------------------------------------------------------------
    # the way back to the photo (see cnnviz.geometry for the pixel convention)

    def geometry(self, index: int = 0):
        """The `CropGeometry` of image `index`: where the model's crop lies in the original photo."""
        from .geometry import CropGeometry

        geos = self.params.get("geometry")
        if not geos:
            raise ResultError(f"this {self.kind} result predates crop geometry (it stores no crop offset or scale); "
                              "compute it again to map it to the original photo")
        if not -len(geos) <= index < len(geos):
            raise ResultError(f"image index {index} is out of range: the result holds {len(geos)} image(s)")
        d = geos[index]
        try:
            geo = CropGeometry.from_dict(d)
            ok = all(len(v) == 2 and min(v) > 0 for v in (geo.original_size, geo.resized_size, geo.crop_size))
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ResultError(f"params.geometry[{index}] is not a crop geometry ({str(d)[:60]}); compute the result "
                              "again")
        size = d.get("thumbnail_size")
        if self.original is None or not size:
            return geo
        o = self.original
        if (o.dtype != np.uint8 or o.ndim != 4 or o.shape[0] != len(geos) or o.shape[3] != 3
                or not (0 < size[0] <= o.shape[1] and 0 < size[1] <= o.shape[2])):
            raise ResultError(f"array 'original' ({o.dtype} {'x'.join(map(str, o.shape))}) does not hold the "
                              f"{len(geos)} photo copies params.geometry describes; compute the result again")
        return dataclasses.replace(geo, thumbnail=o[index % len(geos), : size[0], : size[1]])

    def to_original(self, coords=None, *, map=None, index: int = 0, outside: float = np.nan, shape=None):
        """Crop coordinates of image `index` to original-photo coordinates.

        coords: an array ending in (x, y) for points or (x0, y0, x1, y1) for boxes, in continuous
          crop coordinates with pixel corners at integers (pixel (r, c) covers [c, c+1) x [r, r+1),
          its centre is (c + 0.5, r + 0.5)).
        map: instead, a crop-sized map (... x H x W): returns it resampled onto the photo
          (bilinear), with `outside` (default NaN: not analysed) where the photo lies outside the
          crop; `shape` picks a coarser output grid over the same photo.
        """
        geo = self.geometry(index)
        if (coords is None) == (map is None):
            from .errors import ParameterError

            raise ParameterError("to_original takes either coordinates or map=, not both or neither")
        if map is not None:
            return geo.map_to_original(map, outside=outside, shape=shape)
        return geo.to_original(coords)

    def to_crop(self, coords, *, index: int = 0):
        """Original-photo coordinates (points (x, y) or boxes (x0, y0, x1, y1)) of image `index` to
        the model's crop coordinates; the inverse of `to_original`."""
        return self.geometry(index).to_crop(coords)

    def render(self, path: str | os.PathLike | None = None, **options):
        """Draw the figure; write it to `path` (.png, .pdf or .svg) when given. Returns the Figure.
        `width` (inches, default 7: a page's text width) and `layout` ("row" or "grid") lay it out
        for the width it is printed at, text at least 7 pt; other options go to the renderer."""
        from .render import render

        return render(self, path, **options)

    def _repr_png_(self) -> bytes:
        import io

        import matplotlib.pyplot as plt

        fig = self.render()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    def _repr_html_(self) -> str:
        """What was computed, as a collapsed HTML summary: model and weights, every parameter, the
        arrays' shapes and the provenance (the figure itself is the PNG shown above it)."""
        from html import escape

        def rows(items) -> str:
            return "".join(f"<tr><td style='text-align:left'><code>{escape(str(k))}</code></td>"
                           f"<td style='text-align:left'>{escape(_short(v))}</td></tr>" for k, v in items)

        prov = self.provenance or {}
        head = f"{type(self).__name__} of {prov.get('model', '?')} ({prov.get('weights', '?')}): {self._key_params()}"
        arrays = [(k, f"{'x'.join(map(str, v.shape)) or 'scalar'} {v.dtype}") for k, v in self.arrays().items()]
        table = "<table>{}</table>"
        return (f"<details><summary>{escape(head)}</summary>"
                f"<b>parameters</b>{table.format(rows(sorted((self.params or {}).items())))}"
                f"<b>arrays</b>{table.format(rows(arrays))}"
                f"<b>provenance</b>{table.format(rows(sorted(prov.items())))}</details>")

    def _ipython_display_(self):
        """In Jupyter: the figure, then the summary beneath it (one HTML output would be chosen over
        the PNG by the notebook, hiding the figure; this shows both, each stored once)."""
        from IPython.display import publish_display_data

        text = repr(self)
        publish_display_data({"image/png": self._repr_png_(), "text/plain": text})
        publish_display_data({"text/html": self._repr_html_(), "text/plain": text})


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_result(path: str | os.PathLike) -> Result:
    """Read a result saved by `Result.save` (the .npz and its .json sidecar)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        p = p.with_suffix(".npz")
    sidecar = p.with_suffix(".json")
    if not p.is_file():
        raise ResultError(f"result file not found: {str(p)!r}")
    if not sidecar.is_file():
        raise ResultError(f"{str(p)!r} has no sidecar {sidecar.name!r}; both files written by --save are needed")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ResultError(f"{str(sidecar)!r} is not a cnnviz result sidecar ({e})") from None
    S.check_meta(meta, repr(str(sidecar)))
    kind = meta["kind"]
    from .analyses import result_type

    cls = result_type(kind)
    if cls is None:
        raise ResultError(f"{str(p)!r} holds a {kind!r} result, which this cnnviz version does not know")
    S.check_params(meta["params"], cls.param_schema, repr(str(sidecar)), kind)
    if not zipfile.is_zipfile(p):
        raise ResultError(f"{str(p)!r} is not an npz archive (truncated or corrupt); save the result again with --save")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:
        raise ResultError(f"cannot read {str(p)!r}: {e}") from None
    names = {f.name for f in dataclasses.fields(cls)}
    missing = names - set(arrays) - {"params", "provenance", "original"} - set(getattr(cls, "optional_arrays", ()))
    if missing:
        raise ResultError(f"{str(p)!r} lacks arrays {sorted(missing)} for a {kind} result")
    S.check_arrays(arrays, cls.array_schema, repr(str(p)), kind)
    return cls(params=meta["params"], provenance=meta.get("provenance", {}),
               **{k: v for k, v in arrays.items() if k in names})


def save_outputs(result: Result | None = None, result_path=None, figure=None, figure_path=None) -> list[Path]:
    """Write a figure and a result (npz + sidecar) as one: all of them land, or none does."""
    writers = {}
    if figure is not None and figure_path is not None:
        from .render.style import write_figure

        suffix = Path(figure_path).suffix
        writers[Path(figure_path)] = lambda tmp: write_figure(figure, tmp, suffix)
    if result is not None and result_path is not None:
        writers.update(result.writers(result_path))
    return write_together(writers)


def _jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclasses.dataclass
class OcclusionResult(Result):
    """Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7). Maps are indexed by occluder position:
    entry (i, j) is the occluder with top-left corner (positions_y[i], positions_x[j]) in `image`.

    image: uint8 HxWx3, the model's input crop.
    true_class_prob: float32 Hp x Wp, probability of the target class.
    top_class: int32 Hp x Wp, most probable class; top_class_prob its probability.
    feature_activation: float32 Hp x Wp, total activation of the chosen feature map.
    feature_map: float32 h x w, that feature map for the unoccluded image.
    class_indices / class_names: the classes that appear in `top_class`, and the target.
    """

    kind: ClassVar[str] = "occlusion"
    renderer: ClassVar = "cnnviz.render.occlusion:figure"
    full_image: ClassVar[bool] = True
    param_schema: ClassVar[dict] = {
        "window": S.PAIR, "stride": S.PAIR, "target": S.INT, "target_name": S.TEXT, "layer": S.TEXT,
        "channel": S.INT, "baseline_prob": S.NUMBER, "baseline_activation": S.NUMBER,
        "fill_normalized": S.FLOATS(3)}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", ("H", "W", 3)), "true_class_prob": S.Arr("f", ("Py", "Px")),
        "top_class": S.Arr("iu", ("Py", "Px")), "top_class_prob": S.Arr("f", ("Py", "Px")),
        "feature_activation": S.Arr("f", ("Py", "Px")), "feature_map": S.Arr("f", (None, None)),
        "positions_y": S.Arr("iu", ("Py",)), "positions_x": S.Arr("iu", ("Px",)),
        "class_indices": S.Arr("iu", ("C",)), "class_names": S.Arr("U", ("C",))}
    image: np.ndarray = None
    true_class_prob: np.ndarray = None
    top_class: np.ndarray = None
    top_class_prob: np.ndarray = None
    feature_activation: np.ndarray = None
    feature_map: np.ndarray = None
    positions_y: np.ndarray = None
    positions_x: np.ndarray = None
    class_indices: np.ndarray = None
    class_names: np.ndarray = None

    def occluder_boxes(self, original: bool = False) -> np.ndarray:
        """Hp x Wp x 4: the occluder box (x0, y0, x1, y1) of each map cell, in crop pixels (pixel
        corners), or with `original` in the original photo's coordinates."""
        wy, wx = self.params["window"]
        y, x = np.meshgrid(self.positions_y.astype(np.float64), self.positions_x.astype(np.float64), indexing="ij")
        boxes = np.stack([x, y, x + wx, y + wy], axis=-1)
        return self.to_original(boxes) if original else boxes

    @property
    def prob_drop(self) -> np.ndarray:
        """Unoccluded probability minus occluded probability, per position (positive: evidence)."""
        return self.params["baseline_prob"] - self.true_class_prob

    def class_name(self, index: int) -> str:
        hits = np.flatnonzero(self.class_indices == index)
        return str(self.class_names[hits[0]]) if hits.size else f"class {index}"


@dataclasses.dataclass
class GradientResult(Result):
    """Backprop attributions for N images (saliency, guided, deconv, Grad-CAM, IG...).

    image: uint8 N x H x W x 3, the model's input crops.
    attribution: float32 N x C x H x W, the signal at the input (C = 3), or the upsampled Grad-CAM
      map (C = 1).
    map: float32 N x H x W, what the figure shows: max |signal| over colour channels (Simonyan),
      the signed channel sum for Integrated Gradients, the Grad-CAM heat map. With SmoothGrad,
      params["smooth_mode"] says how copies were averaged ("mean": signed signals, "mean-abs":
      |signal| per channel).
    A deconvnet result has params["uninformative"] (bool), ["uninformative_reason"] (str or
    None), ["gray_image_r"] (per image, Pearson r of its map with a uniform gray image's map sent
    back from the same signal), ["max_pool_switches"] (max-pool calls on the path) and
    ["gray_image_check"]: "graph" (every backward step on the path is a fixed linear map, read off
    the pass's graph: the gray image's map is this map, r = 1 without a second pass) or "measured".
    targets: int32 N, the class followed per image (-1 for a unit target); target_names its name.
    top1: int32 N, each image's top-1 class.
    """

    kind: ClassVar[str] = "gradients"
    renderer: ClassVar = "cnnviz.render.attribution.gradients:figure"
    full_image: ClassVar[bool] = True
    param_schema: ClassVar[dict] = {"method": S.TEXT}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", ("N", "H", "W", 3)), "attribution": S.Arr("f", ("N", None, "H", "W")),
        "map": S.Arr("f", ("N", "H", "W")), "targets": S.Arr("iu", ("N",)), "target_names": S.Arr("U", ("N",)),
        "top1": S.Arr("iu", ("N",))}
    image: np.ndarray = None
    attribution: np.ndarray = None
    map: np.ndarray = None
    targets: np.ndarray = None
    target_names: np.ndarray = None
    top1: np.ndarray = None


@dataclasses.dataclass
class CompareResult(Result):
    """Several attribution methods for one image, as `cnnviz compare` draws them side by side.

    image: uint8 1 x H x W x 3. maps: float32 M x H x W, one per method (`methods`, str M), each
    method's params in params["method_params"]. targets, target_names, top1: as in GradientResult.
    """

    kind: ClassVar[str] = "compare"
    renderer: ClassVar = "cnnviz.render.attribution.compare:figure"
    param_schema: ClassVar[dict] = {"method_params": S.Check(
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, dict) and "method" in x for x in v),
        "a list of each method's params")}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", (1, "H", "W", 3)), "maps": S.Arr("f", ("M", "H", "W")), "methods": S.Arr("U", ("M",)),
        "targets": S.Arr("iu", (1,)), "target_names": S.Arr("U", (1,)), "top1": S.Arr("iu", (1,))}
    image: np.ndarray = None
    maps: np.ndarray = None
    methods: np.ndarray = None
    targets: np.ndarray = None
    target_names: np.ndarray = None
    top1: np.ndarray = None

    @classmethod
    def of(cls, results: list, index: int = 0, shared_scale: bool = False) -> "CompareResult":
        """Image `index` of each GradientResult in `results` (one per method, same image)."""
        i = slice(index, index + 1)
        r0 = results[0]
        per = [{k: (v[i] if k in ("geometry", "gray_image_r", "image_files") and isinstance(v, list) else v)
                for k, v in r.params.items()} for r in results]
        return cls(params={"method_params": per, "shared_scale": bool(shared_scale)}, provenance=r0.provenance,
                   original=None if r0.original is None else r0.original[i], image=r0.image[i],
                   maps=np.stack([r.map[index] for r in results]).astype(np.float32),
                   methods=np.array([r.params["method"] for r in results], dtype=str),
                   targets=r0.targets[i], target_names=r0.target_names[i], top1=r0.top1[i])

    def parts(self) -> list:
        """One GradientResult per method (the map only: attribution is the map), for drawing."""
        return [GradientResult(params=p, provenance=self.provenance, image=self.image, map=self.maps[j:j + 1],
                               attribution=self.maps[j:j + 1, None], targets=self.targets,
                               target_names=self.target_names, top1=self.top1)
                for j, p in enumerate(self.params["method_params"])]


@dataclasses.dataclass
class SanityResult(Result):
    """Model-randomization sanity check (Adebayo et al. 2018) for one image and several methods.

    image: uint8 H x W x 3.
    steps: str S, "original" then the layers randomized cumulatively from the top.
    methods: str M.
    spearman: float32 M x S, rank correlation of each step's map with the original map.
    maps: float32 M x S x H x W, the maps themselves.
    Class randomization (original model): class_targets int64 K, the other classes (the runner-up,
    then random ones); class_names str K; class_spearman / class_pearson float32 M x K, each
    method's top-1 map against its map for each other class (near 1: the map ignores the class);
    class_maps float32 M x K x H x W.
    """

    kind: ClassVar[str] = "sanity"
    renderer: ClassVar = "cnnviz.render.attribution.sanity:figure"
    param_schema: ClassVar[dict] = {"target_name": S.optional(S.TEXT), "layer": S.optional(S.TEXT)}
    array_schema: ClassVar[dict] = {
        "image": S.Arr("u", ("H", "W", 3)), "steps": S.Arr("U", ("S",)), "methods": S.Arr("U", ("M",)),
        "spearman": S.Arr("f", ("M", "S")), "maps": S.Arr("f", ("M", "S", "H", "W"))}
    image: np.ndarray = None
    steps: np.ndarray = None
    methods: np.ndarray = None
    spearman: np.ndarray = None
    maps: np.ndarray = None
    class_targets: np.ndarray = None
    class_names: np.ndarray = None
    class_spearman: np.ndarray = None
    class_pearson: np.ndarray = None
    class_maps: np.ndarray = None


@dataclasses.dataclass
class FeatvisResult(Result):
    """Images optimized by feature visualization, DeepDream or inversion (`cnnviz.engines.featvis`).

    params["mode"]: "units" (one image per unit of params["layer"]), "class" (class models),
      "dream" (one image, from `start`), "invert" (one reconstruction of `start` per layer in
      params["layers"]) or "custom".
    images: uint8 B x H x W x 3. labels: str B, what each image is for.
    objective: float32 B, the objective of each final image, untransformed.
    score: float32 B, what the figure prints under each image (params["score_label"]: the mean
      activation, the class probability, the relative feature distance...).
    history: float32 S x B, the objective at the logged steps `history_steps` (int32 S; step 0 is
      the starting image), as seen through that step's random transforms.
    start: uint8 image the optimization started from or reconstructs (0 x 0 x 3 when none).
    """

    kind: ClassVar[str] = "featvis"
    renderer: ClassVar = "cnnviz.render.featvis:figure"
    param_schema: ClassVar[dict] = {"mode": S.TEXT, "score_label": S.optional(S.TEXT)}
    array_schema: ClassVar[dict] = {
        "images": S.Arr("u", ("B", None, None, 3)), "labels": S.Arr("U", ("B",)), "objective": S.Arr("f", ("B",)),
        "score": S.Arr("f", ("B",)), "history": S.Arr("f", ("T", "B")), "history_steps": S.Arr("iu", ("T",)),
        "start": S.Arr("u", (None, None, 3))}
    images: np.ndarray = None
    labels: np.ndarray = None
    objective: np.ndarray = None
    score: np.ndarray = None
    history: np.ndarray = None
    history_steps: np.ndarray = None
    start: np.ndarray = None
