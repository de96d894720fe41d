"""Class activation maps beyond Grad-CAM, and RISE.

Each takes the model (in eval mode, on its device), a normalized batch x (N x 3 x H x W), the
classes to explain (N, or None for each image's top-1) and, for the CAMs, the layer (a LayerInfo
with C x h x w outputs). The CAMs return maps at the layer's resolution (N x h x w), RISE at the
input's (N x H x W); each also returns the top-1 classes of the unchanged images.

- Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 19): the weight of feature map k is
  sum_ij a_ij ReLU(g_ij) with a_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3), g = dY/dA for the
  class score Y (the closed form of the paper's second- and third-order terms for S = exp(Y)),
  computed as 1 / (2 + g_ij sum_ab A_ab); a_ij = 0 where g_ij = 0. Map: ReLU(sum_k w_k A_k).
  (pytorch-grad-cam adds 1e-7 to the denominator, which changes maps whose gradients are tiny.)
- LayerCAM (Jiang et al., IEEE TIP 2021, eq. 5-6): every position weighted by its own positive
  gradient: ReLU(sum_k ReLU(g_k) * A_k).
- Score-CAM (Wang et al., CVPR-W 2020): each feature map, bilinearly upsampled to the input and
  scaled to [0, 1], masks the input (in normalized space, so masked pixels become the dataset
  mean); its weight is the softmax probability of the class for that masked input (as the
  authors' code); map ReLU(sum_k w_k A_k). One forward pass per channel, SCORECAM_BATCH masked
  copies per pass (16, as pytorch-grad-cam's ScoreCAM), in the channels_last layout where the
  model takes it (`common.batch_memory_format`: 1.6x faster on EfficientNet-Lite0 on a CPU).
  `max_channels=k`: an approximation that keeps, per image, only the k channels with the largest
  spatial mean activation (the channels that weigh most in sum_k w_k A_k, since every weight is in
  [0, 1]); the others get no pass and no place in the sum. With k = all channels it is Score-CAM.
- RISE (Petsiuk et al., BMVC 2018, eq. 5-6): M random binary grids of s x s cells, each cell kept
  with probability p, bilinearly upsampled to (s + 1) cells of the input and cropped at a random
  shift; saliency = sum_i P(class | x * mask_i) mask_i / (M p). Black box: no gradients, no layer.
  M = `masks` (default 2000, the paper's ImageNet setting is 4000; fewer masks, a noisier map).

Both take `bar`, a progress bar (`cnnviz.engines.common.progress_bar`) advanced by one per masked
copy run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...errors import ParameterError
from ...layers import LayerInfo, record
from ..common import batch_memory_format
from .targets import Target, seed

EPS = 1e-7
# masked copies per forward pass: pytorch-grad-cam's ScoreCAM default. On a CPU (EfficientNet-Lite0,
# channels_last, 2 cores) 8 and 16 run at the same speed per copy and 32 is 1.7x slower per copy
SCORECAM_BATCH = 16
RISE_BATCH = 16
DEFAULT_MASKS = 2000
MAX_MASKS = 100_000  # 50 times the default: hours on a CPU
CHANNEL_MEASURE = "spatial mean"  # how max_channels ranks a layer's channels


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        hasattr(value, "__index__") and not isinstance(value, (bool, float)))


def check_masks(masks) -> int:
    if not _whole(masks) or not 1 <= masks <= MAX_MASKS:
        raise ParameterError(f"masks (--masks) {masks!r}: RISE takes a whole number of random masks from 1 to "
                             f"{MAX_MASKS} (default {DEFAULT_MASKS}; fewer is faster and noisier)")
    return int(masks)


def check_max_channels(k, channels: int | None = None, layer: str | None = None) -> int | None:
    """max_channels: None (all), or 1..the layer's channel count."""
    if k is None:
        return None
    if not _whole(k) or k < 1:
        raise ParameterError(f"max_channels (--max-channels) {k!r}: Score-CAM takes a whole number of channels >= 1 "
                             "(the ones with the largest spatial mean activation), or leave it out for every channel")
    if channels is not None and k > channels:
        raise ParameterError(f"max_channels (--max-channels) {k} is more than layer {layer!r} has ({channels} "
                             f"channels); give 1..{channels}, or leave it out for every channel")
    return int(k)


def top_channels(act: torch.Tensor, k: int | None) -> torch.Tensor:
    """The indices (ascending) of the k channels of one image's C x h x w activation with the
    largest spatial mean (all channels when k is None)."""
    c = act.shape[0]
    if k is None or k >= c:
        return torch.arange(c, device=act.device)
    return act.flatten(1).mean(1).topk(k).indices.sort().values


