"""`strategies(lm, data, ...)`: Spectral Relevance Analysis (SpRAy, Lapuschkin et al. 2019) over a
data set: per class, every image's map, clustered by `strategies_spray.spray`; clusters that look
like a shortcut are flagged with the reason.

The images are read in chunks of `chunk`; each chunk goes through a forward pass (top-1 class and
probability) and, per class present, one call of `cnnviz.attribute` for that class's maps (the
class is the image's label where the data set gives labels, else its predicted class). Only each
map downsized to KEEP x KEEP (area averaging; for the clusters' mean maps) and its positive part
downsized to `size` x `size` (SpRAy's input, from the full map) are kept. With `checkpoint` the state is written
atomically after every chunk and a rerun with the same arguments continues from it; on a CPU every
pass is padded to full batch groups, so a resumed run equals an uninterrupted one. Under torchrun
(or with torch.distributed initialized) rank r takes chunks r, r + W, ..., keeps its own progress
file (PATH.rankR), and the ranks' states are merged (each image's row from the rank that read it)
before the clustering, which every rank then runs alike: as the audit does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...batching import pad
from ...errors import ImageError, ParameterError, TargetError
from ...files import atomic_path
from ...results import provenance
from ..common import check_finite_outputs, model_on_device, progress_bar, resolve_device
from .strategies_result import StrategiesResult
from .strategies_spray import MIN_IMAGES, spray

__api__ = ("strategies",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_METHOD = "gradcam"
KEEP = 56          # each image's map is kept at KEEP x KEEP (Lite0's Grad-CAM is 7 x 7 before upsampling)
THUMB = 112        # side of the representative images kept in the result
CHECKPOINT_VERSION = 1


class TooFewImagesError(ParameterError):
    """A class with fewer images than SpRAy can cluster."""


def check_method(method) -> str:
    """A method `cnnviz.attribute` knows (its registry), or a one-line error listing them."""
    from ..attribution import methods as M
    from ..attribution import gradients  # noqa: F401  (registers the methods)

    known = M.names()
    if not isinstance(method, str) or method not in known:
        raise ParameterError(f"unknown method {method!r} for strategies; one of {', '.join(known)}")
    return method


def method_from_audit(audit, lm=None) -> tuple[str, str]:
    """(method, why): of the methods a saved audit measured on this model, the one whose maps were
    most faithful (largest mean insertion AUC minus mean deletion AUC); occlusion is not offered
    here (one forward pass per occluder position), the next best is taken."""
    from ...results import load_result

    r = load_result(audit) if not hasattr(audit, "kind") else audit
    if r.kind != "audit":
        raise ParameterError(f"{audit!r} is a {r.kind!r} result, not an audit; give the audit.npz of `cnnviz audit`")
    if lm is not None:
        mine, theirs = lm.identity(), r.provenance or {}
        if (theirs.get("model"), theirs.get("weights")) != (mine["model"], mine["weights"]):
            raise ParameterError(f"the audit is of {theirs.get('model')} ({theirs.get('weights')}), this model is "
                                 f"{mine['model']} ({mine['weights']}); give this model's audit or a --method")
    p = r.params
    score = {}
    for m in p.get("methods", []):
        ins, dele = (p.get("mean_insertion_auc") or {}).get(m), (p.get("mean_deletion_auc") or {}).get(m)
        if ins is not None and dele is not None:
            score[m] = ins - dele
    ranked = sorted(score, key=lambda m: -score[m])
    usable = [m for m in ranked if m != "occlusion"]
    if not usable:
        return DEFAULT_METHOD, "the audit measured no method strategies can use; Grad-CAM by default"
    best = usable[0]
    note = f" (occlusion scored higher but costs a pass per position)" if ranked[0] == "occlusion" else ""
    return best, (f"the most faithful method of the audit on this model: insertion - deletion AUC "
                  f"{score[best]:.3f}{note}")


def _label_texts(data, limit):
    """The data set's label of each file as written (class folder or CSV column), or None."""
    from ..audit.data import _csv_labels
    from ..experiments.datasets import list_files

    root, files, _ = list_files(data)
    p = Path(data) if not isinstance(data, (list, tuple)) else None
    names = None
    if p is not None and p.is_file():
        names, _ = _csv_labels(p)
    elif p is not None and p.is_dir():
        parts = [Path(f).parts for f in files]
        if files and all(len(pp) == 2 for pp in parts):
            names = [pp[0] for pp in parts]
    if names is not None and limit is not None:
        names = names[:limit]
    return names


