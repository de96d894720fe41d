"""The audit report's provenance tables: what was run, on what, with which settings."""

from __future__ import annotations

import json

PARAM_LABELS = {  # the parameters whose name alone misleads
    "show": "show (images drawn with their maps, at most)",
    "wrong": "wrong (misclassified images drawn, at most)",
    "units": "units (most selective units drawn)",
    "k": "k (top images per unit)",
    "chunk": "chunk (images per batch of work)",
    "class_map_size": "class_map_size (px of the class mean maps)",
}
RESULT_KEYS = {"class_names", "confused", "skipped_reasons", "class_accuracy_interval", "top1_interval",
               "top5_interval", "ece_sparse_bins", "deletion_auc_interval", "insertion_auc_interval",
               "baseline_deletion_auc_interval", "baseline_insertion_auc_interval", "deletion_beats_random",
               "insertion_beats_random", "slices_by_features", "slices_by_maps",
               "strategies", "concepts_tested"}  # numbers shown in the sections, not settings



def rows(result) -> tuple[list, list]:
    """(provenance rows, parameter rows) as [name, text] pairs; the numbers the sections show are
    left out of the parameters."""
    prov = dict(result.provenance or {})
    p = {k: v for k, v in result.params.items() if k not in RESULT_KEYS}
    text = lambda v: json.dumps(v, default=str) if not isinstance(v, str) else v  # noqa: E731
    return ([[k, text(v)] for k, v in sorted(prov.items())],
            [[PARAM_LABELS.get(k, k), text(v)] for k, v in sorted(p.items())])
