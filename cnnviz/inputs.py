"""What an image may be, wherever cnnviz reads one (`LoadedModel.prepare`, and through it every engine).

The rule (INPUT_RULE):
- a path, or a PIL image: a photo. Its shorter side is resized to the model's `resize`, then it is
  centre-cropped to the model's input size (`Preprocessing.crop_image`).
- a numpy array H x W x 3, uint8 (0..255) or float (0..1); a torch tensor 3 x H x W or 1 x 3 x H x W
  of pixels in [0, 1] (float) or 0..255 (uint8): at the model's input size, it is the model's input
  as it is; at any other size, it is a photo, resized and centre-cropped exactly as the same pixels
  given as a PIL image (floats are rounded to 8 bits first).
- a list of these, and a float tensor N x 3 x H x W of pixels in [0, 1], where several images are
  taken; a batch already normalized by the model's mean and std needs `normalized=True`.
Anything else (4 channels, a wrong number of dimensions, floats outside [0, 1]) is a one-line
ParameterError naming this rule.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ParameterError

INPUT_RULE = ("an image is a path, a PIL image, an HxWx3 numpy array (uint8, or floats in [0, 1]) or a 3xHxW "
              "tensor of pixels in [0, 1]; a batch is a list of these or an Nx3xHxW tensor of pixels in [0, 1] "
              "(normalized=True for one already normalized)")


def _shape(a) -> str:
    return "x".join(map(str, tuple(a.shape)))


def read_array(img, input_size: tuple[int, int]):
    """A numpy array or torch tensor image, checked against INPUT_RULE: (uint8 HxWx3 pixels, the
    float 1x3xHxW pixels in [0, 1] or None) when it is at the model's `input_size`, else a PIL image
    of it (a photo, to be resized and cropped)."""
    from PIL import Image

    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 4:
            raise ParameterError(f"a batch of {t.shape[0]} images ({_shape(img)}) where one image is taken; give "
                                 f"one image 3xHxW, or the batch to a function that takes several ({INPUT_RULE})")
        if t.ndim != 3 or t.shape[0] != 3:
            raise ParameterError(f"a tensor image must be 3xHxW (RGB, channels first), got {_shape(img)}; "
                                 f"{INPUT_RULE}")
        arr = t.permute(1, 2, 0).numpy()
    elif isinstance(img, np.ndarray):
        arr = img
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ParameterError(f"a numpy image must be HxWx3 (RGB, channels last), got {arr.dtype} {_shape(arr)}; "
                                 f"{INPUT_RULE}")
    else:
        raise ParameterError(f"an image of type {type(img).__name__} is not taken; {INPUT_RULE}")
    if arr.dtype == np.uint8:
        pixels, exact = np.ascontiguousarray(arr), None
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise ParameterError(f"float pixels must lie in [0, 1], got values from {lo:.3g} to {hi:.3g}; "
                                 f"{INPUT_RULE}")
        pixels = np.round(arr * 255.0).astype(np.uint8)
        exact = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    else:
        raise ParameterError(f"pixels of type {arr.dtype} are not taken: uint8 (0..255) or floats in [0, 1]; "
                             f"{INPUT_RULE}")
    if tuple(pixels.shape[:2]) == tuple(input_size):
        return pixels, exact
    return Image.fromarray(pixels, "RGB")


def read_batch(images, normalized: bool) -> list | torch.Tensor:
    """The images of a call that takes several: a normalized Nx3xHxW float tensor as it is (with
    `normalized`), a tensor of pixels as a list of its images, one image as a list of one."""
    if normalized:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            what = _shape(images) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ParameterError(f"normalized=True takes an Nx3xHxW tensor already normalized by the model's mean "
                                 f"and std, got {what}; leave it out for {INPUT_RULE}")
        return images.detach().float().cpu()
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ParameterError("no images given")
    return list(images)