def check_request(data, classes=None, method=None, limit=None) -> None:
    """What can be refused before a model is loaded: the method, the data set (empty, missing
    files), and, where the data set names its classes by name, an asked class it does not hold or
    holds too few images of."""
    if method is not None:
        check_method(method)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ParameterError(f"limit must be a whole number >= 1, got {limit!r}")
    from ..audit.data import read_dataset

    read_dataset(data, None, limit)
    names = _label_texts(data, limit)
    if names is None or not classes:
        return
    counts: dict[str, int] = {}
    for n in names:
        counts[n.lower()] = counts.get(n.lower(), 0) + 1
    if any(n.strip().isdigit() for n in counts):
        return  # labels by index: the model resolves them (after loading)
    for c in _as_list(classes):
        c = str(c).strip()
        if c.isdigit():
            continue
        have = counts.get(c.lower())
        if have is None:
            shown = ", ".join(sorted(counts)[:6]) + (" ..." if len(counts) > 6 else "")
            raise TargetError(f"class {c!r} has no images in {str(data)!r} (its labels: {shown}); name a class the "
                              "data set holds")
        if have < MIN_IMAGES:
            raise TooFewImagesError(f"class {c!r} has {have} image(s) in {str(data)!r}; clustering its maps needs "
                                    f"at least {MIN_IMAGES}: add images or leave the class out")


def _as_list(classes) -> list:
    if classes is None:
        return []
    if isinstance(classes, (str, int, np.integer)):
        classes = [c.strip() for c in str(classes).split(",") if c.strip()] if isinstance(classes, str) else [classes]
    return list(classes)


