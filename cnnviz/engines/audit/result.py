"""The result of `cnnviz.audit`: every number of the report, so that it can be redrawn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ... import schema as S
from ...results import Result


@dataclass
class AuditResult(Result):
    """An audit of a model on a data set (see `cnnviz.engines.audit`).

    Per readable image (N, in scan order): files (str, relative to params["root"]), labels (int64,
    -1 unknown), top5 (int64 N x 5), top5_prob (float32 N x 5), and per method (M, `methods`):
    centre_share, deletion_auc, insertion_auc, pointing_hit, box_energy (float32 N x M; NaN where
    undefined: no box for the image, or a map without positive mass).
    Per method: deletion_curve, insertion_curve (float32 M x T, the mean over the images) at
    `fractions` (T) of the pixels.
    The random baseline (a smooth random map per image, `metrics.random_maps`): baseline_deletion_auc,
    baseline_insertion_auc (float32 N) and baseline_deletion_curve, baseline_insertion_curve (T).
    Calibration: reliability_conf, reliability_acc (float32 B; NaN for empty bins), reliability_count.
    Per class seen (K; the true class where labels are given, else the predicted one): class_indices,
    class_counts, class_correct (top-1 right, 0 without labels), class_maps (float32 K x M x s x s:
    the mean of the images' maps, each scaled to sum 1), class_images (uint8 K x s x s x 3, the mean
    input crop).
    Examples: shown_index (into files), shown_images (uint8 k x H x W x 3), shown_maps (k x M x H x W);
    misclassified ones: wrong_index, wrong_images, wrong_pred_maps and wrong_true_maps (maps of the
    predicted and of the true class).
    Sanity check (Adebayo et al. 2018): sanity_files (I), sanity_methods (M'), sanity_steps (S),
    sanity_spearman (I x M' x S).
    Units of params["layer"] (empty without a layer): unit_selectivity (float32, every unit's
    class-selectivity index), unit_index (V, the most selective first), unit_top_files (V x k, index
    into files, -1 empty), unit_top_values, unit_top_classes (true or predicted class of each top
    image) and unit_patches (uint8 V x k x r x r x 3, the receptive field at the maximum).
    skipped: unreadable files (reasons in params["skipped_reasons"]).
    What the model relies on (`reliance`; absent in audits saved before them): strategy_maps (float16
    N x M x z x z, each method's map downsized), features (float16 N x D, the projected penultimate
    features), colours (N x 4, `slices.colour_stats`), slice_by_features and slice_by_maps (int64 N:
    the failure slice of each image, -1 none; the slices in params["slices_by_features"] and
    params["slices_by_maps"]); slice_thumb_index (L x 8, index into files, -1 empty; the slices by
    features, then by maps) and slice_thumbs (uint8 L x 8 x 64 x 64 x 3, their input crops); the strategy
    clusters (SpRAy per class, params["strategies"]): strategy_cluster (N, -1 not clustered),
    strategy_mean_maps (Z x 32 x 32), strategy_thumb_index and strategy_thumbs (Z x 8 members, the most
    typical first).
    """

    kind: ClassVar[str] = "audit"
    renderer: ClassVar = "cnnviz.render.audit.figures:figure"
    report_writer: ClassVar = "cnnviz.render.audit.html:write_report"  # declared like the renderer: no import of it here
    param_schema: ClassVar[dict] = {"has_labels": S.BOOL, "num_images": S.INT, "steps": S.INT,
                                    "ece": S.optional(S.NUMBER), "top1": S.optional(S.NUMBER)}
    array_schema: ClassVar[dict] = {
        "files": S.Arr("U", ("N",)), "labels": S.Arr("iu", ("N",)), "top5": S.Arr("iu", ("N", None)),
        "top5_prob": S.Arr("f", ("N", None)), "methods": S.Arr("U", ("M",)),
        "centre_share": S.Arr("f", ("N", "M")), "deletion_auc": S.Arr("f", ("N", "M")),
        "insertion_auc": S.Arr("f", ("N", "M")), "fractions": S.Arr("f", ("T",)),
        "deletion_curve": S.Arr("f", ("M", "T")), "insertion_curve": S.Arr("f", ("M", "T")),
        "baseline_deletion_auc": S.Arr("f", ("N",)), "baseline_insertion_auc": S.Arr("f", ("N",)),
        "baseline_deletion_curve": S.Arr("f", ("T",)), "baseline_insertion_curve": S.Arr("f", ("T",)),
        "reliability_conf": S.Arr("f", ("B",)), "reliability_acc": S.Arr("f", ("B",)),
        "reliability_count": S.Arr("iu", ("B",)), "class_indices": S.Arr("iu", ("K",)),
        "class_counts": S.Arr("iu", ("K",)), "class_correct": S.Arr("iu", ("K",)),
        "class_maps": S.Arr("f", ("K", "M", "s", "s")), "class_images": S.Arr("u", ("K", "s", "s", 3)),
        "shown_index": S.Arr("iu", ("k",)), "shown_images": S.Arr("u", ("k", "H", "W", 3)),
        "shown_maps": S.Arr("f", ("k", "M", "H", "W")), "wrong_index": S.Arr("iu", ("w",)),
        "wrong_images": S.Arr("u", ("w", "H", "W", 3)), "wrong_pred_maps": S.Arr("f", ("w", "M", "H", "W")),
        "wrong_true_maps": S.Arr("f", ("w", "M", "H", "W"))}
    # what the HTML report reads beyond the summary figure (checked by `check_report`)
    report_param_schema: ClassVar[dict] = {
        "fill": S.TEXT, "num_labelled": S.optional(S.INT), "top5": S.optional(S.NUMBER),
        "confused": S.optional(S.Check(lambda v: isinstance(v, list) and all(
            isinstance(c, dict) and isinstance(c.get("true_name"), str) and isinstance(c.get("predicted_name"), str)
            and S.INT.test(c.get("count")) for c in v), "a list of {true_name, predicted_name, count}")),
        **{key: S.Check(lambda v: isinstance(v, dict) and all(isinstance(k, str) and (x is None or S.NUMBER.test(x))
                                                              for k, x in v.items()),
                        "an object of method: number or null")
           for key in ("mean_centre_share", "mean_deletion_auc", "mean_insertion_auc")},
        **{key: S.optional(S.Check(lambda v: isinstance(v, dict) and all(x is None or S.NUMBER.test(x)
                                                                         for x in v.values()),
                                   "an object of method: number or null"))
           for key in ("pointing_game", "mean_box_energy")},
        "baseline_deletion_auc": S.optional(S.NUMBER), "baseline_insertion_auc": S.optional(S.NUMBER),
        "skipped_reasons": S.optional(S.TEXTS)}
    report_array_schema: ClassVar[dict] = {
        "sanity_files": S.Arr("U", ("I",)), "sanity_methods": S.Arr("U", ("Q",)), "sanity_steps": S.Arr("U", ("S",)),
        "sanity_spearman": S.Arr("f", ("I", "Q", "S")), "unit_index": S.Arr("iu", ("V",)),
        "unit_selectivity": S.Arr("f", ("C",)), "unit_top_files": S.Arr("iu", ("V", "k")),
        "unit_top_values": S.Arr("f", ("V", "k")), "unit_top_classes": S.Arr("iu", ("V", "k")),
        "unit_patches": S.Arr("u", ("V", "k", None, None, 3)),
        "strategy_maps": S.Arr("f", ("N", "M", "z", "z")), "features": S.Arr("f", ("N", None)),
        "colours": S.Arr("f", ("N", 4)), "slice_by_features": S.Arr("i", ("N",)), "slice_by_maps": S.Arr("i", ("N",)),
        "slice_thumb_index": S.Arr("i", ("L", None)), "slice_thumbs": S.Arr("u", ("L", None, None, None, 3)),
        "strategy_cluster": S.Arr("i", ("N",)), "strategy_mean_maps": S.Arr("f", ("Z", None, None)),
        "strategy_thumb_index": S.Arr("i", ("Z", None)), "strategy_thumbs": S.Arr("u", ("Z", None, None, None, 3))}

    files: np.ndarray = None
    labels: np.ndarray = None
    top5: np.ndarray = None
    top5_prob: np.ndarray = None
    methods: np.ndarray = None
    centre_share: np.ndarray = None
    deletion_auc: np.ndarray = None
    insertion_auc: np.ndarray = None
    pointing_hit: np.ndarray = None
    box_energy: np.ndarray = None
    fractions: np.ndarray = None
    deletion_curve: np.ndarray = None
    insertion_curve: np.ndarray = None
    baseline_deletion_auc: np.ndarray = None
    baseline_insertion_auc: np.ndarray = None
    baseline_deletion_curve: np.ndarray = None
    baseline_insertion_curve: np.ndarray = None
    reliability_conf: np.ndarray = None
    reliability_acc: np.ndarray = None
    reliability_count: np.ndarray = None
    class_indices: np.ndarray = None
    class_counts: np.ndarray = None
    class_correct: np.ndarray = None
    class_maps: np.ndarray = None
    class_images: np.ndarray = None
    shown_index: np.ndarray = None
    shown_images: np.ndarray = None
    shown_maps: np.ndarray = None
    wrong_index: np.ndarray = None
    wrong_images: np.ndarray = None
    wrong_pred_maps: np.ndarray = None
    wrong_true_maps: np.ndarray = None
    sanity_files: np.ndarray = None
    sanity_methods: np.ndarray = None
    sanity_steps: np.ndarray = None
    sanity_spearman: np.ndarray = None
    unit_index: np.ndarray = None
    unit_selectivity: np.ndarray = None
    unit_top_files: np.ndarray = None
    unit_top_values: np.ndarray = None
    unit_top_classes: np.ndarray = None
    unit_patches: np.ndarray = None
    skipped: np.ndarray = None
    strategy_maps: np.ndarray = None
    features: np.ndarray = None
    colours: np.ndarray = None
    slice_by_features: np.ndarray = None
    slice_by_maps: np.ndarray = None
    slice_thumb_index: np.ndarray = None
    slice_thumbs: np.ndarray = None
    strategy_cluster: np.ndarray = None
    strategy_mean_maps: np.ndarray = None
    strategy_thumb_index: np.ndarray = None
    strategy_thumbs: np.ndarray = None

    @property
    def predicted(self) -> np.ndarray:
        return self.top5[:, 0]

    def accuracy(self, k: int = 1) -> float | None:
        """Top-k accuracy over the labelled images (None without labels)."""
        known = self.labels >= 0
        if not known.any():
            return None
        return float((self.top5[known, :k] == self.labels[known, None]).any(1).mean())

    def check_report(self, where: str = "the saved audit") -> None:
        """What the HTML report reads, checked before it is drawn (a hand-edited audit.npz or
        audit.json fails here in one line naming the field, not inside the report)."""
        from ...errors import ResultError

        S.check_params(self.params, self.report_param_schema, where, self.kind)
        p = self.params
        if p.get("has_labels") and not S.INT.test(p.get("num_labelled")):
            raise ResultError(f"{where}: params.num_labelled is missing (a labelled audit needs it: a whole number)")
        arrays = {n: getattr(self, n) for n in self.report_array_schema if isinstance(getattr(self, n), np.ndarray)}
        S.check_arrays(arrays, self.report_array_schema, where, self.kind)
        n, m = len(self.files), len(self.methods)
        for name, limit in (("shown_index", n), ("wrong_index", n), ("unit_top_files", n)):
            a = getattr(self, name)
            if a is not None and a.size and (a.min() < (-1 if name == "unit_top_files" else 0) or a.max() >= limit):
                raise ResultError(f"{where}: array {name!r} points outside the {limit} audited files")
        sel = self.unit_selectivity
        if self.unit_index is not None and self.unit_index.size and (
                sel is None or self.unit_index.min() < 0 or self.unit_index.max() >= len(sel)):
            raise ResultError(f"{where}: array 'unit_index' points outside 'unit_selectivity'")
        for key in ("mean_centre_share", "mean_deletion_auc", "mean_insertion_auc"):
            missing = [str(x) for x in self.methods if str(x) not in p[key]]
            if missing:
                raise ResultError(f"{where}: params.{key} lacks the method(s) {missing} of the {m} audited")

    concepts = None  # the TCAV result of an audit run with concepts (saved beside the report, not in audit.npz)

    def write_html(self, folder, **options):
        """Write the static report (index.html and its figures) into `folder`; see
        `cnnviz.render.audit.html.write_report`."""
        from ...analyses import resolve

        return resolve(self.report_writer)(self, folder, **options)
