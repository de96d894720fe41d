"""`audit(lm, data, ...)`: one pass over a data set that gathers what the audit report shows.

The images are read in chunks of `chunk`; each chunk goes through
1. a forward pass (top-5 classes and probabilities);
2. per method, the map of the predicted class (`cnnviz.attribute`, or occlusion sensitivity), of
   which the centre share, the energy in the boxes and the pointing game are taken, and which is
   added (downsampled, scaled to sum 1) to its class's mean map;
3. the deletion and insertion curves of each map and of a random baseline map
   (`metrics.deletion_insertion`, `metrics.random_maps`).
Only per-image numbers, running sums and a few example images are kept, so memory does not grow
with the maps of the data set. With `checkpoint` the state is written atomically after every chunk
and a rerun with the same arguments continues from it; on a CPU every pass is padded to full batch
groups, so a resumed audit equals an uninterrupted one.

Under torchrun (or with torch.distributed initialized) rank r audits chunks r, r + W, ... (each
chunk holds the same images as in a single process, and the random baseline map of an image is
seeded by its index), each rank keeps its own progress file (PATH.rankR), and the ranks' states are
merged: per-image rows from the rank that owns them, running sums added (kept in fixed point,
`metrics.to_fixed`, so that the order of the additions does not matter), examples and top images
taken in file order. At equal thread counts the merged result equals a single-process run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...bare import takes_model
from ...batching import pad
from ...errors import ImageError, ParameterError
from ...layers import capture
from ...models import LoadedModel
from ...results import provenance
from ..common import check_finite_outputs, check_method_list, model_on_device, progress_bar, resolve_device
from . import metrics as M
from . import reliance as R
from . import state as S
from . import units as U
from .data import read_dataset
from .result import AuditResult

__api__ = ("audit",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

DEFAULT_METHODS = ("gradcam", "saliency")  # occlusion on request: 169 forward passes per image
CHECKPOINT_VERSION = 3  # 3: the per-image maps, features and colours of the reliance sections
CURVE_BITS = 40   # fixed-point resolution of the summed curves (probabilities <= 1) and class maps (sum 1)
IMAGE_BITS = 32   # of the summed mean crops (pixel values <= 255)


MAX_STEPS = 1024  # deletion/insertion steps: each is a forward pass per image and method


def check_methods(methods) -> tuple[str, ...]:
    from ..attribution.gradients import METHODS

    from ..attribution.methods import canonical

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = [canonical(m) for m in methods]  # either separator: "guided-gradcam" is "guided_gradcam"
    allowed = tuple(m for m in METHODS if m != "ig") + ("occlusion",)
    return check_method_list(methods, allowed, "audit method", "; e.g. --methods gradcam,saliency")


def read_boxes(boxes, files: list[str]) -> dict[str, list]:
    """{file: [[x0, y0, x1, y1], ...]} in photo pixels, from a dict or a JSON file; keys are the
    files as the data set lists them (or their names)."""
    if boxes is None:
        return {}
    if not isinstance(boxes, dict):
        try:
            boxes = json.loads(Path(boxes).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ParameterError(f"cannot read boxes {str(boxes)!r}: {e}") from None
    if not isinstance(boxes, dict):
        raise ParameterError("boxes must be a JSON object: {file: [[x0, y0, x1, y1], ...]}")
    out = {}
    names = {Path(f).name: f for f in files}
    for key, value in boxes.items():
        value = [value] if isinstance(value, list) and value and _is_number(value[0]) else value
        if not isinstance(value, list) or not all(
                isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_number(v) for v in b) for b in value):
            raise ParameterError(f"boxes of {key!r} must be [x0, y0, x1, y1] lists of numbers, found {value!r:.60}")
        for b in value:
            x0, y0, x1, y1 = map(float, b)
            if not all(math.isfinite(v) and abs(v) <= MAX_BOX_COORDINATE for v in (x0, y0, x1, y1)):
                raise ParameterError(f"box {list(b)!r} of {key!r} has a coordinate that is not a finite number of "
                                     f"photo pixels (at most {MAX_BOX_COORDINATE:g} in size)")
            if not (x1 > x0 and y1 > y0):
                raise ParameterError(f"box {list(b)!r} of {key!r} is empty or inverted: give [x0, y0, x1, y1] with "
                                     "x1 > x0 and y1 > y0 (left, top, right, bottom in photo pixels)")
        out[key if key in files else names.get(key, key)] = [list(map(float, b)) for b in value]
    return out


MAX_BOX_COORDINATE = 1e6


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _maps(lm, method: str, x: torch.Tensor, pixels: np.ndarray, targets, dev, options: dict) -> np.ndarray:
    """N x H x W maps of `method` for class `targets` (one per image, or None: the top-1)."""
    if method == "occlusion":
        from ..occlusion.engine import occlusion

        out = []
        for i in range(len(x)):
            t = None if targets is None else int(targets[i])
            r = occlusion(lm, pixels[i], window=options["occlusion_window"], stride=options["occlusion_stride"],
                          fill="mean", target=t, device=str(dev), progress=False)
            out.append(_occlusion_map(r, x.shape[2:]))
        return np.stack(out).astype(np.float32)
    from ..attribution.gradients import attribute

    if targets is None:
        return attribute(lm, x, method, normalized=True, device=str(dev)).map.astype(np.float32)
    # attribute takes one target for all its images: one call per distinct class
    out = np.zeros((len(x), *x.shape[2:]), np.float32)
    for t in sorted(set(int(v) for v in targets)):
        idx = [i for i in range(len(x)) if int(targets[i]) == t]
        out[idx] = attribute(lm, x[idx], method, target=t, normalized=True, device=str(dev)).map
    return out


def _occlusion_map(r, size) -> np.ndarray:
    """Occlusion as a pixel map: at each pixel, the mean probability drop of the occluder
    positions that cover it."""
    h, w = size
    wy, wx = r.params["window"]
    drop = r.params["baseline_prob"] - r.true_class_prob.astype(np.float64)
    acc, cnt = np.zeros((h, w)), np.zeros((h, w))
    for i, y in enumerate(r.positions_y):
        for j, xx in enumerate(r.positions_x):
            acc[y:y + wy, xx:xx + wx] += drop[i, j]
            cnt[y:y + wy, xx:xx + wx] += 1
    return np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)


def _read_chunk(lm, root: Path, files: list[str], ids: range):
    good, pixels, tensors, geos, skipped = [], [], [], [], []
    for i in ids:
        try:
            px, t, geo = lm.prepare(root / files[i], geometry=True)
        except ImageError as e:
            skipped.append((files[i], str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - any decoder failure: skip and report
            skipped.append((files[i], f"cannot read {files[i]!r}: {type(e).__name__}: {e}"))
            continue
        good.append(i)
        pixels.append(px)
        tensors.append(t)
        geos.append(geo)
    return good, pixels, tensors, geos, skipped


@takes_model
def audit(lm: LoadedModel, data, methods=DEFAULT_METHODS, *, limit: int | None = None, steps: int = 16,
          fill: str = "blur", show: int = 8, wrong: int = 6, class_map_size: int = 28, boxes=None,
          sanity_images: int = 2, sanity_steps: int = 4, chunk: int = 8, occlusion_window: int = 32,
          occlusion_stride: int = 16, layer: str | None = None, units: int = 6, k: int = 4,
          crop: str = "auto", device: str = "auto", progress: bool | None = None,
          checkpoint: str | os.PathLike | None = None, resume: bool = True, on_chunk=None,
          finish=None, concepts: dict | None = None, concept_classes=None) -> AuditResult:
    """Audit `lm` on `data` (a folder, class folders, a CSV with a file column and optionally a
    label column, or a list of paths; see `data.read_dataset`): predictions and calibration, where
    the model looks (maps of `methods`), how faithful each map is (deletion and insertion, and the
    model-randomization sanity check on `sanity_images` images), with every parameter and the
    provenance. Returns an `AuditResult`; `result.write_html(folder)` writes the report.

    limit: audit only the first `limit` files. steps: deletion/insertion steps. fill: what a
      deleted pixel becomes ("blur", or a colour: mean, black, white, a gray level, R,G,B).
    show / wrong: how many images (first ones / first misclassified ones) keep their maps.
    boxes: {file: [[x0, y0, x1, y1], ...]} in photo pixels, or a JSON file of it: the pointing
      game and the energy inside the boxes.
    layer: the layer of the units section: its `units` most class-selective units, each with its
      `k` top images and their patches (None: no units section). crop: how the patches are cut,
      "auto", "rf" or "activation" (`cnnviz.engines.units.patches`; auto: the receptive field where
      it fits in the input, else where the unit's map is high).
    checkpoint: progress file, written after every chunk; resumed from when `resume`; removed when
      the audit is complete and `finish` has returned. Under torchrun each rank keeps its own
      (PATH.rankR).
    on_chunk(done, total): called after every chunk of this process (tests use it to stop a run).
    finish(result): called (on rank 0 only) before the progress file is removed: write the report
      there, so that a kill before it is written leaves the progress to resume from.
    concepts: {name: folder}: TCAV for `concept_classes` (default the most frequent, at most 8) after
      the main pass (`reliance.concepts`): `result.concepts`, its summary params["concepts_tested"].
    Under torchrun each rank audits every W-th chunk; the states are merged exactly and every rank
    returns the merged result (see the module's docstring).
    """
    methods = check_methods(methods)
    from ..units.patches import CROPS

    if crop not in CROPS:
        raise ParameterError(f"crop {crop!r} is not one of {', '.join(CROPS)}")
    for name, v, lo in (("limit", limit, 1), ("steps", steps, 1), ("show", show, 0), ("wrong", wrong, 0),
                        ("chunk", chunk, 1), ("sanity_images", sanity_images, 0), ("sanity_steps", sanity_steps, 1),
                        ("class_map_size", class_map_size, 1), ("units", units, 1), ("k", k, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo):
            raise ParameterError(f"{name} must be a whole number >= {lo}, got {v!r}")
    h, w = lm.input_size
    if steps > min(MAX_STEPS, h * w):
        raise ParameterError(f"steps {steps} is more than the deletion curve can use (at most {min(MAX_STEPS, h * w)}: "
                             f"one step per pixel of the {h}x{w} input, and no more than {MAX_STEPS}); use fewer")
    if not (isinstance(fill, str) and fill.strip().lower() == "blur"):
        lm.preprocessing.fill_value(fill)  # a bad fill fails before any work
    ds = read_dataset(data, lm, limit)
    concepts = R.check_concepts(concepts)  # a missing or too small concept folder: before any work
    box_map = read_boxes(boxes, ds.files)
    dev = resolve_device(device)
    h, w = lm.input_size
    n, m, C, s = len(ds.files), len(methods), len(lm.categories), class_map_size
    unit_info = U.resolve(lm, layer) if layer is not None else None
    options = {"occlusion_window": occlusion_window, "occlusion_stride": occlusion_stride,
               "layer": unit_info.address if unit_info else None, "units": units, "k": k, "unit_info": unit_info}
    # a resumed run must continue with the same weights: the state's hash, not only its name
    model_id = lm.fingerprint() if checkpoint is not None else lm.identity()
    params_key = {"v": CHECKPOINT_VERSION, "model": model_id, "methods": methods, "steps": steps, "fill": fill,
                  "show": show, "wrong": wrong, "s": s, "chunk": chunk, "boxes": box_map,
                  **{kk: v for kk, v in options.items() if kk != "unit_info"},
                  "files": hashlib.sha256("\n".join(ds.files).encode()).hexdigest(),
                  "labels": hashlib.sha256(ds.labels.tobytes()).hexdigest()}
    from ..units.topk import _dist_setup, drop_progress, finish_and_release, release_group, remove_stale_temporaries

    rank, world, owns_group = _dist_setup()
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    params_key.update(rank=rank, world=world)
    key = hashlib.sha256(json.dumps(params_key, sort_keys=True, default=str).encode()).hexdigest()
    empty = S.empty_state(n, m, steps, C, s, show, wrong, h, w)
    options["penultimate"] = R.penultimate(lm.model)
    empty.update(R.empty(n, m, R.feature_width(lm, options["penultimate"])))
    if unit_info is not None:
        empty.update(U.empty(C, unit_info.shape[0], k))
    state = empty
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and world > 1:
        ckpt = ckpt.with_name(f"{ckpt.name}.rank{rank}")
    resumed_from = 0
    if ckpt is not None:
        remove_stale_temporaries(ckpt)
    chunks = [range(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    mine = list(range(rank, len(chunks), world))
    if ckpt is not None and ckpt.exists():
        if resume:
            state = S.load_checkpoint(ckpt, key, state, len(mine), ds.files)
            resumed_from = int(state["done"])
        else:
            drop_progress(ckpt)
    seconds = json.loads(str(state["seconds"]))
    skipped = [tuple(v) for v in json.loads(str(state["skipped"]))]

    def tick(name: str, t0: float) -> float:
        t = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + (t - t0)
        return t

    with progress_bar(sum(len(chunks[c]) for c in mine), "audit", progress if rank == 0 else False,
                      unit="img") as bar:
        bar.update(sum(len(chunks[c]) for c in mine[: int(state["done"])]))
        for done in range(int(state["done"]), len(mine)):
            c = mine[done]
            t0 = time.perf_counter()
            good, pixels, tensors, geos, bad = _read_chunk(lm, ds.root, ds.files, chunks[c])
            skipped.extend(bad)
            t0 = tick("read", t0)
            if good:
                _chunk(lm, ds, methods, good, np.stack(pixels), torch.cat(tensors), geos, state, box_map, dev,
                       steps, fill, show, wrong, s, options, seconds, tick, t0)
            state["done"] = np.int64(done + 1)
            state["skipped"] = np.array(json.dumps(skipped))
            state["seconds"] = np.array(json.dumps(seconds))
            if ckpt is not None:
                S.save_checkpoint(ckpt, key, state)
            bar.update(len(chunks[c]))
            if on_chunk is not None:
                on_chunk(done + 1, len(mine))
    try:
        if world > 1:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, (state, skipped, seconds))
            owner = (np.arange(n) // chunk) % world
            state = S.merge([g[0] for g in gathered], owner, show, wrong, k)
            skipped = sorted((tuple(v) for g in gathered for v in g[1]), key=lambda v: ds.files.index(v[0]))
            seconds = {}
            for g in gathered:
                for name, v in g[2].items():
                    seconds[name] = seconds.get(name, 0.0) + v
        readable = state["readable"]
        if not readable.any():
            if ckpt is not None and ckpt.exists():
                ckpt.unlink()
            reasons = " | ".join(" ".join(why.split()) for _, why in skipped[:3])
            raise ImageError(f"no image could be read from {str(data)!r}: all {len(skipped)} file(s) are unreadable "
                             f"({reasons}); check the files or point to another folder")
        t0 = time.perf_counter()
        sanity = _sanity(lm, ds, readable, methods, sanity_images, sanity_steps, dev)
        t0 = tick("sanity", t0)
        tested = R.concepts(lm, ds, readable, state, concepts, concept_classes, ckpt, dev, progress) if concepts else None
        tick("concepts", t0)
        result = _finish(lm, ds, data, methods, state, skipped, sanity, seconds, dev, dict(
            limit=limit, steps=steps, fill=fill, show=show, wrong=wrong, class_map_size=s, chunk=chunk,
            sanity_images=sanity_images, sanity_steps=sanity_steps, boxes=bool(box_map),
            boxes_unmatched=sorted(k for k in box_map if k not in set(ds.files)), **options,
            random_baseline={"cell": M.RANDOM_CELL, "seed": M.RANDOM_SEED}, world_size=world, unit_crop_asked=crop,
            resumed_from_chunk=resumed_from))
        R.attach(result, tested)
    except BaseException:
        release_group(world, owns_group)
        raise
    return finish_and_release(result, finish, rank, world, owns_group, ckpt)  # rank 0 writes the report


def _chunk(lm, ds, methods, good, pixels, x, geos, state, box_map, dev, steps, fill, show, wrong, s, options,
           seconds, tick, t0):
    info = options["unit_info"]
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        with capture(model, info, reduce=U.reduce) if info is not None else contextlib.nullcontext() as cap, \
                R.features_of(model, options["penultimate"]) as feats:
            logits = model(pad(x).to(dev))[: len(x)].float()
    check_finite_outputs(logits, [ds.files[f] for f in good])
    prob = F.softmax(logits, dim=1).cpu()
    p5, i5 = prob.topk(min(5, prob.shape[1]), dim=1)
    good_a = np.asarray(good)
    state["readable"][good_a] = True
    state["top5"][good_a, : i5.shape[1]] = i5.numpy()
    state["top5_prob"][good_a, : p5.shape[1]] = p5.numpy()
    pred = i5[:, 0].numpy()
    labels = ds.labels[good_a]
    cls = np.where(labels >= 0, labels, pred)
    if info is not None:
        U.update(state, cap.values.pop(), good_a, cls, options["k"])
    t0 = tick("forward", t0)
    maps = np.zeros((len(good), len(methods), *x.shape[2:]), np.float32)
    for j, meth in enumerate(methods):
        maps[:, j] = _maps(lm, meth, x, pixels, None, dev, options)
        t0 = tick(f"maps:{meth}", t0)
    R.update(state, good_a, maps, feats, pixels)
    state["centre_share"][good_a] = np.stack([M.centre_share(maps[:, j]) for j in range(len(methods))], 1)
    small = M.downsample(M.normalized(maps.reshape(-1, *x.shape[2:])), s).reshape(len(good), len(methods), s, s)
    img_small = M.downsample(pixels.transpose(0, 3, 1, 2).reshape(-1, *x.shape[2:]).astype(np.float32), s)
    img_small = img_small.reshape(len(good), 3, s, s).transpose(0, 2, 3, 1)
    small, img_small = M.to_fixed(small, CURVE_BITS), M.to_fixed(img_small, IMAGE_BITS)
    for i, k in enumerate(cls):
        state["class_count"][k] += 1
        state["class_map_sum"][k] += small[i]
        state["class_image_sum"][k] += img_small[i]
    for i, f in enumerate(good):
        if ds.files[f] in box_map:
            crop = geos[i].to_crop(np.asarray(box_map[ds.files[f]], dtype=np.float64))
            hit, energy = M.box_scores(maps[i], [crop.tolist()] * len(methods))
            state["pointing_hit"][f], state["box_energy"][f] = hit, energy
    t0 = tick("boxes and class maps", t0)
    filled = M.fill_images(lm, x, fill)
    targets = torch.as_tensor(pred)
    both = np.concatenate([maps, M.random_maps(good_a, x.shape[2:])[:, None]], 1)  # the random baseline last
    with model_on_device(lm.model, dev) as model:
        d, ins = M.deletion_insertion(model, x.to(dev), filled.to(dev), torch.as_tensor(both).to(dev),
                                      targets.to(dev), steps)
    d_auc, i_auc = M.auc(d), M.auc(ins)
    state["deletion_auc"][good_a], state["insertion_auc"][good_a] = d_auc[:, :-1], i_auc[:, :-1]
    state["baseline_deletion_auc"][good_a], state["baseline_insertion_auc"][good_a] = d_auc[:, -1], i_auc[:, -1]
    state["deletion_sum"] += M.to_fixed(d, CURVE_BITS).sum(0)
    state["insertion_sum"] += M.to_fixed(ins, CURVE_BITS).sum(0)
    t0 = tick("faithfulness", t0)
    take = max(0, show - len(state["shown_index"]))
    if take:
        state["shown_index"] = np.concatenate([state["shown_index"], good_a[:take]])
        state["shown_images"] = np.concatenate([state["shown_images"], pixels[:take]])
        state["shown_maps"] = np.concatenate([state["shown_maps"], maps[:take]])
    miss = np.flatnonzero((labels >= 0) & (labels != pred))[: max(0, wrong - len(state["wrong_index"]))]
    if miss.size:
        true_maps = np.stack([_maps(lm, meth, x[miss], pixels[miss], labels[miss], dev, options)
                              for meth in methods], 1)
        state["wrong_index"] = np.concatenate([state["wrong_index"], good_a[miss]])
        state["wrong_images"] = np.concatenate([state["wrong_images"], pixels[miss]])
        state["wrong_pred_maps"] = np.concatenate([state["wrong_pred_maps"], maps[miss]])
        state["wrong_true_maps"] = np.concatenate([state["wrong_true_maps"], true_maps])
        tick("maps of the true class", t0)


def _sanity(lm, ds, readable, methods, count, steps, dev) -> dict:
    grad_methods = [mm for mm in methods if mm != "occlusion"]
    files = [ds.files[i] for i in np.flatnonzero(readable)[:count]]
    if not files or not grad_methods:
        return {"files": [], "methods": grad_methods, "steps": [], "spearman": np.zeros((0, len(grad_methods), 0))}
    from ..attribution.sanity import sanity

    rs = [sanity(lm, ds.root / f, methods=grad_methods, steps=steps, classes=0, device=str(dev)) for f in files]
    return {"files": files, "methods": grad_methods, "steps": [str(v) for v in rs[0].steps],
            "spearman": np.stack([r.spearman for r in rs]).astype(np.float32)}


def _finish(lm, ds, data, methods, state, skipped, sanity, seconds, dev, options) -> AuditResult:
    ok = state["readable"]
    idx = np.flatnonzero(ok)
    remap = -np.ones(len(ok), np.int64)
    remap[idx] = np.arange(len(idx))
    labels = ds.labels[idx]
    top5 = state["top5"][idx]
    pred = top5[:, 0]
    known = labels >= 0
    correct = (pred == labels) & known
    ece, conf, acc, count = M.calibration(state["top5_prob"][idx, 0][known], correct[known]) if known.any() else \
        (None, np.full(15, np.nan, np.float32), np.full(15, np.nan, np.float32), np.zeros(15, np.int64))
    seen = np.flatnonzero(state["class_count"])
    cls = np.where(known, labels, pred)
    class_correct = np.array([int(correct[cls == k].sum()) for k in seen], np.int64)
    counts = state["class_count"][seen]
    n = len(idx)
    top1 = float(correct[known].mean()) if known.any() else None
    top5acc = float((top5[known] == labels[known, None]).any(1).mean()) if known.any() else None
    pairs = M.confused_pairs(labels, pred)
    steps = options["steps"]
    info = options.pop("unit_info")
    kk = options["k"]
    unit_arrays = {"unit_index": np.zeros(0, np.int64), "unit_selectivity": np.zeros(0, np.float32),
                   "unit_top_files": np.zeros((0, kk), np.int64), "unit_top_values": np.zeros((0, kk), np.float32),
                   "unit_top_classes": np.zeros((0, kk), np.int64), "unit_patches": np.zeros((0, kk, 1, 1, 3), np.uint8)}
    if info is not None:
        t0 = time.perf_counter()
        unit_arrays = U.finish(lm, info, state, state["class_count"], ds.files, ds.root, idx, cls, options["units"],
                               dev, crop=options.get("unit_crop_asked", "auto"))
        seconds["units"] = seconds.get("units", 0.0) + time.perf_counter() - t0
    unit_crop = (unit_arrays.pop("crop", None), unit_arrays.pop("crop_kind", None))
    t0 = time.perf_counter()
    faithful = R.most_faithful(state, idx, methods)
    rel = R.slices(state, idx, correct, known, state["top5_prob"][idx, 0], cls, faithful, R.families(lm),
                   read=lambda r: R.pixels(lm, ds.root / ds.files[idx[r]]))
    strat = R.strategies(state, idx, cls, correct, known, faithful, read=lambda r: R.pixels(lm, ds.root / ds.files[idx[r]]))
    rel["arrays"].update(strat["arrays"])
    rel["params"].update(strat["params"])
    seconds["slices and strategies"] = seconds.get("slices and strategies", 0.0) + time.perf_counter() - t0
    params = {
        "data": str(data) if not isinstance(data, (list, tuple)) else "list", "root": str(ds.root.resolve()),
        "label_source": ds.label_source, "has_labels": bool(known.any()), "num_files": len(ds.files),
        "num_images": n, "num_labelled": int(known.sum()), "methods": list(methods), "top1": top1, "top5": top5acc,
        "ece": ece, "ece_bins": 15, "unit_crop": unit_crop[1], "unit_crop_rule": unit_crop[0],
        "confused": [{"true": t, "true_name": lm.class_name(t), "predicted": p, "predicted_name": lm.class_name(p),
                      "count": c} for t, p, c in pairs],
        "class_names": {str(int(k)): lm.class_name(int(k)) for k in set(seen.tolist()) | set(top5[:, 0].tolist())
                        | set(labels[known].tolist())},
        "centre_box": "the middle half of the height and of the width (a quarter of the area)",
        "mean_centre_share": {mm: _nanmean(state["centre_share"][idx, j]) for j, mm in enumerate(methods)},
        "mean_deletion_auc": {mm: _nanmean(state["deletion_auc"][idx, j]) for j, mm in enumerate(methods)},
        "mean_insertion_auc": {mm: _nanmean(state["insertion_auc"][idx, j]) for j, mm in enumerate(methods)},
        "baseline_deletion_auc": _nanmean(state["baseline_deletion_auc"][idx]),
        "baseline_insertion_auc": _nanmean(state["baseline_insertion_auc"][idx]),
        "pointing_game": {mm: _nanmean(state["pointing_hit"][idx, j]) for j, mm in enumerate(methods)},
        "mean_box_energy": {mm: _nanmean(state["box_energy"][idx, j]) for j, mm in enumerate(methods)},
        "explained_class": "each image's top-1 predicted class",
        **M.report_intervals(state, idx, methods, known, correct, top5, labels, count, counts, class_correct, info),
        "skipped_reasons": [why for _, why in skipped], "ignored": ds.ignored[:100],
        "most_faithful_method": methods[faithful], **rel["params"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()}, **options}
    return AuditResult(
        params=params, provenance=provenance(lm.identity(), str(dev)),
        files=np.asarray([ds.files[i] for i in idx], dtype=str), labels=labels, top5=top5,
        top5_prob=state["top5_prob"][idx], methods=np.asarray(methods, dtype=str),
        centre_share=state["centre_share"][idx], deletion_auc=state["deletion_auc"][idx],
        insertion_auc=state["insertion_auc"][idx], pointing_hit=state["pointing_hit"][idx],
        box_energy=state["box_energy"][idx], fractions=np.linspace(0, 1, steps + 1).astype(np.float32),
        deletion_curve=(M.from_fixed(state["deletion_sum"][:-1], CURVE_BITS) / max(n, 1)).astype(np.float32),
        insertion_curve=(M.from_fixed(state["insertion_sum"][:-1], CURVE_BITS) / max(n, 1)).astype(np.float32),
        baseline_deletion_auc=state["baseline_deletion_auc"][idx].astype(np.float32),
        baseline_insertion_auc=state["baseline_insertion_auc"][idx].astype(np.float32),
        baseline_deletion_curve=(M.from_fixed(state["deletion_sum"][-1], CURVE_BITS) / max(n, 1)).astype(np.float32),
        baseline_insertion_curve=(M.from_fixed(state["insertion_sum"][-1], CURVE_BITS) / max(n, 1)).astype(np.float32),
        reliability_conf=conf, reliability_acc=acc, reliability_count=count.astype(np.int64),
        class_indices=seen.astype(np.int64), class_counts=counts.astype(np.int64), class_correct=class_correct,
        class_maps=(M.from_fixed(state["class_map_sum"][seen], CURVE_BITS) / counts[:, None, None, None])
        .astype(np.float32),
        class_images=np.clip(M.from_fixed(state["class_image_sum"][seen], IMAGE_BITS) / counts[:, None, None, None],
                             0, 255).round().astype(np.uint8),
        shown_index=remap[state["shown_index"]], shown_images=state["shown_images"], shown_maps=state["shown_maps"],
        wrong_index=remap[state["wrong_index"]], wrong_images=state["wrong_images"],
        wrong_pred_maps=state["wrong_pred_maps"], wrong_true_maps=state["wrong_true_maps"],
        sanity_files=np.asarray(sanity["files"], dtype=str), sanity_methods=np.asarray(sanity["methods"], dtype=str),
        sanity_steps=np.asarray(sanity["steps"], dtype=str), sanity_spearman=sanity["spearman"].astype(np.float32),
        skipped=np.asarray([f for f, _ in skipped], dtype=str), strategy_maps=state["strategy_maps"][idx],
        features=state["features"][idx], colours=state["colours"][idx], **rel["arrays"], **unit_arrays)


def _nanmean(v) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None
