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
- the random baseline: a map of smooth noise (`random_maps`) run through deletion and insertion
  like the methods: a method whose areas are no better than it does not explain the model;
- pointing game and energy in a box (Zhang et al. 2016; Wang et al. 2020);
- the uncertainty of each estimate (`report_intervals`): Wilson 95 % intervals of accuracies,
  Student t 95 % intervals over images of the areas, and per map the share of images on which it
  beats that image's random map, with the paired difference's interval (`beats_share`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ...batching import pad

BLUR_SIGMA = 10.0  # px of the model's input, as Integrated Gradients' "blur" baseline
RANDOM_CELL = 32  # px: the cells of the random baseline map (the stride of Lite0's and ResNet's last maps)
RANDOM_SEED = 20180816


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


def peak(amap: np.ndarray) -> tuple[int, int]:
    """(y, x) of a map's maximum. Where the maximum is a plateau of equal values (a coarse map made
    of blocks, as occlusion's), the plateau's pixel nearest to the plateau's mean position: its
    centre, not its first pixel in reading order, which would favour the top-left corner of every
    block (ties: the first in reading order)."""
    m = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=-np.inf)
    ys, xs = np.nonzero(m == m.max())
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


def box_scores(maps: np.ndarray, boxes: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Pointing game hit (the map's maximum, `peak`, inside a box) and energy share inside the boxes,
    per map. maps N x H x W; boxes per map: a list of [x0, y0, x1, y1] in crop pixels (corners)."""
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
        y, x = peak(maps[i])
        hit[i] = float(mask[y, x])
        energy[i] = float(m[mask].sum() / m.sum()) if m.sum() > 0 else np.nan
    return hit, energy


def blur_fill(x: torch.Tensor) -> torch.Tensor:
    """The image blurred with a Gaussian of BLUR_SIGMA px (details gone, colours kept)."""
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(3 * BLUR_SIGMA) + 1
    # an input smaller than the kernel (a 24 px model): the kernel cut to the image (reflect padding
    # needs fewer pixels of pad than the side), the same Gaussian truncated
    k = min(k, 2 * min(x.shape[-2:]) - 1)
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
                       steps: int, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves: probabilities of `targets` at step k = 0..steps, when the
    first round(k * H * W / steps) pixels of the map's order are filled (deletion) or restored
    (insertion). maps: N x H x W (curves N x (steps + 1)) or N x M x H x W, M maps per image
    (curves N x M x (steps + 1)). The two ends of every curve are the image itself and the filled
    image, the same for every map: each is one forward pass per image. The model runs under
    inference mode on `batch` images at a time, padded to full groups."""
    single = maps.dim() == 3
    maps = maps[:, None] if single else maps
    n, m = maps.shape[:2]
    _, _, h, w = x.shape
    order = pixel_order(maps.reshape(n * m, h, w)).view(n, m, h * w)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    # a job: (image, map, step, restore): restore=False fills the first counts[step] pixels (deletion),
    # restore=True keeps them and fills the rest (insertion); map -1: the image (0) or the filled image
    jobs = [(i, -1, e, False) for i in range(n) for e in (0, steps)]
    jobs += [(i, j, k, r) for i in range(n) for j in range(m) for k in range(1, steps) for r in (False, True)]
    prob = np.zeros(len(jobs), np.float32)
    with torch.inference_mode():
        for lo in range(0, len(jobs), batch):
            part = jobs[lo:lo + batch]
            masks = torch.zeros(len(part), h * w, dtype=torch.bool, device=x.device)
            for q, (i, j, k, _) in enumerate(part):
                if j < 0:
                    masks[q] = k > 0
                else:
                    masks[q, order[i, j, :counts[k]]] = True
            masks = masks.view(len(part), 1, h, w)
            idx = torch.tensor([i for i, *_ in part], device=x.device)
            restore = torch.tensor([r for *_, r in part], device=x.device).view(-1, 1, 1, 1)
            xi, fi = x[idx], filled[idx]
            inputs = torch.where(masks ^ restore, fi, xi)
            p = F.softmax(model(pad(inputs))[: len(part)].float(), dim=1)
            prob[lo:lo + len(part)] = p.gather(1, targets[idx][:, None])[:, 0].cpu().numpy()
    dele = np.zeros((n, m, steps + 1), np.float32)
    ins = np.zeros((n, m, steps + 1), np.float32)
    for (i, j, k, r), v in zip(jobs, prob):
        if j < 0:  # the image (k = 0) and the filled image (k = steps): the two ends of every curve
            dele[i, :, k] = v
            ins[i, :, steps - k] = v
        elif r:
            ins[i, j, k] = v
        else:
            dele[i, j, k] = v
    return (dele[:, 0], ins[:, 0]) if single else (dele, ins)


def random_maps(indices, size: tuple[int, int], cell: int = RANDOM_CELL, seed: int = RANDOM_SEED) -> np.ndarray:
    """The random baseline of the faithfulness section: per image, uniform noise on a grid of
    `cell`-pixel cells, upsampled bilinearly to `size` (smooth blobs at the scale of a Grad-CAM map,
    not pixel noise, whose scattered deletion fools a network in its own way). Drawn from a
    generator seeded with (seed, image index): the same map whatever the chunks, resumes or ranks."""
    h, w = size
    gh, gw = max(1, -(-h // cell)), max(1, -(-w // cell))
    grids = np.stack([np.random.default_rng([seed, int(i)]).random((gh, gw)) for i in indices]).astype(np.float32)
    up = F.interpolate(torch.as_tensor(grids)[:, None], size=(h, w), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def to_fixed(values, bits: int) -> np.ndarray:
    """Values as int64 multiples of 2**-bits. Running sums kept so are exact whatever the order of the
    additions: a resumed, a distributed and an uninterrupted audit add the same numbers in other
    orders and must end with the same bits."""
    return np.round(np.asarray(values, dtype=np.float64) * 2.0 ** bits).astype(np.int64)


def from_fixed(values, bits: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) / 2.0 ** bits


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


# --- uncertainty of the report's estimates (issue 29 item 5) -------------------------------------

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval (Wilson 1927) of a binomial proportion k / n, 95 % by default:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). Unlike p -+ z sqrt(p(1-p)/n) it
    stays inside [0, 1] and is not empty at k = 0 or k = n. None for n = 0."""
    k, n = int(k), int(n)
    if n <= 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (0.0 if k == 0 else float(max(0.0, c - h))), (1.0 if k == n else float(min(1.0, c + h)))


def _t_cdf(t: float, df: int) -> float:
    """Student's t distribution function, by Simpson's rule on the density (no scipy at run time)."""
    from math import exp, lgamma, log, pi

    if t == 0:
        return 0.5
    c = lgamma((df + 1) / 2) - lgamma(df / 2) - 0.5 * log(df * pi)
    x = np.linspace(0.0, abs(t), 2001)
    f = np.exp(c - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    area = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + (area if t > 0 else -area)


@functools.lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """Student's t quantile (bisection on `_t_cdf`), e.g. t_quantile(0.975, 9) = 2.262."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values) -> dict | None:
    """Mean of the finite values with its 95 % t-interval over them ({"mean", "lo", "hi", "n"};
    lo = hi = None with one value; None with none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    half = t_quantile(0.975, v.size - 1) * float(v.std(ddof=1)) / np.sqrt(v.size)
    return {"mean": mean, "lo": float(mean - half), "hi": float(mean + half), "n": int(v.size)}


def beats_share(method_auc, random_auc, lower_is_better: bool) -> dict | None:
    """On how many images a map's area is better than the random map's (strictly; ties count as
    not better), and the mean paired difference (method - random) with its 95 % t-interval: the
    map beats the random one on this data when that interval excludes 0 on the right side.
    {"share", "wins", "n", "diff": mean_interval}; None without images where both are finite."""
    a, b = np.asarray(method_auc, np.float64), np.asarray(random_auc, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return None
    a, b = a[ok], b[ok]
    wins = int(((a < b) if lower_is_better else (a > b)).sum())
    diff = mean_interval(a - b)
    better = None
    if diff["lo"] is not None:
        better = bool(diff["hi"] < 0) if lower_is_better else bool(diff["lo"] > 0)
        worse = bool(diff["lo"] > 0) if lower_is_better else bool(diff["hi"] < 0)
        better = "better" if better else ("worse" if worse else "undecided")
    return {"share": wins / len(a), "wins": wins, "n": int(len(a)), "diff": diff, "verdict": better}


def sparse_bins(count) -> dict:
    """The reliability bins that hold only one or two images: their accuracy is 0, 50 or 100 %
    by construction, so their gap to the confidence is mostly chance. {"bins", "images", "of_bins"}."""
    count = np.asarray(count)
    few = (count > 0) & (count <= 2)
    return {"bins": int(few.sum()), "images": int(count[few].sum()), "of_bins": int((count > 0).sum())}


def report_intervals(state, idx, methods, known, correct, top5, labels, bin_count, class_counts, class_correct,
                     unit_info) -> dict:
    """The intervals and notes of the report (issue 29 item 5), saved in params so that a redraw
    shows them: Wilson 95 % intervals of top-1, top-5 and per-class accuracy (with their n), 95 %
    t-intervals over images of the deletion and insertion areas (methods and random map), the share
    of images on which each map beats the random map with the paired difference's interval, the
    reliability bins holding one or two images, and the classes of one image behind selectivity."""
    nl = int(known.sum())
    out: dict = {}
    if nl:
        right1 = int(correct[known].sum())
        right5 = int((top5[known] == labels[known, None]).any(1).sum())
        out.update(top1_right=right1, top5_right=right5, top1_interval=wilson(right1, nl),
                   top5_interval=wilson(right5, nl), ece_sparse_bins=sparse_bins(bin_count))
        out["class_accuracy_interval"] = [wilson(int(c), int(n)) for c, n in zip(class_correct, class_counts)]
    for which, lower in (("deletion", True), ("insertion", False)):
        per = state[f"{which}_auc"][idx]
        base = state[f"baseline_{which}_auc"][idx]
        out[f"{which}_auc_interval"] = {m: mean_interval(per[:, j]) for j, m in enumerate(methods)}
        out[f"baseline_{which}_auc_interval"] = mean_interval(base)
        out[f"{which}_beats_random"] = {m: beats_share(per[:, j], base, lower) for j, m in enumerate(methods)}
    if unit_info is not None:
        out["unit_classes"] = int((class_counts > 0).sum())
        out["unit_single_image_classes"] = int((class_counts == 1).sum())
    import json

    return json.loads(json.dumps(out))  # JSON's own types (lists, not tuples): equal to the saved params when read
