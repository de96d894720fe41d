"""From the maps of a strategies run to its result: each class clustered by `spray`, its clusters'
mean maps brought to the model's input crop, representative images read back, flags gathered."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ParameterError
from .strategies_result import StrategiesResult
from .strategies_spray import MIN_IMAGES, spray


def _to_crop(mean_map: np.ndarray, h: int, w: int) -> np.ndarray:
    """A mean map (sums to 1) at KEEP x KEEP to the crop's h x w pixels (bilinear), again summing to 1."""
    t = torch.as_tensor(mean_map, dtype=torch.float32)[None, None]
    up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp_min(0).numpy()
    s = up.sum()
    return (up / s if s > 0 else up).astype(np.float32)


def _thumb(lm, path, side: int) -> np.ndarray:
    from PIL import Image

    pixels = lm.prepare(path)[0]
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


def build(lm, ds, data, sel, state, skipped, asked, labelled, opts, prov) -> StrategiesResult:
    readable = state["readable"]
    rows = np.flatnonzero(readable)
    files_idx = sel[rows]
    labels = ds.labels[files_idx]
    predicted = state["predicted"][rows]
    image_class = labels if labelled else predicted
    maps = state["maps"][rows]  # KEEP x KEEP, for the mean maps
    pos = np.clip(maps.astype(np.float64), 0, None)
    tot = pos.sum(axis=(1, 2), keepdims=True)
    pos = pos / np.where(tot > 0, tot, 1)
    pooled = state["small"][rows]  # positive part at size x size: SpRAy's input
    h, w = lm.input_size
    classes = asked or sorted(set(int(c) for c in image_class))
    R, T = opts["representatives"], opts["thumb"]
    E = opts["max_clusters"] + 1
    n = len(rows)
    cluster = np.full(n, -1, np.int64)
    embedding = np.zeros((n, 2), np.float32)
    small = np.zeros((n, opts["size"], opts["size"]), np.float32)
    kept_classes, class_k, eigen = [], [], []
    cl_rows: dict[str, list] = {k: [] for k in ("cls", "size", "correct", "map", "conc", "area", "overlap", "spread",
                                                "outside", "flag", "reason", "rep")}
    skipped_classes, flags = [], []
    for c in classes:
        members = np.flatnonzero(image_class == c)
        name = lm.class_name(c)
        if len(members) < MIN_IMAGES:
            if c in asked:
                raise ParameterError(f"class {name!r} has {len(members)} readable image(s) "
                                     f"{'predicted as it ' if not labelled else ''}in {str(data)!r}; clustering its "
                                     f"maps needs at least {MIN_IMAGES}: add images or leave it out")
            skipped_classes.append({"class": int(c), "name": name, "images": int(len(members))})
            continue
        sp = spray(pooled[members], size=opts["size"], n_clusters=opts["n_clusters"], max_clusters=opts["max_clusters"],
                   k_neighbours=opts["k_neighbours"], seed=opts["seed"])
        kept_classes.append(int(c))
        class_k.append(sp.n_clusters)
        ev = np.full(E, np.nan, np.float32)
        ev[: min(E, len(sp.eigenvalues))] = sp.eigenvalues[:E]
        eigen.append(ev)
        embedding[members] = sp.embedding
        small[members] = sp.small
        for j, cl in enumerate(sp.clusters):
            q = len(cl_rows["cls"])
            idx = members[cl.members]
            cluster[idx] = q
            correct = int((predicted[idx] == labels[idx]).sum()) if labelled else -1
            centre = sp.spectral[cl.members].mean(0)
            near = cl.members[np.argsort(((sp.spectral[cl.members] - centre) ** 2).sum(1), kind="stable")][:R]
            rep = np.full(R, -1, np.int64)
            rep[: len(near)] = members[near]
            for key, v in (("cls", int(c)), ("size", cl.size), ("correct", correct),
                           ("map", _to_crop(pos[idx].mean(0), h, w)), ("conc", cl.concentration), ("area", cl.area),
                           ("overlap", cl.overlap), ("spread", cl.peak_spread),
                           ("outside", np.nan if cl.outside is None else cl.outside), ("flag", cl.flag),
                           ("reason", cl.reason), ("rep", rep)):
                cl_rows[key].append(v)
            if cl.flag:
                flags.append({"class": int(c), "class_name": name, "cluster": q, "cluster_in_class": j,
                              "size": cl.size, "reason": cl.reason})
    if not kept_classes:
        most = max((s["images"] for s in skipped_classes), default=0)
        raise ParameterError(f"no class of {str(data)!r} has {MIN_IMAGES} readable images "
                             f"{'by label' if labelled else 'by prediction'} (the most: {most}); SpRAy clusters a "
                             f"class's maps and needs at least {MIN_IMAGES} per class")
    keep = cluster >= 0
    order = np.flatnonzero(keep)
    remap = -np.ones(n, np.int64)
    remap[order] = np.arange(len(order))
    Q = len(cl_rows["cls"])
    rep_index = np.stack(cl_rows["rep"]) if Q else np.zeros((0, R), np.int64)
    rep_images = np.zeros((Q, R, T, T, 3), np.uint8)
    for q in range(Q):
        for r, i in enumerate(rep_index[q]):
            if i >= 0:
                rep_images[q, r] = _thumb(lm, ds.root / ds.files[files_idx[i]], T)
    rep_index = np.where(rep_index >= 0, remap[np.maximum(rep_index, 0)], -1)
    f32 = lambda key: np.asarray(cl_rows[key], np.float32)  # noqa: E731
    names = {str(int(c)): lm.class_name(int(c)) for c in set(kept_classes) | set(predicted.tolist())
             | set(labels[labels >= 0].tolist())}
    params = {
        **opts, "data": str(data) if not isinstance(data, (list, tuple)) else "list", "root": str(ds.root.resolve()),
        "label_source": ds.label_source, "has_labels": bool(labelled), "num_files": len(ds.files),
        "num_images": int(keep.sum()), "class_names": names, "cluster_reasons": list(cl_rows["reason"]),
        "flags": flags, "skipped_classes": skipped_classes, "min_images": MIN_IMAGES,
        "explained_class": "each image's label" if labelled else "each image's top-1 predicted class",
        "clustering": "SpRAy: positive part, area-averaged to size x size, scaled to sum 1; symmetric kNN graph "
                      "(CoRelAy SparseKNN); normalized Laplacian; eigengap; k-means on the row-normalized "
                      "eigenvectors; t-SNE of the maps for the embedding",
        "skipped_reasons": [why for _, why in skipped], "input_size": [h, w]}
    return StrategiesResult(
        params=params, provenance=prov, files=np.asarray([ds.files[i] for i in files_idx[keep]], dtype=str),
        labels=labels[keep], predicted=predicted[keep], prob=state["prob"][rows][keep].astype(np.float32),
        image_class=image_class[keep].astype(np.int64), cluster=cluster[keep], embedding=embedding[keep],
        small_maps=small[keep], classes=np.asarray(kept_classes, np.int64), class_k=np.asarray(class_k, np.int64),
        eigenvalues=np.stack(eigen).astype(np.float32), cluster_class=np.asarray(cl_rows["cls"], np.int64),
        cluster_size=np.asarray(cl_rows["size"], np.int64), cluster_correct=np.asarray(cl_rows["correct"], np.int64),
        cluster_maps=np.stack(cl_rows["map"]).astype(np.float32), cluster_concentration=f32("conc"),
        cluster_area=f32("area"), cluster_overlap=f32("overlap"), cluster_spread=f32("spread"),
        cluster_outside=f32("outside"), cluster_flag=np.asarray(cl_rows["flag"], bool), rep_index=rep_index,
        rep_images=rep_images, skipped=np.asarray([f for f, _ in skipped], dtype=str))
