"""Feature invariance to vertical translation, scale and rotation (Zeiler & Fergus 2014, Sec. 4.3,
Fig. 5).

Each image is transformed over a range of values, and for every transformed copy two things are
read from one forward pass: the distance between the feature vectors of the transformed and the
original image at chosen layers, and the probability of the image's class. Zeiler & Fergus plot
the Euclidean distance at layers 1 and 7 and the true-class probability: small transformations
change the first layer a lot and the top feature layer much less, and the output is stable to
translation and scaling but not to rotation (except for objects with rotational symmetry).

Distances here are relative, ||f(T x) - f(x)|| / ||f(x)||, so that layers of different sizes share
an axis. The transforms act on the model's input crop (in normalized space, bilinear, filled with
the dataset mean): vertical translation by t pixels, zoom about the centre by s, rotation about the
centre by a degrees, each inside the crop, as the paper's were inside its 224x224 input.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ... import schema as S
from ...errors import LayerError, ParameterError
from ...layers import LayerInfo, capture, layer_name, resolve_layer, trace_layers
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import model_on_device, resolve_device

__api__ = ("invariance",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

# the ranges of Zeiler & Fergus Fig. 5
DEFAULT_VALUES = {"translate": list(range(-60, 61, 10)), "scale": [round(1 + 0.1 * i, 1) for i in range(9)],
                  "rotate": list(range(0, 360, 10))}
IDENTITY = {"translate": 0, "scale": 1.0, "rotate": 0}
UNITS = {"translate": "vertical translation (pixels)", "scale": "scale", "rotate": "rotation (degrees)"}
EXAMPLES = 5  # transformed copies of the first image kept for the figure, per transform
THUMB = 96


@dataclasses.dataclass
class InvarianceResult(Result):
    """Invariance curves.

    images: uint8 N x H x W x 3, the input crops.
    values: float32 R x T, each transform's values (NaN-padded to the longest, T).
    distance: float32 N x R x L x T, relative distance of layer l's features to the original's.
    prob: float32 N x R x T, probability of each image's class.
    examples: uint8 R x E x h x w x 3, transformed copies of the first image (thumbnails).
    example_values: float32 R x E, their transform values.
    params: transforms (R names), layers (L addresses), classes / class_names (per image), names.
    """

    kind: ClassVar[str] = "invariance"
    renderer: ClassVar = "cnnviz.render.experiments.invariance:figure"
    param_schema: ClassVar[dict] = {"transforms": S.TEXTS, "layers": S.TEXTS, "class_names": S.TEXTS, "names": S.TEXTS}
    array_schema: ClassVar[dict] = {
        "images": S.Arr("u", ("N", None, None, 3)), "values": S.Arr("f", ("R", "T")),
        "distance": S.Arr("f", ("N", "R", None, "T")), "prob": S.Arr("f", ("N", "R", "T")),
        "examples": S.Arr("u", ("R", None, None, None, 3)), "example_values": S.Arr("f", ("R", None))}
    images: np.ndarray = None
    values: np.ndarray = None
    distance: np.ndarray = None
    prob: np.ndarray = None
    examples: np.ndarray = None
    example_values: np.ndarray = None


def transform(x: torch.Tensor, kind: str, value: float) -> torch.Tensor:
    """x (N x 3 x H x W, normalized) translated down by `value` pixels, zoomed by `value`, or
    rotated by `value` degrees (counter-clockwise), about the centre; new pixels 0 (the mean)."""
    import torchvision.transforms.functional as TF  # here, not at the top: torchvision imports torch._dynamo (seconds)

    if kind == "translate":
        return TF.affine(x, angle=0.0, translate=[0, int(round(value))], scale=1.0, shear=[0.0],
                         interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    if kind == "scale":
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(value), shear=[0.0],
                         interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    if kind == "rotate":
        return TF.rotate(x, float(value), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    raise ParameterError(f"unknown transform {kind!r}; use translate, scale or rotate")


def default_layers(model, example: torch.Tensor) -> list[LayerInfo]:
    """The first convolution (as ZF's layer 1) and the features entering the last linear layer (as
    their layer 7, the top feature layer)."""
    infos = trace_layers(model, example)
    first = next((i for i in infos if i.is_conv), None)
    linears = [k for k, i in enumerate(infos) if i.type == "Linear"]
    top = None
    if linears:
        before = [i for i in infos[:linears[-1]] if i.shape is not None and i.order < infos[linears[-1]].order]
        top = before[-1] if before else None
    if first is None or top is None:
        raise LayerError("cannot find a first convolution and a last linear layer; name the layers with --layers")
    return [first, top]


def _check_values(kind: str, values) -> list[float]:
    vals = [float(v) for v in values]
    if not vals:
        raise ParameterError(f"no values for {kind}")
    if kind == "scale" and min(vals) <= 0:
        raise ParameterError(f"scale factors must be positive, got {min(vals):g}")
    return vals


@takes_model
def invariance(lm: LoadedModel, images, transforms=("translate", "scale", "rotate"), layers=None, target=None,
               values: dict | None = None, device: str = "auto") -> InvarianceResult:
    """Invariance curves of `lm` for `images` (paths, PIL images or uint8 crops).

    transforms: any of "translate", "scale", "rotate". values: {transform: list} to replace the
    paper's ranges. layers: addresses (default: the first convolution and the features entering the
    last linear layer). target: the class followed for every image (default: each image's top-1
    on the untransformed image).
    """
    transforms = [transforms] if isinstance(transforms, str) else list(transforms)
    for kind in transforms:
        if kind not in DEFAULT_VALUES:
            raise ParameterError(f"unknown transform {kind!r}; use translate, scale or rotate")
    if not transforms:
        raise ParameterError("no transform given; use translate, scale or rotate")
    vals = {k: _check_values(k, (values or {}).get(k, DEFAULT_VALUES[k])) for k in transforms}
    images = images if isinstance(images, (list, tuple)) else [images]
    if not images:
        raise ParameterError("no images given")
    prepared = [lm.prepare(im) for im in images]
    pixels = np.stack([p for p, _ in prepared])
    x = torch.cat([t for _, t in prepared])
    infos = default_layers(lm.model, x[:1]) if layers is None else [resolve_layer(lm.model, a, x[:1]) for a in layers]
    fixed = None if target is None else lm.class_index(target)
    dev = resolve_device(device)
    T = max(len(v) for v in vals.values())
    dist = np.full((len(x), len(transforms), len(infos), T), np.nan, np.float32)
    prob = np.full((len(x), len(transforms), T), np.nan, np.float32)
    classes = []
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        for n in range(len(x)):
            xi = x[n:n + 1].to(dev)
            base, logits = _features(model, infos, xi)
            cls = int(logits.argmax(1)) if fixed is None else fixed
            classes.append(cls)
            for r, kind in enumerate(transforms):
                batch = torch.cat([transform(xi, kind, v) for v in vals[kind]])
                feats, out = _features(model, infos, batch)
                for li, (f, f0) in enumerate(zip(feats, base)):
                    d = (f - f0).flatten(1).norm(dim=1) / f0.flatten().norm().clamp_min(1e-12)
                    dist[n, r, li, :len(vals[kind])] = d.cpu().numpy()
                prob[n, r, :len(vals[kind])] = torch.softmax(out.float(), 1)[:, cls].cpu().numpy()
    examples, example_values = _examples(lm, x[:1], transforms, vals)
    value_table = np.full((len(transforms), T), np.nan, np.float32)
    for r, kind in enumerate(transforms):
        value_table[r, :len(vals[kind])] = vals[kind]
    names = [str(getattr(im, "name", im)) if not isinstance(im, np.ndarray) else f"image {i}"
             for i, im in enumerate(images)]
    labels = [layer_name(i.address, i.type) for i in infos]  # what and where; the addresses are in "layers"
    if layers is None:
        labels = [labels[0] if "stem" in labels[0] else "first conv", "top features"]  # the features entering the classifier
    params = {"transforms": transforms, "layers": [i.address for i in infos], "layer_labels": labels, "layer_shapes": [list(i.shape) for i in infos],
              "classes": classes, "class_names": [lm.class_name(c) for c in classes], "target_given": target is not None,
              "names": [n.rsplit("/", 1)[-1] for n in names], "distance": "relative: ||f(Tx) - f(x)|| / ||f(x)||"}
    return InvarianceResult(params=params, provenance=provenance(lm.identity(), str(dev)), images=pixels,
                            values=value_table, distance=dist, prob=prob, examples=examples,
                            example_values=example_values)


def _features(model, infos, x):
    """The layers' outputs (float, on the device) and the logits for a batch."""
    import contextlib

    with contextlib.ExitStack() as stack:
        caps = [stack.enter_context(capture(model, info)) for info in infos]
        out = model(x)
        feats = [c.values[-1].float() for c in caps]
    return feats, out


def _examples(lm, x, transforms, vals):
    picks = []
    for kind in transforms:
        v = vals[kind]
        idx = np.unique(np.linspace(0, len(v) - 1, EXAMPLES).round().astype(int))
        idx = np.pad(idx, (0, EXAMPLES - len(idx)), mode="edge")
        picks.append([v[i] for i in idx])
    tiles = np.zeros((len(transforms), EXAMPLES, THUMB, THUMB, 3), np.uint8)
    for r, kind in enumerate(transforms):
        for e, v in enumerate(picks[r]):
            t = transform(x, kind, v)
            t = torch.nn.functional.interpolate(t, size=(THUMB, THUMB), mode="bilinear", align_corners=False,
                                                antialias=True)
            tiles[r, e] = lm.preprocessing.denormalize(t)[0]
    return tiles, np.asarray(picks, np.float32)
