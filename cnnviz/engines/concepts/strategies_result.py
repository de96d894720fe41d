"""The result of `cnnviz.strategies`: each class's maps clustered (SpRAy), saved so that a script can
check where each strategy looks and `cnnviz render` can redraw the figure without the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ... import schema as S
from ...results import Result


@dataclass
class StrategiesResult(Result):
    """Spectral Relevance Analysis of a model on a data set (see `cnnviz.engines.concepts.strategies`).

    Per image analysed (N, in the data set's order): files (relative to params["root"]), labels
    (true class, -1 unknown), predicted (top-1), prob (its probability), image_class (the class
    the image was analysed for: its label where known, else the prediction), cluster (index into
    the cluster arrays), embedding (N x 2, t-SNE within its class), small_maps (N x s x s, the maps
    as SpRAy clusters them: positive part, area-averaged, scaled to sum 1).
    Per class analysed (K): classes (model class indices), class_k (its number of clusters),
    eigenvalues (K x E: the smallest eigenvalues of the kNN graph's normalized Laplacian, NaN
    padded; the eigengap among them chose class_k).
    Per cluster (Q, the clusters of every class, each class's largest first): cluster_class (model
    class index), cluster_size, cluster_correct (members predicted right; -1 without labels),
    cluster_maps (Q x H x W in the model's input-crop pixels: the members' maps, each scaled to sum
    1, averaged; each sums to 1), cluster_concentration, cluster_area, cluster_overlap,
    cluster_spread, cluster_outside (see `strategies_spray`), cluster_flag (a possible shortcut;
    the reason in params["cluster_reasons"]), rep_index (Q x R, the members nearest the cluster's
    centre in the spectral embedding, index into files, -1 empty) and rep_images (Q x R x T x T x 3,
    their input crops, downsized).
    skipped: unreadable files (reasons in params["skipped_reasons"]).
    """

    kind: ClassVar[str] = "strategies"
    renderer: ClassVar = "cnnviz.render.concepts.strategies:figure"
    param_schema: ClassVar[dict] = {
        "method": S.TEXT, "size": S.INT, "has_labels": S.BOOL, "cluster_reasons": S.TEXTS,
        "class_names": S.DICT}
    array_schema: ClassVar[dict] = {
        "files": S.Arr("U", ("N",)), "labels": S.Arr("iu", ("N",)), "predicted": S.Arr("iu", ("N",)),
        "prob": S.Arr("f", ("N",)), "image_class": S.Arr("iu", ("N",)), "cluster": S.Arr("iu", ("N",)),
        "embedding": S.Arr("f", ("N", 2)), "small_maps": S.Arr("f", ("N", "s", "s")),
        "classes": S.Arr("iu", ("K",)), "class_k": S.Arr("iu", ("K",)), "eigenvalues": S.Arr("f", ("K", "E")),
        "cluster_class": S.Arr("iu", ("Q",)), "cluster_size": S.Arr("iu", ("Q",)),
        "cluster_correct": S.Arr("iu", ("Q",)), "cluster_maps": S.Arr("f", ("Q", "H", "W")),
        "cluster_concentration": S.Arr("f", ("Q",)), "cluster_area": S.Arr("f", ("Q",)),
        "cluster_overlap": S.Arr("f", ("Q",)), "cluster_spread": S.Arr("f", ("Q",)),
        "cluster_outside": S.Arr("f", ("Q",)), "cluster_flag": S.Arr("b", ("Q",)),
        "rep_index": S.Arr("iu", ("Q", "R")), "rep_images": S.Arr("u", ("Q", "R", "T", "T", 3)),
        "skipped": S.Arr("U", ("X",))}

    files: np.ndarray = None
    labels: np.ndarray = None
    predicted: np.ndarray = None
    prob: np.ndarray = None
    image_class: np.ndarray = None
    cluster: np.ndarray = None
    embedding: np.ndarray = None
    small_maps: np.ndarray = None
    classes: np.ndarray = None
    class_k: np.ndarray = None
    eigenvalues: np.ndarray = None
    cluster_class: np.ndarray = None
    cluster_size: np.ndarray = None
    cluster_correct: np.ndarray = None
    cluster_maps: np.ndarray = None
    cluster_concentration: np.ndarray = None
    cluster_area: np.ndarray = None
    cluster_overlap: np.ndarray = None
    cluster_spread: np.ndarray = None
    cluster_outside: np.ndarray = None
    cluster_flag: np.ndarray = None
    rep_index: np.ndarray = None
    rep_images: np.ndarray = None
    skipped: np.ndarray = None

    def _key_params(self) -> str:
        p = self.params or {}
        return f"method={p.get('method')!r}, classes={len(self.classes)}, clusters={len(self.cluster_class)}"

    def clusters_of(self, cls) -> list[dict]:
        """The clusters of class `cls` (a model class index, or a name as params["class_names"] has
        it): per cluster its index, size, members (files), mean map in crop pixels, flag and reason."""
        names = {str(v).lower(): int(k) for k, v in (self.params.get("class_names") or {}).items()}
        c = names.get(str(cls).lower(), cls) if not isinstance(cls, (int, np.integer)) else int(cls)
        out = []
        for q in np.flatnonzero(self.cluster_class == int(c)):
            members = np.flatnonzero(self.cluster == q)
            out.append({"cluster": int(q), "size": int(self.cluster_size[q]), "files": [str(self.files[i]) for i in members],
                        "map": self.cluster_maps[q], "flag": bool(self.cluster_flag[q]),
                        "reason": self.params["cluster_reasons"][q]})
        return out

    @property
    def flagged(self) -> list[dict]:
        """Every cluster flagged as a possible shortcut: class, cluster, size and reason."""
        return list(self.params.get("flags") or [])
