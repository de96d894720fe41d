"""Feature visualization: ask the network to draw what a unit, a class or a layer wants.

Pixels (or a parameterization of them) are changed by gradient ascent on an objective computed
from the network's activations. One idea a module:

- `objectives`: `channel`, `neuron`, `class_logit`, `class_prob`, `dream`, `match`, and the image
  priors `total_variation`, `alpha_norm`; each returns one value per image of the batch, and they
  combine with + - * /, so one batch can hold several units (`channel(layer, [0, 1, 2, 3])`: image
  i drives unit i) or a weighted mix;
- `param`: plain pixels, or a Fourier spectrum scaled like 1/f with decorrelated colour (Olah et
  al. 2017), either optionally through a sigmoid; any object with `parameters()`, `image()` and
  `project()` (the `ImageParam` protocol) can be passed as `param=` instead;
- `transforms`: transformation robustness: every step sees the image padded, shifted, scaled and
  rotated by amounts drawn afresh for each image and step;
- `regularizers`: Yosinski et al. (2015): L2 decay, Gaussian blur every few steps, clipping of
  pixels with a small norm (Mahendran & Vedaldi's total variation and alpha-norm are objectives);
- `loop`: the model run with recorded layers, and the Adam loop;
- `recipes`: `visualize`, `visualize_units`, `visualize_classes`, DeepDream (`deep_dream`: octaves,
  random jitter, gradient steps normalized by their mean size) and inversion (`invert`:
  reconstruct an image from its representation at one or more layers);
- `metrics`: `feature_distances`, `high_frequency_share`.

All randomness comes from one seeded generator, so a seed gives the same image, bit for bit, on
the same device, number of CPU threads and library versions (a different thread count changes the
rounding of the convolutions: images then differ by a grey level here and there). The model is
left exactly as it was: no gradients accumulate in its parameters, its hooks are removed, its
training flags and device are restored, also on error.
"""

from .loop import _optimize, _Runner, _to_uint8  # noqa: F401
from .metrics import feature_distances, high_frequency_share
from .objectives import (Context, Objective, alpha_norm, channel, class_logit, class_prob, dream, match, neuron,
                         parse_units, total_variation)
from .param import COLOR_SQRT_COV, FourierImage, ImageParam, PixelImage, _color, make_param  # noqa: F401
from .recipes import PRIORS, deep_dream, invert, visualize, visualize_classes, visualize_units
from .regularizers import Regularizers, gaussian_blur
from .transforms import STANDARD_TRANSFORMS, Transforms

# cnnviz.<name> (a literal: see cnnviz/__init__)
__api__ = ("featvis", "visualize", "visualize_units", "visualize_classes", "deep_dream", "invert")

__all__ = ["Context", "Objective", "channel", "neuron", "class_logit", "class_prob", "dream", "match",
           "total_variation", "alpha_norm", "parse_units", "ImageParam", "PixelImage", "FourierImage",
           "COLOR_SQRT_COV", "make_param", "Transforms", "STANDARD_TRANSFORMS", "Regularizers", "gaussian_blur",
           "visualize", "visualize_units", "visualize_classes", "deep_dream", "invert", "PRIORS",
           "feature_distances", "high_frequency_share"]
