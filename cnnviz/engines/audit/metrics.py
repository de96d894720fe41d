"""The numbers of an audit, each a small function of arrays (tested against direct computations).

- calibration: expected calibration error over equal-width confidence bins (Guo et al. 2017; the
  confidence is the top-1 probability), and the per-bin accuracy/confidence of the reliability
  diagram;
- confusion: the most frequent (true, predicted) pairs among the mistakes;
- centre share: the part of a map's (non-negative) mass inside the central box that spans the
  middle half of the height and of the width (a quarter of the area: a uniform map gives 0.25);
- deletion / insertion (Petsiuk et al. 2018, RISE): pixels are removed from the image (replaced by
  the fill, by default the image blurred) in the order of the map, most important first, and the
  probability of the explained class is read after each step; insertion starts from the filled
  image and puts the pixels back in the same order. The area under each curve (trapezoids over the
  fraction of pixels changed, 0..1) summarizes it: a faithful map gives a low deletion area and a
  high insertion area;
- pointing game and energy in a box (Zhang et al. 2016; Wang et al. 2020).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...batching import pad

BLUR_SIGMA = 10.0  # px of the model's input, as Integrated Gradients' "blur" baseline


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 15):
    """(ECE, per-bin mean confidence, per-bin accuracy, per-bin count); bins (i/B, (i+1)/B], the
    first also holding 0. Empty bins have NaN confidence and accuracy."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=confidence, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    n = max(len(confidence), 1)
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / n)
    return ece, conf.astype(np.float32), acc.astype(np.float32), count


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the most frequent mistakes, most first (ties: by true, then
    predicted class index)."""
    wrong = (labels >= 0) & (labels != predicted)
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(labels[wrong].tolist(), predicted[wrong].tolist()):
        pairs[(t, p)] = pairs.get((t, p), 0) + 1
    return [(t, p, c) for (t, p), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def centre_box(h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the central box: the middle half of each side."""
    return h // 4, h - h // 4, w // 4, w - w // 4


def centre_share(maps: np.ndarray) -> np.ndarray:
    """Share of each map's non-negative mass inside the central box (N x H x W -> N); NaN for a map
    with no positive mass."""
    m = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    y0, y1, x0, x1 = centre_box(*m.shape[-2:])
    total = m.sum(axis=(-2, -1))
    inside = m[..., y0:y1, x0:x1].sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan).astype(np.float32)


def box_scores(maps: np.ndarray, boxes: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Pointing game hit (the map's maximum inside a box) and energy share inside the boxes, per
    map. maps N x H x W; boxes per map: a list of [x0, y0, x1, y1] in crop pixels (corners)."""
    n, h, w = maps.shape
    hit = np.zeros(n, np.float32)
    energy = np.zeros(n, np.float32)
    for i in range(n):
        mask = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in boxes[i]:  # pixels the box touches; a box outside the crop touches none
            r0, r1 = (int(np.clip(v, 0, h)) for v in (np.floor(y0), np.ceil(y1)))
            c0, c1 = (int(np.clip(v, 0, w)) for v in (np.floor(x0), np.ceil(x1)))
            mask[r0:r1, c0:c1] = True
        m = np.clip(np.nan_to_num(maps[i].astype(np.float64)), 0, None)
        y, x = np.unravel_index(np.argmax(maps[i]), (h, w))
        hit[i] = float(mask[y, x])
        energy[i] = float(m[mask].sum() / m.sum()) if m.sum() > 0 else np.nan
    return hit, energy


def blur_fill(x: torch.Tensor) -> torch.Tensor:
    """The image blurred with a Gaussian of BLUR_SIGMA px (details gone, colours kept)."""
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(3 * BLUR_SIGMA) + 1
    return gaussian_blur(x, [k, k], [BLUR_SIGMA, BLUR_SIGMA])


def fill_images(lm, x: torch.Tensor, fill: str) -> torch.Tensor:
    """What a removed pixel becomes: "blur" (the image blurred) or a colour `Preprocessing.fill_value`
    accepts (mean, black, white, a gray level, R,G,B)."""
    if isinstance(fill, str) and fill.strip().lower() == "blur":
        return blur_fill(x)
    return lm.preprocessing.fill_value(fill).to(x.device).expand_as(x).contiguous()


def pixel_order(maps: torch.Tensor) -> torch.Tensor:
    """N x (H*W): pixel indices by decreasing map value, ties by increasing index (stable)."""
    flat = torch.nan_to_num(maps.flatten(1).double(), nan=-np.inf)
    return torch.sort(-flat, dim=1, stable=True).indices


def deletion_insertion(model, x: torch.Tensor, filled: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (N x (steps + 1) probabilities of `targets`): at step k the
    first round(k * H * W / steps) pixels of the map's order are filled (deletion) or restored
    (insertion). The model runs under inference mode in batches of `batch`, padded to full groups."""
    n, _, h, w = x.shape
    order = pixel_order(maps)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    dele = np.zeros((n, steps + 1), np.float32)
    ins = np.zeros((n, steps + 1), np.float32)
    jobs = [(i, k) for i in range(n) for k in range(steps + 1)]
    with torch.inference_mode():
        for lo in range(0, len(jobs), batch):
            part = jobs[lo:lo + batch]
            masks = torch.zeros(len(part), h * w, dtype=torch.bool, device=x.device)
            for j, (i, k) in enumerate(part):
                masks[j, order[i, :counts[k]]] = True
            masks = masks.view(len(part), 1, h, w)
            idx = torch.tensor([i for i, _ in part], device=x.device)
            xi, fi = x[idx], filled[idx]
            both = torch.cat([torch.where(masks, fi, xi), torch.where(masks, xi, fi)])
            prob = F.softmax(model(pad(both))[: len(both)].float(), dim=1)
            t = targets[idx]
            p_del = prob[: len(part)].gather(1, t[:, None])[:, 0].cpu().numpy()
            p_ins = prob[len(part):].gather(1, t[:, None])[:, 0].cpu().numpy()
            for j, (i, k) in enumerate(part):
                dele[i, k], ins[i, k] = p_del[j], p_ins[j]
    return dele, ins


def auc(curves: np.ndarray) -> np.ndarray:
    """Area under curves sampled at equal steps over [0, 1] (trapezoids)."""
    c = np.asarray(curves, dtype=np.float64)
    steps = c.shape[-1] - 1
    return ((c[..., :-1] + c[..., 1:]).sum(-1) / (2 * steps)).astype(np.float32)


def downsample(maps: np.ndarray, size: int) -> np.ndarray:
    """N x H x W -> N x size x size by area averaging (for the per-class mean maps)."""
    t = torch.as_tensor(np.nan_to_num(np.asarray(maps, dtype=np.float32)))[:, None]
    return F.adaptive_avg_pool2d(t, size)[:, 0].numpy()


def normalized(maps: np.ndarray) -> np.ndarray:
    """Each map's non-negative part scaled to sum 1 (zero maps stay zero), so that images weigh
    alike in a class's mean map."""
    m = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    s = m.sum(axis=(-2, -1), keepdims=True)
    return (m / np.where(s > 0, s, 1)).astype(np.float32)