def _score_seed(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return seed(out, Target.of_class(targets))  # the one seed of every backward pass


def activations_and_gradients(model, x: torch.Tensor, targets: torch.Tensor | None, layer: LayerInfo):
    """(A, dY/dA, top1): the layer's output on x and the gradient of each image's class score."""
    x = x.detach().clone().requires_grad_(True)  # a graph above the layer also for a frozen model
    with torch.enable_grad(), record(model, [layer]) as store:
        out = model(x)
        act = store[layer.address]
        top1 = out.detach().argmax(1)
        targets = top1 if targets is None else targets
        (g,) = torch.autograd.grad(out, act, grad_outputs=_score_seed(out, targets))
    return act.detach(), g.detach(), top1


def grad_cam_pp(model, x, targets, layer):
    act, g, top1 = activations_and_gradients(model, x, targets, layer)
    # g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g != 0: no division of tiny squares by tiny cubes
    denom = 2 + act.sum(dim=(2, 3), keepdim=True) * g
    ok = (g != 0) & (denom != 0)
    alpha = torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g))
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * act).sum(1)), top1


def layer_cam(model, x, targets, layer):
    act, g, top1 = activations_and_gradients(model, x, targets, layer)
    return F.relu((F.relu(g) * act).sum(1)), top1


def score_cam(model, x, targets, layer, batch: int = SCORECAM_BATCH, max_channels: int | None = None, bar=None):
    with torch.inference_mode():
        with record(model, [layer]) as store:
            out = model(x)
            act = store[layer.address].float().clone()
    top1 = out.argmax(1)
    targets = top1 if targets is None else targets
    cams = []
    layout = batch_memory_format(model, x[:1])
    with torch.inference_mode():
        for i in range(len(x)):
            keep = top_channels(act[i], max_channels)
            weights = []
            for lo in range(0, len(keep), batch):  # the masks of a batch of channels, made when needed
                a = act[i, keep[lo:lo + batch]]
                up = F.interpolate(a[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
                flat = up.flatten(1)
                lo_v, hi_v = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
                span = hi_v - lo_v
                masks = (up - lo_v) / torch.where(span > EPS, span, torch.ones_like(span))  # flat maps: all zero
                p = torch.softmax(model((x[i:i + 1] * masks).contiguous(memory_format=layout)).float(),
                                  dim=1)[:, int(targets[i])]
                weights.append(p)
                if bar is not None:
                    bar.update(len(a))
            w = torch.cat(weights)
            cams.append(F.relu((w[:, None, None] * act[i, keep]).sum(0)))
    return torch.stack(cams), top1


class RiseMasks:
    """n RISE masks for an input of `size`, reproducible from `seed`, made a slice at a time
    (`masks[a:b]` is (b - a) x H x W in [0, 1]): 2000 full-size masks would take 400 MB."""

    def __init__(self, n: int, size: tuple[int, int], grid: int = 7, p: float = 0.5, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.n, (self.h, self.w), self.device = n, size, device
        gen = torch.Generator().manual_seed(seed)
        self.cell_h, self.cell_w = math.ceil(self.h / grid), math.ceil(self.w / grid)
        self.up = ((grid + 1) * self.cell_h, (grid + 1) * self.cell_w)
        self.cells = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
        self.dy = torch.randint(0, self.cell_h, (n,), generator=gen)
        self.dx = torch.randint(0, self.cell_w, (n,), generator=gen)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, part: slice) -> torch.Tensor:
        idx = torch.arange(self.n)[part]
        big = F.interpolate(self.cells[idx], size=self.up, mode="bilinear", align_corners=False)[:, 0]
        rows = self.dy[idx][:, None] + torch.arange(self.h)[None]
        cols = self.dx[idx][:, None] + torch.arange(self.w)[None]
        k = torch.arange(len(idx))[:, None, None]
        return big[k, rows[:, :, None], cols[:, None, :]].to(self.device)


def rise(model, x, targets, masks: int = DEFAULT_MASKS, grid: int = 7, p: float = 0.5, seed: int = 0,
         batch: int = RISE_BATCH, bar=None):
    with torch.inference_mode():
        top1 = model(x).argmax(1)
    targets = top1 if targets is None else targets
    m = RiseMasks(masks, tuple(x.shape[2:]), grid, p, seed, x.device)
    acc = torch.zeros(len(x), *x.shape[2:], device=x.device)
    layout = batch_memory_format(model, x[:1])
    with torch.inference_mode():
        for a in range(0, masks, batch):  # each slice of masks is made once and serves every image
            mk = m[a:a + batch]
            for i in range(len(x)):
                copies = (x[i:i + 1] * mk[:, None]).contiguous(memory_format=layout)
                probs = torch.softmax(model(copies).float(), dim=1)[:, int(targets[i])]
                acc[i] += (probs[:, None, None] * mk).sum(0)
                if bar is not None:
                    bar.update(len(mk))
    return acc / (masks * p), top1
