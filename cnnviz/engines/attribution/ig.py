"""Integrated Gradients (Sundararajan et al. 2017) for `cnnviz.engines.attribution.gradients.attribute`,
through captum: the baseline images, and IG of each image in turn with its scaled copies in
internal batches (so that memory is bounded by the internal batch, not by steps x images)."""

from __future__ import annotations

import torch

from ...errors import ParameterError
from ...models import LoadedModel, Preprocessing

IG_BASELINES = ("black", "mean", "white", "blur")  # and a gray level or R,G,B in [0, 1]
BLUR_SIGMA = 10.0  # px of the model's input: the "blur" baseline (details gone, colours kept)


def check_baseline(baseline) -> None:
    """Integrated Gradients' baseline: black, mean (the dataset mean, gray), white, blur (the image
    blurred, sigma BLUR_SIGMA px), a gray level in [0, 1] or R,G,B in [0, 1]; None is black."""
    if baseline is None or (isinstance(baseline, str) and baseline.strip().lower() == "blur"):
        return
    try:
        Preprocessing().fill_value(baseline)
    except ParameterError:
        raise ParameterError(f"unknown baseline {baseline!r}; use black, mean, white, blur, a gray level in [0, 1] "
                             "such as 0.5, or R,G,B in [0, 1] such as 0.2,0.3,0.4") from None


def _baseline(lm: LoadedModel, x: torch.Tensor, baseline: str) -> torch.Tensor:
    """IG's baseline images, N x 3 x H x W in the normalized space."""
    if isinstance(baseline, str) and baseline.strip().lower() == "blur":
        from torchvision.transforms.functional import gaussian_blur

        k = 2 * int(3 * BLUR_SIGMA) + 1
        return gaussian_blur(x, [k, k], [BLUR_SIGMA, BLUR_SIGMA])
    return lm.preprocessing.fill_value(baseline).to(x.device).expand_as(x).contiguous()


def _integrated_gradients(model, x, targets, base, steps, smooth, noise, gen, internal):
    """IG of each image in turn (captum), its `steps` scaled copies `internal` at a time. With
    `smooth`, the mean of the IG maps of noisy copies of the image (SmoothGrad over IG, as captum's
    NoiseTunnel), with the noise drawn from `gen` as for the other methods."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    out = []
    with torch.enable_grad():
        for i in range(len(x)):
            xi, bi, ti = x[i:i + 1], base[i:i + 1], targets[i:i + 1]
            if smooth:
                sigma = noise * float(xi.max() - xi.min())
                copies = xi + sigma * torch.randn((smooth, *xi.shape[1:]), generator=gen).to(x.device)
            else:
                copies = xi
            maps = [ig.attribute(c[None], baselines=bi, target=ti, n_steps=steps,
                                 internal_batch_size=internal).detach() for c in copies]
            out.append(torch.cat(maps).mean(0, keepdim=True))
    return torch.cat(out)
