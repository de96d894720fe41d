"""Nearest neighbours in feature space (Krizhevsky et al. 2012, Sec. 6.1, Fig. 4 right).

Krizhevsky et al. showed, for test images, the training images whose last hidden layer's feature
vectors lie nearest in Euclidean distance: the neighbours share the class although their pixels
differ (poses, colours, backgrounds), so the network's feature space groups by meaning, not by
pixels. Here each image's output at a chosen layer is average-pooled over positions
(`cnnviz.engines.units.features`) and the k images of a data set nearest to each query are kept, by
Euclidean distance or cosine distance (1 - cosine similarity). A data-set file that is the query
itself is never its own neighbour.

With labels, `hit_rate` measures the same property over the whole data set: the share of each
image's k nearest others that are in its group, against the share that a random choice would give.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ... import schema as S
from ...errors import ImageError, ParameterError
from ...images import load_image
from ...layers import capture
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import model_on_device, resolve_device
from ..units.features import _pool, group_labels, pooled_features, read_labels, resolve_layers

__api__ = ("neighbours",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

METRICS = ("euclidean", "cosine")
THUMB = 112


@dataclasses.dataclass
class NeighboursResult(Result):
    """The k nearest data-set images of each query.

    queries: uint8 Q x h x w x 3, the queries' input crops (thumbnails).
    neighbours: uint8 Q x k x h x w x 3, their nearest images, nearest first.
    distance: float32 Q x k. index: int64 Q x k, into `files`.
    files: str N, the data set, relative to params["root"].
    params: layer, metric, k, query_names, query_groups / neighbour_groups (with labels), hit_rate and
      hit_chance (leave-one-out over the data set, with labels).
    """

    kind: ClassVar[str] = "neighbours"
    renderer: ClassVar = "cnnviz.render.experiments.neighbours:figure"
    param_schema: ClassVar[dict] = {"query_names": S.TEXTS}
    array_schema: ClassVar[dict] = {"queries": S.Arr("u", ("Q", None, None, 3)),
                                    "neighbours": S.Arr("u", ("Q", "K", None, None, 3)),
                                    "distance": S.Arr("f", ("Q", "K")), "index": S.Arr("i", ("Q", "K"))}
    queries: np.ndarray = None
    neighbours: np.ndarray = None
    distance: np.ndarray = None
    index: np.ndarray = None
    files: np.ndarray = None


def distances(q: np.ndarray, X: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Q x N distances between rows of q and rows of X (float64)."""
    q, X = np.asarray(q, np.float64), np.asarray(X, np.float64)
    if metric == "euclidean":
        d2 = (q * q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2 * q @ X.T
        return np.sqrt(np.clip(d2, 0, None))
    if metric == "cosine":
        qn = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
        xn = X / np.clip(np.linalg.norm(X, axis=1, keepdims=True), 1e-12, None)
        return np.clip(1 - qn @ xn.T, 0, 2)
    raise ParameterError(f"unknown metric {metric!r}; use {', '.join(METRICS)}")


def nearest(d: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index, distance) of the k smallest entries of each row of `d` (ties: lower index first);
    entries where `exclude` is True (and NaN ones) never count."""
    d = np.where(np.isnan(d), np.inf, d)
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    order = np.lexsort((np.broadcast_to(np.arange(d.shape[1]), d.shape), d), axis=-1)[:, :k]
    return order, np.take_along_axis(d, order, 1)


def hit_rate(X: np.ndarray, groups, k: int, metric: str = "euclidean") -> tuple[float, float]:
    """Leave-one-out: (mean share of each image's k nearest others in its group, the share a random
    choice of k others would give). Images without a group (None) or features (NaN) are left out."""
    keep = np.array([g is not None for g in groups]) & ~np.isnan(X).any(1)
    X = X[keep]
    g = np.array([str(x) for x, kk in zip(groups, keep) if kk])
    n = len(g)
    if n <= k:
        raise ParameterError(f"k={k} needs more than {k} labelled images, found {n}")
    d = distances(X, X, metric)
    idx, _ = nearest(d, k, exclude=np.eye(n, dtype=bool))
    hits = (g[idx] == g[:, None]).mean(1)
    same = (g[:, None] == g[None, :]).sum(1) - 1
    return float(hits.mean()), float((same / (n - 1)).mean())


def _thumb(lm: LoadedModel, x: torch.Tensor) -> np.ndarray:
    t = torch.nn.functional.interpolate(x, size=(THUMB, THUMB), mode="bilinear", align_corners=False, antialias=True)
    return lm.preprocessing.denormalize(t)


@takes_model
def neighbours(lm: LoadedModel, queries, source, layer: str | None = None, k: int = 6, metric: str = "euclidean", labels=None,
               grouping: str = "auto", batch_size: int | None = None, device: str = "auto", checkpoint=None,
               checkpoint_every: int = 10, resume: bool = True, progress: bool | None = None,
               finish=None) -> NeighboursResult:
    """The `k` images of `source` nearest to each query (paths or PIL images) by `layer`'s pooled
    features (default: the features entering the last linear layer, Krizhevsky et al.'s choice). labels (CSV or dict; optional): group the queries and neighbours and measure the data
    set's leave-one-out `hit_rate`. checkpoint: progress file of the data set's feature scan."""
    from .datasets import list_files

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ParameterError(f"k must be a positive whole number, got {k!r}")
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; use {', '.join(METRICS)}")
    queries = list(queries) if isinstance(queries, (list, tuple)) else [queries]
    if not queries:
        raise ParameterError("no query image given")
    root, files, _ = list_files(source)
    paths = [Path(q).resolve() if isinstance(q, (str, Path)) else None for q in queries]
    data_paths = [(Path(root) / f).resolve() for f in files]
    exclude = np.array([[p is not None and p == dp for dp in data_paths] for p in paths], bool)
    available = len(files) - int(exclude.sum(1).max())
    if k > available:
        raise ParameterError(f"k={k} is larger than the {available} image(s) of the data set that a query can have as "
                             f"neighbours; use -k {available} or fewer")
    pics = [load_image(q) if isinstance(q, (str, Path)) else q for q in queries]
    if layer is None:
        from .invariance import default_layers

        layer = default_layers(lm.model, torch.zeros(1, 3, *lm.input_size))[1].address
    info = resolve_layers(lm, [layer])[0]
    groups = None
    if labels is not None:
        raw = read_labels(files, labels)
        groups, used = group_labels(raw, grouping)
    result: list[NeighboursResult] = []

    def done(feats):
        X = feats.features[info.address]
        qx = torch.cat([lm.prepare(p)[1] for p in pics])
        dev = resolve_device(device)
        from ...batching import pad

        with model_on_device(lm.model, dev) as model, torch.inference_mode(), \
                capture(model, info, reduce=_pool("mean")) as cap:
            model(pad(qx).to(dev))
            qf = cap.values[-1][:len(qx)].numpy()
        d = distances(qf, X, metric)
        skip = exclude | ~feats.ok[None, :]
        available = (~skip).sum(1).min()
        if available < k:
            raise ImageError(f"only {available} readable image(s) in the data set besides the query; use -k {available} "
                             "or fewer")
        idx, dist = nearest(d, k, skip)
        tiles = np.zeros((len(pics), k, THUMB, THUMB, 3), np.uint8)
        for q in range(len(pics)):
            for j in range(k):
                tiles[q, j] = _thumb(lm, lm.prepare(load_image(feats.root / files[idx[q, j]]))[1])[0]
        names = [Path(q).name if isinstance(q, (str, Path)) else f"query {i}" for i, q in enumerate(queries)]
        p = {**feats.params, "layer": info.address, "layer_type": info.type, "layer_shape": list(info.shape), "metric": metric, "k": k,
             "query_names": names, "skipped": [f for f, _ in feats.skipped],
             "skipped_reasons": [w for _, w in feats.skipped]}
        if groups is not None:
            try:  # a query listed in the labels, by file name; else the group of the data-set file it is
                qlab = read_labels(names, labels)
            except ImageError:
                qlab = [None] * len(names)
            qgroups = group_labels(qlab, used)[0] if any(x is not None for x in qlab) else [None] * len(names)
            for q, row in enumerate(exclude):
                if qgroups[q] is None and row.any():
                    qgroups[q] = groups[int(np.flatnonzero(row)[0])]
                    qlab[q] = raw[int(np.flatnonzero(row)[0])]
            rate, chance = hit_rate(np.where(feats.ok[:, None], X, np.nan), groups, k, metric)
            from ..units.semantics import _class_text

            p.update(neighbour_labels=[[_class_text(lm, raw[i]) for i in row] for row in idx],
                     query_labels=[_class_text(lm, x) for x in qlab])
            p.update(grouping=used, query_groups=qgroups, neighbour_groups=[[groups[i] for i in row] for row in idx],
                     hit_rate=rate, hit_chance=chance, num_labelled=int(sum(g is not None for g in groups)))
        r = NeighboursResult(params=p, provenance=provenance(lm.identity(), str(dev)), queries=_thumb(lm, qx),
                             neighbours=tiles, distance=dist.astype(np.float32), index=idx.astype(np.int64),
                             files=np.asarray(files, dtype=str))
        result.append(r)
        if finish is not None:
            finish(r)

    pooled_features(lm, source, [info], pool="mean", batch_size=batch_size, device=device, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, resume=resume, progress=progress, finish=done,
                    what="neighbours")
    return result[0]
