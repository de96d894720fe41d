"""A model with everything needed to use it: `LoadedModel` (the network, its preprocessing, its
class names and the identity of its weights) and `Preprocessing`. The model sources
(`cnnviz.sources`) build these; `cnnviz.models.load_model` picks the source.
"""

from __future__ import annotations

import hashlib

import difflib
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ParameterError, TargetError

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                   "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


MAX_RESIZED_PIXELS = 1 << 26  # 67 megapixels (200 MB as RGB): an intermediate resize may not be larger


def check_resized_size(photo: tuple[int, int], size: tuple[int, int]) -> None:
    """Refuse, before allocating, a resize of a `photo` (W, H) to `size` (W, H) larger than
    MAX_RESIZED_PIXELS: a 1-pixel-high strip resized to a shorter side of 256 would take gigabytes."""
    from .errors import ImageError

    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        raise ImageError(f"a {photo[0]}x{photo[1]} photo (W x H) would be resized to {size[0]}x{size[1]} pixels "
                         f"({size[0] * size[1] * 3 / 1e9:.1f} GB); crop it to a less elongated region first")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: resize the shorter side to `resize`, centre-crop to
    `crop` (H, W), scale to [0, 1] and normalize by `mean` and `std` (per RGB channel)."""

    crop: tuple[int, int] = (224, 224)
    resize: int | None = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def crop_image(self, img: Image.Image, geometry: bool = False):
        """The model's input crop of a PIL RGB image, as uint8 HxWx3. With `geometry`, also the
        `CropGeometry` (photo size, resized size, crop offset and size) that maps the crop back."""
        resample = _INTERPOLATIONS[self.interpolation]
        ch, cw = self.crop
        w0, h0 = img.size
        if self.resize is not None:
            w, h = img.size
            s = self.resize / min(w, h)
            size = (max(cw, round(w * s)), max(ch, round(h * s)))
            check_resized_size(img.size, size)
            img = img.resize(size, resample, reducing_gap=None)
        w, h = img.size
        if w < cw or h < ch:  # no resize step and a small image: scale up to cover the crop
            s = max(cw / w, ch / h)
            img = img.resize((max(cw, round(w * s)), max(ch, round(h * s))), resample)
            w, h = img.size
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        pixels = np.asarray(img.crop((left, top, left + cw, top + ch)), dtype=np.uint8).copy()
        if not geometry:
            return pixels
        from .geometry import CropGeometry

        return pixels, CropGeometry((h0, w0), (h, w), (top, left), (ch, cw), "pil")

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 (or NxHxWx3) pixels to a normalized float tensor Nx3xHxW."""
        t = torch.as_tensor(np.asarray(pixels))
        if t.ndim == 3:
            t = t[None]
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
        return ((t - self._vec(self.mean)) / self._vec(self.std)).contiguous()  # NCHW, not the permuted layout

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Undo `normalize`: Nx3xHxW (or 3xHxW) float tensor to uint8 NxHxWx3 (or HxWx3)."""
        single = x.ndim == 3
        x = x.detach().float().cpu()
        if single:
            x = x[None]
        px = (x * self._vec(self.std) + self._vec(self.mean)).mul(255.0).round().clamp(0, 255)
        out = px.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out[0] if single else out

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.crop_image(img))

    def fill_value(self, fill: str | float | Sequence[float]) -> torch.Tensor:
        """A fill colour in the normalized space, shape (3, 1, 1).

        `fill` is "mean" (the dataset mean: gray, 0 after normalization), "black", "white", a gray
        level in [0, 1], or three RGB values in [0, 1].
        """
        if isinstance(fill, str):
            key = fill.strip().lower()
            named = {"mean": self.mean, "gray": self.mean, "grey": self.mean,
                     "black": (0.0,) * 3, "white": (1.0,) * 3}
            if key in named:
                rgb = named[key]
            else:
                try:
                    parts = [float(v) for v in key.replace(",", " ").split()]
                except ValueError:
                    raise ParameterError(f"unknown fill {fill!r}; use mean, black, white, a gray level in "
                                         "[0, 1] or three RGB values such as 0.5,0.5,0.5") from None
                rgb = parts * 3 if len(parts) == 1 else parts
        elif isinstance(fill, (int, float)):
            rgb = [float(fill)] * 3
        else:
            rgb = [float(v) for v in fill]
        if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
            raise ParameterError(f"fill {fill!r} must be one gray level or three RGB values in [0, 1]")
        return ((torch.tensor(rgb, dtype=torch.float32) - torch.tensor(self.mean)) / torch.tensor(self.std)).view(3, 1, 1)

    @staticmethod
    def _vec(v: Sequence[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)

    def to_dict(self) -> dict:
        return {"crop": list(self.crop), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


@dataclass
class LoadedModel:
    """A network with everything needed to use it: preprocessing, class names, weights identity."""

    model: torch.nn.Module
    name: str
    weights: str
    preprocessing: Preprocessing
    categories: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.crop

    def prepare(self, img, geometry: bool = False):
        """An image to its uint8 input crop HxWx3 and the normalized 1x3xHxW tensor, by the rule of
        `cnnviz.inputs` (a path, a PIL image, an HxWx3 numpy array or a 3xHxW tensor of pixels: at
        the input size as it is, at any other size a photo, resized and centre-cropped as a PIL
        image). With `geometry`, a third item: the `CropGeometry` from the photo to the crop
        (identity for pixels at the input size), carrying a downscaled copy of the photo (longest
        side <= 512) when it was resized."""
        from .geometry import CropGeometry, thumbnail

        if isinstance(img, (np.ndarray, torch.Tensor)):
            from .inputs import read_array

            got = read_array(img, self.input_size)
            if isinstance(got, tuple):  # already the model's input
                pixels, exact = got
                x = self.preprocessing.normalize(pixels) if exact is None else (
                    (exact - self.preprocessing._vec(self.preprocessing.mean))
                    / self.preprocessing._vec(self.preprocessing.std)).contiguous()
                out = pixels, x
                return (*out, CropGeometry.identity(*self.input_size)) if geometry else out
            img = got  # a photo of another size: as a PIL image
        source = "pil" if isinstance(img, Image.Image) else ("file" if isinstance(img, (str, os.PathLike)) else None)
        if source is None:
            from .inputs import INPUT_RULE

            raise ParameterError(f"an image of type {type(img).__name__} is not taken; {INPUT_RULE}")
        if not isinstance(img, Image.Image):
            from .images import load_image
            img = load_image(img)
        else:
            from .images import to_rgb
            img = to_rgb(img)
        if not geometry:
            pixels = self.preprocessing.crop_image(img)
            return pixels, self.preprocessing.normalize(pixels)
        pixels, geo = self.preprocessing.crop_image(img, geometry=True)
        import dataclasses

        geo = dataclasses.replace(geo, source=source, thumbnail=thumbnail(img))
        return pixels, self.preprocessing.normalize(pixels), geo

    def class_name(self, index: int) -> str:
        return self.categories[index] if 0 <= index < len(self.categories) else f"class {index}"

    def class_index(self, target: int | str) -> int:
        """A class given by index (int or digits) or by name (case-insensitive) to its index."""
        n = len(self.categories)
        if isinstance(target, (torch.Tensor, np.ndarray)):  # captum's way: a 0-d tensor is its number
            if target.ndim != 0 and tuple(target.shape) != (1,):
                raise TargetError(f"target must be one class (an int, a name or a 0-d tensor), got a tensor of shape "
                                  f"{tuple(target.shape)}")
            target = int(target.item())
        if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
            idx = int(target)
            if not 0 <= idx < n:
                raise TargetError(f"class index {idx} is out of range: {self.name} has classes 0..{n - 1}")
            return idx
        wanted = str(target).strip().lower()
        lowered = [c.lower() for c in self.categories]
        if wanted in lowered:
            return lowered.index(wanted)
        close = difflib.get_close_matches(wanted, lowered, n=4, cutoff=0.6)
        close += [c for c in lowered if wanted in c and c not in close][: 4 - len(close)]
        hint = ("; did you mean " + ", ".join(repr(self.categories[lowered.index(c)]) for c in close) + "?") if close else \
            ("; give the class index (0..{}) or a name of its .categories".format(n - 1) if self.weights == "in memory"
             else "; run `cnnviz predict IMAGE` to see class names, or give the class index")
        raise TargetError(f"unknown class {target!r} for {self.name}{hint}")

    def identity(self) -> dict:
        return {"model": self.name, "weights": self.weights, "num_classes": len(self.categories),
                "preprocessing": self.preprocessing.to_dict()}

    def fingerprint(self) -> dict:
        """`identity()` plus a hash of the model's state (every parameter and buffer, by name, dtype,
        shape and bytes): what a resumed run or a cache must match. Two `--weights none` models
        seeded differently share an identity but not a fingerprint."""
        h = hashlib.sha256()
        with torch.no_grad():
            for name, t in list(self.model.state_dict(keep_vars=False).items()):
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                t = t.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-d tensors cannot be viewed as bytes
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return {**self.identity(), "state_sha256": h.hexdigest()}

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor, top: int = 5, device: str = "auto") -> list[list[tuple[int, str, float]]]:
        """Top-`top` (index, name, probability) for each image of a normalized batch Nx3xHxW."""
        from .engines.common import check_finite_outputs, model_on_device, resolve_device

        dev = resolve_device(device)
        with model_on_device(self.model, dev) as m:
            logits = m(inputs.to(dev)).float()
        check_finite_outputs(logits)
        probs = torch.softmax(logits, dim=1).cpu()
        p, idx = probs.topk(min(top, probs.shape[1]), dim=1)
        return [[(int(i), self.class_name(int(i)), float(v)) for v, i in zip(pr, ix)] for pr, ix in zip(p, idx)]
