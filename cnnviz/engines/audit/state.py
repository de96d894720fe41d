"""The audit's running state: the arrays one chunk of images adds to (`empty_state`), the merge of
the ranks' states under torchrun (`merge`), and the progress file that a rerun with --resume
continues from (`save_checkpoint`, `load_checkpoint`: checked like a result when read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...files import atomic_path

PER_IMAGE = ("readable", "top5", "top5_prob", "centre_share", "deletion_auc", "insertion_auc", "baseline_deletion_auc",
             "baseline_insertion_auc", "pointing_hit", "box_energy", "strategy_maps", "features", "colours")
SUMS = ("deletion_sum", "insertion_sum", "class_count", "class_map_sum", "class_image_sum", "unit_class_sum")


def empty_state(n: int, m: int, steps: int, num_classes: int, s: int, show: int, wrong: int, h: int, w: int) -> dict:
    nan = np.float32(np.nan)
    return {
        "done": np.int64(0), "readable": np.zeros(n, bool), "top5": np.full((n, 5), -1, np.int64),
        "top5_prob": np.zeros((n, 5), np.float32), "centre_share": np.full((n, m), nan),
        "deletion_auc": np.full((n, m), nan), "insertion_auc": np.full((n, m), nan),
        "pointing_hit": np.full((n, m), nan), "box_energy": np.full((n, m), nan),
        "baseline_deletion_auc": np.full(n, nan), "baseline_insertion_auc": np.full(n, nan),
        # fixed point (metrics.to_fixed); the last row of the curves is the random baseline
        "deletion_sum": np.zeros((m + 1, steps + 1), np.int64), "insertion_sum": np.zeros((m + 1, steps + 1), np.int64),
        "class_count": np.zeros(num_classes, np.int64), "class_map_sum": np.zeros((num_classes, m, s, s), np.int64),
        "class_image_sum": np.zeros((num_classes, s, s, 3), np.int64),
        "shown_index": np.zeros(0, np.int64), "shown_images": np.zeros((0, h, w, 3), np.uint8),
        "shown_maps": np.zeros((0, m, h, w), np.float32), "wrong_index": np.zeros(0, np.int64),
        "wrong_images": np.zeros((0, h, w, 3), np.uint8), "wrong_pred_maps": np.zeros((0, m, h, w), np.float32),
        "wrong_true_maps": np.zeros((0, m, h, w), np.float32),
        "skipped": np.array(json.dumps([])), "seconds": np.array(json.dumps({}))}


def merge(states: list[dict], owner: np.ndarray, show: int, wrong: int, k: int) -> dict:
    """One state from the ranks' states: per-image rows from the rank that audited them, running
    sums added (integers: exact in any order), the first `show` / `wrong` examples in file order,
    the units' top-k merged as `topk` merges them."""
    out = dict(states[0])
    for name in PER_IMAGE:
        out[name] = states[0][name].copy()
        for r, st in enumerate(states):
            out[name][owner == r] = st[name][owner == r]
    for name in SUMS:
        if name in out:
            out[name] = sum(st[name] for st in states)
    for prefix, limit, arrays in (("shown", show, ("images", "maps")),
                                  ("wrong", wrong, ("images", "pred_maps", "true_maps"))):
        index = np.concatenate([st[f"{prefix}_index"] for st in states])
        take = np.argsort(index, kind="stable")[:limit]
        out[f"{prefix}_index"] = index[take]
        for a in arrays:
            out[f"{prefix}_{a}"] = np.concatenate([st[f"{prefix}_{a}"] for st in states])[take]
    if "unit_top_values" in out:
        from ..units.topk import merge

        top = {"values": states[0]["unit_top_values"], "image_index": states[0]["unit_top_image"],
               "position": states[0]["unit_top_position"]}
        for st in states[1:]:
            top = merge(top, st["unit_top_values"], st["unit_top_image"], st["unit_top_position"], k)
        out["unit_top_values"], out["unit_top_image"], out["unit_top_position"] = (
            top["values"], top["image_index"], top["position"])
    out["done"] = np.int64(sum(int(st["done"]) for st in states))
    return out


def save_checkpoint(path: Path, key: str, state: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **state)
        from ..units.topk import fault_pause

        fault_pause("progress-write")


def load_checkpoint(path: Path, key: str, empty: dict, chunks: int, files: list[str]) -> dict:
    """The state in progress file `path`, checked like a result: every array of the empty state
    present with its dtype kind and shape, `done` within the chunks of this run, the JSON fields
    well formed. A file edited by hand fails in one line that names the field."""
    from ..units.topk import CheckpointError, read_progress

    data = read_progress(path, key, "an audit", "or use --force")
    out = dict(empty)
    fresh = "; delete it (or use --force) to start over"
    for k in empty:
        if k not in data:
            raise CheckpointError(f"progress file {str(path)!r} lacks {k!r}{fresh}")
        got, want = np.asarray(data[k]), np.asarray(empty[k])
        growing = want.ndim >= 1 and want.shape[0] == 0  # the images kept to show: up to one row per image
        fits = (got.ndim == want.ndim and got.shape[1:] == want.shape[1:] and got.shape[0] <= len(files)
                if growing else got.shape == want.shape)
        if not fits or got.dtype.kind != want.dtype.kind:
            raise CheckpointError(f"progress file {str(path)!r}: {k!r} is {got.dtype} of shape {got.shape}, this audit "
                                  f"keeps {want.dtype} of shape {want.shape}{fresh}")
        out[k] = data[k]
    for group in (("shown_index", "shown_images", "shown_maps"),
                  ("wrong_index", "wrong_images", "wrong_pred_maps", "wrong_true_maps")):
        if len({len(out[g]) for g in group}) > 1 or (len(out[group[0]]) and not (
                0 <= out[group[0]].min() and out[group[0]].max() < len(files))):
            raise CheckpointError(f"progress file {str(path)!r}: {', '.join(group)} do not fit together or point "
                                  f"outside the {len(files)} files{fresh}")
    done = int(out["done"])
    if not 0 <= done <= chunks:
        raise CheckpointError(f"progress file {str(path)!r} says {done} chunks are done, this audit has {chunks}{fresh}")
    known = set(files)
    try:
        seconds = json.loads(str(out["seconds"]))
        skipped = json.loads(str(out["skipped"]))
        ok = (isinstance(seconds, dict) and all(isinstance(v, (int, float)) for v in seconds.values())
              and isinstance(skipped, list) and all(isinstance(v, list) and len(v) == 2 and v[0] in known
                                                    for v in skipped))
    except ValueError:
        ok = False
    if not ok:
        raise CheckpointError(f"progress file {str(path)!r} has malformed 'seconds' or 'skipped' fields{fresh}")
    return out
