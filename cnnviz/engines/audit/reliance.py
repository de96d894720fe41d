"""What the audit keeps per image for its sections on what the model relies on, and those sections'
numbers: failure slices (`cnnviz.engines.concepts.slices`) and, per class, strategy clusters of the
maps (`cnnviz.engines.concepts.strategies`, SpRAy).

Per image, beside the audit's other per-image numbers (so memory grows by this much per image, and
nothing else does):
- every method's map downsized to STRATEGY_SIZE x STRATEGY_SIZE (float16: 2 KB per method), what
  SpRAy clusters and where the slices' maps sit;
- the penultimate features (the input of the model's last linear layer), projected to at most
  FEATURE_DIMS dimensions by a fixed random Gaussian matrix (float16: 256 bytes): a
  Johnson-Lindenstrauss projection keeps the cosine distances the slices are grouped by, within a
  few per cent, whatever the width of the layer;
- four colour numbers (`slices.colour_stats`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRATEGY_SIZE = 32
FEATURE_DIMS = 128
PROJECTION_SEED = 20190311  # Lapuschkin et al.'s publication date: any fixed number does


def penultimate(model: nn.Module) -> str | None:
    """The name of the model's last `nn.Linear` (its input is the penultimate features), or None."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


@contextlib.contextmanager
def features_of(model: nn.Module, name: str | None):
    """Collects the (flattened) input of module `name` during the forward passes inside; the hook is
    removed on exit, even after an error."""
    got: list[torch.Tensor] = []
    if name is None:
        yield got
        return
    module = dict(model.named_modules())[name]
    handle = module.register_forward_pre_hook(lambda m, args: got.append(args[0].detach().flatten(1).float().cpu()))
    try:
        yield got
    finally:
        handle.remove()


def feature_width(lm, name) -> int | None:
    """The width of the penultimate features (the last linear layer's input), None without one."""
    if name is None:
        return None
    return int(dict(lm.model.named_modules())[name].in_features)


def pixels(lm, path):
    """The model's input crop of an audited image, read again (None if it is gone or unreadable now)."""
    try:
        return lm.prepare(path)[0]
    except Exception:  # noqa: BLE001 - a file gone or changed since it was audited: drawn black
        return None


def projection(dims: int) -> np.ndarray:
    """dims x min(dims, FEATURE_DIMS): identity when the features are narrow enough, else a Gaussian
    matrix scaled by 1/sqrt(k), the same in every process (seeded)."""
    if dims <= FEATURE_DIMS:
        return np.eye(dims, dtype=np.float32)
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((dims, FEATURE_DIMS)) / np.sqrt(FEATURE_DIMS)).astype(np.float32)


def empty(n: int, m: int, dims: int | None) -> dict:
    k = 0 if dims is None else min(dims, FEATURE_DIMS)
    return {"strategy_maps": np.zeros((n, m, STRATEGY_SIZE, STRATEGY_SIZE), np.float16),
            "features": np.zeros((n, k), np.float16), "colours": np.zeros((n, 4), np.float32)}


PER_IMAGE = ("strategy_maps", "features", "colours")


def small_maps(maps: np.ndarray) -> np.ndarray:
    """N x M x H x W maps -> N x M x S x S (area-averaged; NaN as 0)."""
    n, m, h, w = maps.shape
    t = torch.from_numpy(np.nan_to_num(maps.reshape(n * m, 1, h, w).astype(np.float32)))
    return F.adaptive_avg_pool2d(t, STRATEGY_SIZE).reshape(n, m, STRATEGY_SIZE, STRATEGY_SIZE).numpy()


def update(state: dict, idx: np.ndarray, maps: np.ndarray, feats: list, pixels: np.ndarray) -> None:
    from ..concepts.slices import colour_stats

    state["strategy_maps"][idx] = small_maps(maps).astype(np.float16)
    state["colours"][idx] = colour_stats(pixels)
    if feats and state["features"].shape[1]:
        f = torch.cat(feats)[: len(idx)].numpy()
        state["features"][idx] = (f @ projection(f.shape[1])).astype(np.float16)


THUMBS = 8       # images shown per slice
THUMB_SIZE = 64  # px


