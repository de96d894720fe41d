"""Linear probes per layer (Zeiler & Fergus 2014, Sec. 5.2, Table 7 and Fig. 9): how much of the
label a linear classifier can read from each layer's features.

Zeiler & Fergus trained a linear SVM or softmax classifier on the features of each layer of their
ImageNet network (Caltech-101, Caltech-256, PASCAL) and found the accuracy rising with depth: the
deeper layers hold more discriminative features. Here each image's output at a layer is
average-pooled over positions (one number per channel, `cnnviz.engines.units.features`), standardized,
and a multinomial logistic regression (scikit-learn, L2 penalty C) is fitted and scored by
stratified k-fold cross-validation: each image is predicted by a classifier that never saw it. The
labels are the images' classes or, for ImageNet class indices, their coarse families
(`cnnviz.taxonomy`), which makes a data set with one image per class (the bundled ImageNet sample)
usable. Groups with fewer images than folds are left out (and listed).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import numpy as np

from ...bare import takes_model
from ... import schema as S
from ...errors import ParameterError
from ...models import LoadedModel
from ...results import Result, provenance
from ..units.features import depth_layers, group_labels, pooled_features, read_labels, resolve_layers

__api__ = ("probe",)  # cnnviz.<name> (a literal: see cnnviz/__init__)


@dataclasses.dataclass
class ProbeResult(Result):
    """Probe accuracy per layer.

    fold_accuracy: float32 L x F, accuracy on each held-out fold.
    recall: float32 L x G, share of each group's images predicted right (held out).
    confusion: int64 L x G x G, held-out predictions (row: true group, column: predicted).
    dims: int64 L, feature dimension (channels) of each layer.
    params: layers, layer_shapes, groups (G names), group_counts, grouping, folds, C, chance
      (share of the largest group), num_images, dropped_groups, files skipped.
    """

    kind: ClassVar[str] = "probe"
    renderer: ClassVar = "cnnviz.render.experiments.probe:figure"
    param_schema: ClassVar[dict] = {"layers": S.TEXTS, "groups": S.TEXTS}
    array_schema: ClassVar[dict] = {"fold_accuracy": S.Arr("f", ("L", "F")), "recall": S.Arr("f", ("L", "G")),
                                    "confusion": S.Arr("i", ("L", "G", "G")), "dims": S.Arr("i", ("L",))}
    fold_accuracy: np.ndarray = None
    recall: np.ndarray = None
    confusion: np.ndarray = None
    dims: np.ndarray = None

    @property
    def accuracy(self) -> np.ndarray:
        """Mean held-out accuracy per layer."""
        return self.fold_accuracy.mean(1)


def classifier(C: float = 1.0):
    """The probe: standardized features, multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def folds_of(y: np.ndarray, folds: int, seed: int = 0):
    """The stratified folds used: (train, test) index pairs."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fit_probe(X: np.ndarray, y: np.ndarray, num_groups: int, folds: int = 5, C: float = 1.0, seed: int = 0):
    """(accuracy per fold, confusion G x G) of the probe on features X (N x C), groups y (0..G-1)."""
    acc = np.zeros(folds, np.float32)
    conf = np.zeros((num_groups, num_groups), np.int64)
    for f, (tr, te) in enumerate(folds_of(y, folds, seed)):
        clf = classifier(C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence chatter on tiny sets
            clf.fit(X[tr], y[tr])
        pred = clf.predict(X[te])
        acc[f] = np.mean(pred == y[te])
        np.add.at(conf, (y[te], pred), 1)
    return acc, conf


def check_probe_args(folds: int, C: float) -> None:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ParameterError(f"folds must be a whole number of at least 2, got {folds!r}")
    if not C > 0:
        raise ParameterError(f"C (inverse regularization strength) must be positive, got {C!r}")


@takes_model
def probe(lm: LoadedModel, source, layers=None, labels=None, grouping: str = "auto", folds: int = 5, C: float = 1.0,
          seed: int = 0, batch_size: int | None = None, device: str = "auto", checkpoint=None,
          checkpoint_every: int = 10, resume: bool = True, progress: bool | None = None, finish=None) -> ProbeResult:
    """Cross-validated linear probe accuracy at each of `layers` (default: `depth_layers`, the first
    convolution and each resolution's last stage) on the images of `source`, labelled by `labels`
    (CSV or dict; default: class folders), grouped by `grouping` ("auto", "family", "label").
    checkpoint: progress file of the feature scan (resumable); finish(result) runs before it goes."""
    check_probe_args(folds, C)
    from .datasets import list_files

    _, files, _ = list_files(source)
    raw = read_labels(files, labels)
    groups, used = group_labels(raw, grouping)
    infos = depth_layers(lm) if layers is None else resolve_layers(lm, layers)
    result: list[ProbeResult] = []

    def done(feats):
        result.append(_fit(lm, feats, groups, used, folds, C, seed))
        if finish is not None:
            finish(result[0])

    pooled_features(lm, source, infos, pool="mean", batch_size=batch_size, device=device, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, resume=resume, progress=progress, finish=done, what="probe")
    return result[0]


def _fit(lm, feats, groups, used, folds, C, seed) -> ProbeResult:
    keep = np.array([ok and g is not None for ok, g in zip(feats.ok, groups)])
    names_all = sorted({g for g, k in zip(groups, keep) if k})
    counts = {n: sum(1 for g, k in zip(groups, keep) if k and g == n) for n in names_all}
    dropped = [n for n in names_all if counts[n] < folds]
    names = [n for n in names_all if counts[n] >= folds]
    if len(names) < 2:
        raise ParameterError(f"the probe needs at least 2 {used} groups with {folds} or more images each (one per "
                             f"fold); found {len(names)} among {int(keep.sum())} labelled images: use fewer --folds, "
                             "more images or --group family")
    if used == "family":
        from ... import taxonomy

        order = taxonomy.families()
        names = sorted(names, key=order.index)
    pos = {n: i for i, n in enumerate(names)}
    rows = np.array([k and g in pos for g, k in zip(groups, keep)])
    y = np.array([pos[g] for g, r in zip(groups, rows) if r])
    L = len(feats.layers)
    acc = np.zeros((L, folds), np.float32)
    conf = np.zeros((L, len(names), len(names)), np.int64)
    for li, info in enumerate(feats.layers):
        acc[li], conf[li] = fit_probe(feats.features[info.address][rows], y, len(names), folds, C, seed)
    recall = (np.diagonal(conf, axis1=1, axis2=2) / conf.sum(2).clip(min=1)).astype(np.float32)
    share = np.bincount(y, minlength=len(names)) / len(y)
    p = {**feats.params, "layers": [i.address for i in feats.layers], "layer_types": [i.type for i in feats.layers], "layer_shapes": [list(i.shape) for i in feats.layers],
         "groups": names, "group_counts": [int(c) for c in np.bincount(y, minlength=len(names))], "grouping": used,
         "folds": folds, "C": C, "seed": seed, "chance": float(share.max()), "num_images": int(len(y)),
         "dropped_groups": dropped, "skipped": [f for f, _ in feats.skipped],
         "skipped_reasons": [w for _, w in feats.skipped],
         "classifier": "StandardScaler + multinomial LogisticRegression (L2), stratified k-fold, shuffled"}
    return ProbeResult(params=p, provenance=provenance(lm.identity(), feats.params["device"]),
                       fold_accuracy=acc, recall=recall, confusion=conf,
                       dims=np.array([i.shape[0] for i in feats.layers], np.int64))