def strategies(lm, data, classes=None, method=None, *, limit=None, size: int = 32, n_clusters=None,
               max_clusters: int = 8, k_neighbours: int = 10, audit=None, boxes=None, representatives: int = 3,
               chunk: int = 8,
               seed: int = 0, device: str = "auto", progress=None, checkpoint=None, resume: bool = True,
               on_chunk=None, finish=None) -> StrategiesResult:
    """The strategies of `lm` for the classes of `data` (a folder, class folders, a CSV with a file
    and optionally a label column, or a list of paths): per class every image's map, clustered by
    SpRAy (`strategies_spray.spray`: positive part downsized to `size` x `size` and scaled to sum
    1, kNN graph of `k_neighbours`, eigengap up to `max_clusters` unless `n_clusters` is given),
    with per cluster its size, accuracy, mean map in crop pixels, representative images and, for
    clusters that look like a shortcut, the reason.

    classes: names or indices (a list or "a,b"); default every class with at least MIN_IMAGES
      images (by label where the data set has labels, else by prediction).
    method: any method of `cnnviz.attribute` by name; default the audit's most faithful method on
      this model when `audit` (a saved audit.npz or AuditResult) is given, else Grad-CAM.
    boxes: {file: [[x0, y0, x1, y1], ...]} in photo pixels, or a JSON file of it (as the audit's
      --boxes): a cluster whose members' mass lies mostly outside their objects' boxes (their
      bounding box, in the crop) is flagged too.
    checkpoint, resume, on_chunk, finish: as `cnnviz.audit` (progress file after every chunk;
      `finish(result)` on rank 0 before the progress file goes).
    """
    from ..audit.data import read_dataset

    if method is not None:
        method, why = check_method(method), "asked for"
    elif audit is not None:
        method, why = method_from_audit(audit, lm)
    else:
        method, why = DEFAULT_METHOD, "the default (no audit given to choose the most faithful method)"
    for name, v, lo in (("size", size, 2), ("max_clusters", max_clusters, 1), ("k_neighbours", k_neighbours, 1),
                        ("representatives", representatives, 1), ("chunk", chunk, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ParameterError(f"{name} must be a whole number >= {lo}, got {v!r}")
    check_request(data, None, None, limit)
    ds = read_dataset(data, lm, limit)
    from ..audit.engine import read_boxes

    box_map = read_boxes(boxes, ds.files)
    asked = [lm.class_index(c) for c in _as_list(classes)]
    labelled = ds.has_labels
    if labelled:
        counts = np.bincount(ds.labels[ds.labels >= 0], minlength=len(lm.categories))
        for c in asked:
            if counts[c] < MIN_IMAGES:
                raise TooFewImagesError(f"class {lm.class_name(c)!r} has {counts[c]} image(s) in {str(data)!r}; "
                                        f"clustering its maps needs at least {MIN_IMAGES}: add images or leave it out")
        wanted = set(asked) if asked else {c for c in np.flatnonzero(counts >= MIN_IMAGES)}
        if not wanted:
            raise TooFewImagesError(f"no class of {str(data)!r} has {MIN_IMAGES} images (the most: {counts.max()}); "
                                    f"SpRAy clusters a class's maps and needs at least {MIN_IMAGES} per class")
        sel = np.flatnonzero(np.isin(ds.labels, sorted(wanted)))
    else:
        sel = np.arange(len(ds.files))
    dev = resolve_device(device)
    n = len(sel)
    key_src = {"v": CHECKPOINT_VERSION, "model": lm.fingerprint() if checkpoint is not None else lm.identity(),
               "method": method, "chunk": chunk, "keep": KEEP, "size": size,
               "boxes": box_map, "files": hashlib.sha256("\n".join(ds.files[i] for i in sel).encode()).hexdigest(),
               "labels": hashlib.sha256(ds.labels[sel].tobytes()).hexdigest()}
    from ..units.topk import _dist_setup, drop_progress, finish_and_release, release_group, remove_stale_temporaries

    rank, world, owns_group = _dist_setup()
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    key_src.update(rank=rank, world=world)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()
    chunks = [range(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    mine = list(range(rank, len(chunks), world))
    state = _empty(n, size)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and world > 1:
        ckpt = ckpt.with_name(f"{ckpt.name}.rank{rank}")
    if ckpt is not None:
        remove_stale_temporaries(ckpt)
        if ckpt.exists():
            if resume:
                state = _load(ckpt, key, state, len(mine))
            else:
                drop_progress(ckpt)
    resumed_from = int(state["done"])
    skipped = [tuple(v) for v in json.loads(str(state["skipped"]))]
    t_start = time.perf_counter()
    try:
        with progress_bar(sum(len(chunks[c]) for c in mine), "strategies", progress if rank == 0 else False,
                          unit="img") as bar:
            bar.update(sum(len(chunks[c]) for c in mine[:resumed_from]))
            for done in range(resumed_from, len(mine)):
                rows = chunks[mine[done]]
                skipped.extend(_chunk(lm, ds, sel, rows, method, labelled, state, dev, size, box_map))
                state["done"] = np.int64(done + 1)
                state["skipped"] = np.array(json.dumps(skipped))
                state["seconds"] = np.float64(float(state["seconds"]) + time.perf_counter() - t_start)
                t_start = time.perf_counter()
                if ckpt is not None:
                    _save(ckpt, key, state)
                bar.update(len(rows))
                if on_chunk is not None:
                    on_chunk(done + 1, len(mine))
        if world > 1:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, (state, skipped))
            owner = (np.arange(n) // chunk) % world
            state = _merge([g[0] for g in gathered], owner)
            skipped = sorted((tuple(v) for g in gathered for v in g[1]), key=lambda v: ds.files.index(v[0]))
        if not state["readable"].any():
            reasons = " | ".join(" ".join(why.split()) for _, why in skipped[:3])
            raise ImageError(f"no image could be read from {str(data)!r}: all {len(skipped)} file(s) are unreadable "
                             f"({reasons}); check the files or point to another folder")
        t0 = time.perf_counter()
        from .strategies_build import build

        result = build(lm, ds, data, sel, state, skipped, asked, labelled, dict(
            method=method, method_label=_label(method), method_choice=why, size=size, n_clusters=n_clusters, max_clusters=max_clusters,
            k_neighbours=k_neighbours, boxes=bool(box_map), representatives=representatives, seed=seed, chunk=chunk,
            limit=limit,
            keep_size=KEEP, thumb=THUMB, world_size=world, resumed_from_chunk=resumed_from,
            seconds_maps=round(float(state["seconds"]), 3)), provenance(lm.identity(), str(dev)))
        result.params["seconds_clustering"] = round(time.perf_counter() - t0, 3)
    except BaseException:
        release_group(world, owns_group)
        raise
    return finish_and_release(result, finish, rank, world, owns_group, ckpt)


def _label(method: str) -> str:
    from ..attribution import methods as M

    return M.get(method).label


def _empty(n: int, size: int) -> dict:
    return {"done": np.int64(0), "readable": np.zeros(n, bool), "predicted": np.full(n, -1, np.int64),
            "prob": np.zeros(n, np.float32), "maps": np.zeros((n, KEEP, KEEP), np.float32),
            "small": np.zeros((n, size, size), np.float32), "box": np.full((n, 4), np.nan, np.float32),
            "skipped": np.array(json.dumps([])), "seconds": np.float64(0.0)}


def _chunk(lm, ds, sel, rows, method, labelled, state, dev, size, box_map) -> list:
    from ..attribution.gradients import attribute
    from .strategies_spray import downsize

    good, tensors, skipped = [], [], []
    h, w = lm.input_size
    for r in rows:
        f = ds.files[sel[r]]
        try:
            _, t, geo = lm.prepare(ds.root / f, geometry=True)
            tensors.append(t)
            good.append(r)
            if f in box_map:  # the objects' bounding box in the crop, as shares of its width and height
                b = geo.to_crop(np.asarray(box_map[f], dtype=np.float64))
                state["box"][r] = [b[:, 0].min() / w, b[:, 1].min() / h, b[:, 2].max() / w, b[:, 3].max() / h]
        except ImageError as e:
            skipped.append((f, str(e)))
        except Exception as e:  # noqa: BLE001 - any decoder failure: skip and report
            skipped.append((f, f"cannot read {f!r}: {type(e).__name__}: {e}"))
    if not good:
        return skipped
    x = torch.cat(tensors)
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        logits = model(pad(x).to(dev))[: len(x)].float()
    check_finite_outputs(logits, [ds.files[sel[r]] for r in good])
    prob = F.softmax(logits, dim=1).cpu()
    p1, i1 = prob.max(1)
    good_a = np.asarray(good)
    state["readable"][good_a] = True
    state["predicted"][good_a] = i1.numpy()
    state["prob"][good_a] = p1.numpy()
    targets = ds.labels[sel[good_a]] if labelled else i1.numpy()
    for t in sorted(set(int(v) for v in targets)):  # attribute takes one target: one call per class
        idx = np.flatnonzero(targets == t)
        maps = np.nan_to_num(np.asarray(attribute(lm, x[idx], method, target=t, normalized=True, device=str(dev)).map, np.float64))
        state["maps"][good_a[idx]] = downsize(maps, KEEP).astype(np.float32)
        state["small"][good_a[idx]] = downsize(np.clip(maps, 0, None), size).astype(np.float32)
    return skipped


def _merge(states: list[dict], owner: np.ndarray) -> dict:
    out = dict(states[0])
    for name in ("readable", "predicted", "prob", "maps", "small", "box"):
        out[name] = states[0][name].copy()
        for r, st in enumerate(states):
            out[name][owner == r] = st[name][owner == r]
    out["done"] = np.int64(sum(int(st["done"]) for st in states))
    out["seconds"] = np.float64(max(float(st["seconds"]) for st in states))
    return out


def _save(path: Path, key: str, state: dict) -> None:
    from ..units.topk import fault_pause

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **state)
        fault_pause("progress-write")


def _load(path: Path, key: str, empty: dict, chunks: int) -> dict:
    """The state in progress file `path`, checked: every array present with the dtype kind and shape
    of this run's, `done` within its chunks, the skipped list well formed; else one line."""
    from ..units.topk import CheckpointError, read_progress

    data = read_progress(path, key, "a strategies run", "or use --force")
    fresh = "; delete it to start over"
    out = dict(empty)
    for k, want in empty.items():
        got = np.asarray(data.get(k)) if k in data else None
        if got is None or got.shape != np.asarray(want).shape or got.dtype.kind != np.asarray(want).dtype.kind:
            raise CheckpointError(f"progress file {str(path)!r}: {k!r} is missing or does not fit this run{fresh}")
        out[k] = got
    if not 0 <= int(out["done"]) <= chunks:
        raise CheckpointError(f"progress file {str(path)!r} says {int(out['done'])} chunks are done, this run has "
                              f"{chunks}{fresh}")
    try:
        sk = json.loads(str(out["skipped"]))
        ok = isinstance(sk, list) and all(isinstance(v, list) and len(v) == 2 for v in sk)
    except ValueError:
        ok = False
    if not ok:
        raise CheckpointError(f"progress file {str(path)!r} has a malformed 'skipped' field{fresh}")
    return out


__all__ = ["strategies", "check_request", "check_method", "method_from_audit", "TooFewImagesError"]