def thumbnails(read, rows) -> np.ndarray:
    """uint8 len(rows) x THUMB_SIZE x THUMB_SIZE x 3 of the model's input crops of audited images
    `rows` (read(row) -> H x W x 3 uint8, None if the file is gone: a black square)."""
    out = np.zeros((len(rows), THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    for i, r in enumerate(rows):
        px = read(int(r))
        if px is not None:
            t = torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1)[None].float()
            out[i] = F.interpolate(t, size=(THUMB_SIZE, THUMB_SIZE), mode="area")[0].permute(1, 2, 0).round() \
                .clamp(0, 255).byte().numpy()
    return out


def slices(state: dict, idx: np.ndarray, correct: np.ndarray, known: np.ndarray, confidence: np.ndarray,
           classes: np.ndarray, method: int, family, read=None) -> dict:
    """The failure slices by features and by the maps of method `method` (index), as the result's
    arrays and params. correct/known/confidence/classes: per audited image."""
    from ..concepts.slices import failure_slices, map_stats

    right = np.where(known, correct.astype(np.float64), np.nan)
    maps = state["strategy_maps"][idx, method].astype(np.float32)
    mstats = map_stats(maps)
    colours = state["colours"][idx]
    fam, names = family(classes)
    out_arrays, out_params = {}, {}
    shown = []
    for by, emb in (("features", state["features"][idx].astype(np.float32)), ("maps", maps.reshape(len(idx), -1))):
        found = failure_slices(emb, right, confidence, colours=colours, mapstats=mstats, families=fam,
                               family_names=names) if emb.size and emb.shape[1] else []
        member = -np.ones(len(idx), np.int64)
        for j, s in enumerate(found):
            member[s.members] = j
            first = s.members[np.argsort(confidence[s.members], kind="stable")][:THUMBS]  # the least sure first
            shown.append(np.concatenate([first, -np.ones(THUMBS - len(first), np.int64)]))
        out_arrays[f"slice_by_{by}"] = member
        out_params[f"slices_by_{by}"] = [
            {"size": s.size, "wrong": s.wrong, "unsure": s.unsure, "neighbour_accuracy": _f(s.neighbour_accuracy),
             "random_accuracy": _f(s.random_accuracy), "random_accuracy_low": _f(s.random_accuracy_low),
             "finding": s.finding, "shares": s.shares, "neighbours": [int(v) for v in s.neighbours]}
            for s in found]
    index = np.stack(shown) if shown else np.zeros((0, THUMBS), np.int64)
    out_arrays["slice_thumb_index"] = index
    flat = [int(v) for v in index.ravel() if v >= 0]
    thumbs = thumbnails(read, flat) if read is not None else np.zeros((len(flat), THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    full = np.zeros((*index.shape, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    full[index >= 0] = thumbs
    out_arrays["slice_thumbs"] = full
    out_params["slices_method"] = method
    out_params["slices_low_confidence"] = 0.5
    out_params["slices_features"] = ("the input of the model's last linear layer" if state["features"].shape[1]
                                     else None)
    return {"arrays": out_arrays, "params": out_params}


def most_faithful(state: dict, idx: np.ndarray, methods) -> int:
    """The index of the method whose maps were most faithful on this model: the largest mean
    insertion AUC minus deletion AUC over the audited images (the first method on a tie or
    without numbers)."""
    score = np.nanmean(state["insertion_auc"][idx] - state["deletion_auc"][idx], 0) if len(idx) else None
    if score is None or not np.isfinite(score).any():
        return 0
    return int(np.nanargmax(score))


def families(lm):
    """class indices -> (family index per image, family names): the coarse families of
    `cnnviz.taxonomy` for a model with ImageNet-1k's classes, else each class its own family."""
    from ...sources.torchvision import imagenet_categories

    if list(lm.categories) == imagenet_categories():
        from ...taxonomy import family_index
        from ...taxonomy import families as names

        return lambda classes: (np.array([family_index(int(c)) for c in classes], np.int64), names())
    return lambda classes: (np.asarray(classes, np.int64), [lm.class_name(i) for i in range(len(lm.categories))])


def _f(v) -> float | None:
    return float(v) if np.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# Concepts (TCAV) in the audit

MAX_CONCEPT_CLASSES = 8


def check_concepts(concepts) -> dict | None:
    """The concept folders, checked before any work (None: no concept section)."""
    if not concepts:
        return None
    from ..concepts.tcav_core import check_concepts as check

    check(concepts)
    return dict(concepts)


def concept_classes(state: dict, idx: np.ndarray, labels: np.ndarray, asked, lm) -> list[int]:
    """The classes TCAV tests: those asked (names or indices), else the most frequent classes of the
    audited images (the true class where labelled, the predicted one elsewhere) with at least 5
    images, at most MAX_CONCEPT_CLASSES."""
    if asked:
        asked = asked.split(",") if isinstance(asked, str) else list(asked)
        return [lm.class_index(str(c).strip()) for c in asked]
    cls = np.where(labels[idx] >= 0, labels[idx], state["top5"][idx, 0])
    values, counts = np.unique(cls, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [int(values[i]) for i in order if counts[i] >= 5][:MAX_CONCEPT_CLASSES]


def concepts(lm, ds, readable: np.ndarray, state: dict, folders: dict, asked, ckpt, dev, progress):
    """TCAV (`cnnviz.engines.concepts.tcav`) of the concept folders for the audit's classes, on the
    audited images: each counts for its true class where labelled, else for its predicted class;
    the random sets are drawn from the same images. Resumable: its progress goes beside the audit's
    (PATH.tcav). Returns the TcavResult, or None when no class has 5 images."""
    import csv
    import tempfile
    from pathlib import Path

    from ..concepts.tcav import tcav

    idx = np.flatnonzero(readable)
    classes = concept_classes(state, idx, ds.labels, asked, lm)
    if not classes:
        return None
    cls = np.where(ds.labels[idx] >= 0, ds.labels[idx], state["top5"][idx, 0])
    with tempfile.TemporaryDirectory(prefix="cnnviz-audit-tcav-") as tmp:
        listing = Path(tmp) / "audited.csv"
        with open(listing, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "class_index"])
            for i, c in zip(idx, cls):
                w.writerow([str((Path(ds.root) / ds.files[i]).resolve()), int(c)])
        return tcav(lm, str(listing), folders, classes=[str(c) for c in classes], device=str(dev),
                    checkpoint=None if ckpt is None else Path(f"{ckpt}.tcav"), progress=progress)


def attach(result, tested) -> None:
    """The TCAV result on the audit result (`result.concepts`, drawn in the report and saved beside
    it as concepts.npz), and its summary in params["concepts_tested"]."""
    result.concepts = tested
    if tested is None:
        return
    rows = []
    for c, name in enumerate(tested.concepts):
        for k, cls in enumerate(tested.classes):
            for li, layer in enumerate(tested.layers):
                mean, rand = float(tested.score_mean[c, k, li]), float(tested.random_mean[k, li])
                rows.append({"concept": str(name), "class": int(cls), "layer": str(layer), "score": mean,
                             "random": rand, "p_corrected": float(tested.p_corrected[c, k, li]),
                             "significant": bool(tested.significant[c, k, li]),
                             "direction": "above" if mean > rand else "below"})
    result.params["concepts_tested"] = rows
    result.params["concepts_runs"] = int(tested.params.get("random_runs", 0))


# --------------------------------------------------------------------------------------------------
# Strategies (SpRAy) in the audit

MAX_STRATEGY_CLASSES = 20  # the classes with the most images are clustered


def strategies(state: dict, idx: np.ndarray, cls: np.ndarray, correct: np.ndarray, known: np.ndarray, method: int,
               read=None) -> dict:
    """SpRAy (`concepts.strategies_spray.spray`) on each class's maps of method `method` (index),
    for the classes with at least its minimum of images (the true class where labelled, else the
    predicted one), the most frequent MAX_STRATEGY_CLASSES. Arrays: strategy_cluster (N: cluster of
    each image within its class, -1 not clustered), strategy_mean_maps (Z x S x S, every cluster's
    mean map, in the order of params["strategies"]), strategy_thumbs (Z x THUMBS x 64 x 64 x 3, the
    members nearest the mean map first) and strategy_thumb_index."""
    from ..concepts.strategies_spray import MIN_IMAGES, spray

    maps = state["strategy_maps"][idx, method].astype(np.float32)
    values, counts = np.unique(cls, return_counts=True)
    order = [int(values[i]) for i in np.argsort(-counts, kind="stable") if counts[i] >= MIN_IMAGES]
    member = -np.ones(len(idx), np.int64)
    summary, means, shown = [], [], []
    for k in order[:MAX_STRATEGY_CLASSES]:
        rows = np.flatnonzero(cls == k)
        sp = spray(maps[rows], size=STRATEGY_SIZE, tsne=False)
        member[rows] = sp.labels
        clusters = []
        for c in sp.clusters:
            mine = rows[c.members]
            right = correct[mine][known[mine]]
            near = np.argsort(((sp.small[c.members] - c.mean_map[None] / max(c.mean_map.sum(), 1e-12)) ** 2)
                              .sum((1, 2)), kind="stable")[:THUMBS]
            pick = mine[near]
            shown.append(np.concatenate([pick, -np.ones(THUMBS - len(pick), np.int64)]))
            means.append(c.mean_map.astype(np.float32))
            clusters.append({"size": c.size, "accuracy": float(right.mean()) if right.size else None,
                             "concentration": float(c.concentration), "area": float(c.area),
                             "overlap": float(c.overlap), "peak_spread": float(c.peak_spread),
                             "peak": [float(v) for v in c.peak], "flag": bool(c.flag), "reason": c.reason})
        summary.append({"class": k, "images": int(len(rows)), "n_clusters": int(sp.n_clusters),
                        "chosen_by": sp.chosen_by, "clusters": clusters})
    index = np.stack(shown) if shown else np.zeros((0, THUMBS), np.int64)
    flat = [int(v) for v in index.ravel() if v >= 0]
    thumbs = thumbnails(read, flat) if read is not None else np.zeros((len(flat), THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    full = np.zeros((*index.shape, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    full[index >= 0] = thumbs
    return {"arrays": {"strategy_cluster": member, "strategy_thumb_index": index, "strategy_thumbs": full,
                       "strategy_mean_maps": np.stack(means) if means else
                       np.zeros((0, STRATEGY_SIZE, STRATEGY_SIZE), np.float32)},
            "params": {"strategies": summary, "strategies_method": method,
                       "strategies_rule": "SpRAy (Lapuschkin et al. 2019) on each class's maps at "
                                          f"{STRATEGY_SIZE}x{STRATEGY_SIZE}: kNN graph, eigengap, k-means"}}
