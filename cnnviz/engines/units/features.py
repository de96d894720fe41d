"""Pooled feature vectors of a data set at one or more layers, and the labels of its images: what
the dataset experiments (linear probes, unit semantics, nearest neighbours) are computed from.

Each image's output at a layer is reduced to one number per channel: the mean over positions
("mean", global average pooling, as the network's own head pools), the mean of its positive part
("relu-mean", for class selectivity), or the maximum ("max", as the top-k scan ranks images). A
layer whose output is already a vector keeps it. So memory is N x C floats per layer, whatever the
images' size; the images themselves are not kept.

The scan streams the images as `cnnviz.engines.units.topk.scan` does (an unreadable image keeps its slot
and is reported; batches padded to full groups, so values do not depend on the batch size) and is
resumable the same way: with `checkpoint=PATH` the features computed so far are written atomically
every `checkpoint_every` batches, and a rerun with the same arguments continues from there with the
same result as an uninterrupted run. The progress file goes only after `finish` has returned.

Labels (`read_labels`): a CSV with a file column (`file` or `path`, matched by relative path or by
file name) and a label column (`class_index`, `label` or `class`), or class folders (the first
folder of each path). Integer labels 0..999 are ImageNet-1k class indices and can be grouped into
the coarse families of `cnnviz.taxonomy`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...batching import Batches, check_batch_size, model_work, pad
from ...errors import ImageError, LayerError, ParameterError
from ...files import atomic_path, check_output
from ...layers import LayerInfo, capture, require_maps, resolve_layer, trace_layers
from ...models import LoadedModel
from ..common import autocast, batch_memory_format, model_on_device, progress_bar, resolve_device
from ..experiments.datasets import ImageListDataset, list_files
from .topk import FIXED_BATCH, _nothing_read, drop_progress, fault_pause, read_progress, remove_stale_temporaries

POOLS = ("mean", "relu-mean", "max")
PROGRESS_VERSION = 1


@dataclasses.dataclass
class Features:
    """Pooled features of a data set. features[address]: float32 N x C (NaN rows for unreadable
    images); ok: bool N; files: relative to root; skipped: (file, reason) pairs; params: batch
    sizes, seconds, resumed_from_batch."""

    root: Path
    files: list[str]
    ok: np.ndarray
    features: dict[str, np.ndarray]
    layers: list[LayerInfo]
    skipped: list[tuple[str, str]]
    params: dict


def _pool(kind: str):
    def reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().float()
        if t.ndim == 2:
            return t.cpu()
        t = t.flatten(2)
        if kind == "max":
            return t.amax(2).cpu()
        if kind == "relu-mean":
            t = t.clamp_min(0)
        return t.mean(2).cpu()
    return reduce


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ParameterError(f"unknown pooling {pool!r}; use {', '.join(POOLS)}")
    return pool


def resolve_layers(lm: LoadedModel, layers) -> list[LayerInfo]:
    """LayerInfos for addresses (maps or vectors), each a one-line LayerError when unknown."""
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ParameterError("no layer given; name one or more (see `cnnviz layers`)")
    if len(set(layers)) != len(layers):
        raise ParameterError(f"a layer is named twice in {', '.join(layers)}")
    example = torch.zeros(1, 3, *lm.input_size)
    return [require_maps(resolve_layer(lm.model, a, example), vector_ok=True) for a in layers]


def depth_layers(lm: LoadedModel, first_conv: bool = True) -> list[LayerInfo]:
    """Layers spread over the depth of a network: the first convolution, then, for each spatial
    resolution the network passes through, the last outermost module working at it (a stage's
    output). For EfficientNet-Lite0: _conv_stem, _blocks.0, _blocks.2, _blocks.4, _blocks.10,
    _swish@1; for ResNet-18: conv1, relu, layer1..layer4."""
    example = torch.zeros(1, 3, *lm.input_size)
    infos = trace_layers(lm.model, example)
    maps = [i for i in infos if i.shape is not None and len(i.shape) == 3 and min(i.shape[1:]) > 1]
    names = {i.name for i in maps}
    outer = [i for i in maps if not any(i.name.startswith(n + ".") for n in names)]
    chosen: list[LayerInfo] = []
    first = next((i for i in infos if i.is_conv), None)
    if first_conv and first is not None:
        chosen.append(first)
    last_at: dict[tuple[int, int], LayerInfo] = {}
    for i in outer:
        last_at[tuple(i.shape[1:])] = i  # execution order: the last one at each resolution wins
    for i in sorted(last_at.values(), key=lambda i: i.order):
        if all(i.address != c.address for c in chosen):
            chosen.append(i)
    if not chosen:
        raise LayerError("cannot find convolutional layers in this model; name the layers with --layers")
    return [require_maps(resolve_layer(lm.model, i.address, example), vector_ok=True) for i in chosen]


def check_data(source) -> tuple[Path, list[str], list[str]]:
    """list_files, for the commands to call before loading the model."""
    return list_files(source)


def pooled_features(lm: LoadedModel, source, layers, pool: str | dict = "mean", batch_size: int | None = None,
                    device: str = "auto", checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 10,
                    resume: bool = True, progress: bool | None = None, amp: bool | None = None,
                    finish: Callable[[Features], None] | None = None, what: str = "features") -> Features:
    """Pooled features of every image of `source` (folder, CSV list or list of paths) at `layers`
    (addresses or LayerInfos). pool: one of POOLS, or a dict address -> pool (one pass, a pooling
    per layer). See the module docstring for pooling, batching and resuming.
    Raises ImageError when no image can be read (writing nothing)."""
    for kind in (pool.values() if isinstance(pool, dict) else [pool]):
        check_pool(kind)
    batch_size = check_batch_size(batch_size)
    if not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every <= 0:
        raise ParameterError(f"checkpoint_every must be a positive whole number, got {checkpoint_every!r}")
    infos = [i if isinstance(i, LayerInfo) else None for i in ([layers] if isinstance(layers, (str, LayerInfo))
                                                                 else list(layers))]
    if any(i is None for i in infos):
        infos = resolve_layers(lm, layers)
    pools = {i.address: (pool.get(i.address, "mean") if isinstance(pool, dict) else pool) for i in infos}
    root, files, ignored = list_files(source)
    n = len(files)
    dev = resolve_device(device)
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    example = torch.zeros(1, 3, *lm.input_size)
    measured = batch_size is None and checkpoint is None
    if batch_size is None and not measured:
        batch_size = FIXED_BATCH
    # a resumed run must continue with the same weights: the state's hash, not only its name
    model_id = lm.fingerprint() if checkpoint is not None else lm.identity()
    key_src = json.dumps({"v": PROGRESS_VERSION, "what": what, "model": model_id,
                          "layers": [i.address for i in infos], "pool": pools, "batch_size": batch_size,
                          "amp": use_amp, "files": hashlib.sha256("\n".join(files).encode()).hexdigest()},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()
    feats = {i.address: np.full((n, i.shape[0]), np.nan, np.float32) for i in infos}
    ok = np.zeros(n, bool)
    skipped: list[tuple[str, str]] = []
    done = resumed = 0
    ckpt = None
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        check_output(ckpt, (ckpt.suffix.lower(),))
        remove_stale_temporaries(ckpt)
        if not resume:
            drop_progress(ckpt)
        if ckpt.exists():
            data = read_progress(ckpt, key, "a feature scan", "or use --no-resume")
            done = resumed = int(data["batches_done"])
            ok = data["ok"].astype(bool)
            skipped = [tuple(s) for s in json.loads(str(data["skipped"]))]
            for k, i in enumerate(infos):
                feats[i.address] = data[f"f{k}"].astype(np.float32)
    batches = (Batches(n, None, device=dev, work=model_work(lm.model, example, engine=what, amp=use_amp))
               if measured else None)
    if batches is not None:
        todo = (list(range(lo, hi)) for lo, hi in batches)
        total = None
    else:
        total = -(-n // batch_size)
        todo = [list(range(b * batch_size, min((b + 1) * batch_size, n))) for b in range(done, total)]
    dataset = ImageListDataset(root, files, lm.preprocessing)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=todo, num_workers=0,
                                         pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    import contextlib

    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        with autocast(dev, use_amp):
            layout = batch_memory_format(model, example.to(dev))
        with contextlib.ExitStack() as stack:
            caps = [stack.enter_context(capture(model, i, reduce=_pool(pools[i.address]))) for i in infos]
            bar = stack.enter_context(progress_bar(n, what, progress, unit="img"))
            bar.update(int(ok.sum()) + len(skipped))
            for idx, x, good, reason in loader:
                with autocast(dev, use_amp):
                    model(pad(x).to(dev, non_blocking=True).contiguous(memory_format=layout))
                ids = idx.numpy()
                g = good.numpy().astype(bool)
                for i, c in zip(infos, caps):
                    v = c.values.pop()[:len(ids)].numpy()
                    feats[i.address][ids[g]] = v[g]
                ok[ids[g]] = True
                skipped.extend((files[j], why) for j, gg, why in zip(ids.tolist(), g, reason) if not gg)
                done += 1
                bar.update(len(ids))
                if ckpt is not None and (done % checkpoint_every == 0 or done == total):
                    _save(ckpt, key, done, ok, skipped, [feats[i.address] for i in infos])
    elapsed = time.perf_counter() - start
    if not ok.any():
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
        raise ImageError(_nothing_read(source, root, skipped))
    skipped.sort(key=lambda s: files.index(s[0]) if s[0] in files else n)
    params = {**(batches.record() if batches is not None else {"batch_size": batch_size, "batch_size_auto": False}),
              "seconds": round(elapsed, 3), "resumed_from_batch": resumed, "device": str(dev), "pool": pools, "amp": use_amp,
              "num_files": n, "num_scanned": int(ok.sum()), "num_ignored": len(ignored),
              "root": str(Path(root).resolve()),
              "source": str(source) if not isinstance(source, (list, tuple)) else "list"}
    out = Features(root=Path(root), files=files, ok=ok, features=feats, layers=infos, skipped=skipped, params=params)
    fault_pause("finish")
    if finish is not None:
        finish(out)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return out


def _save(path: Path, key: str, done: int, ok: np.ndarray, skipped, arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(PROGRESS_VERSION), key=np.array(key), batches_done=np.int64(done),
                     ok=ok, skipped=np.array(json.dumps(skipped)), **{f"f{k}": a for k, a in enumerate(arrays)})
        fault_pause("progress-write")


# --------------------------------------------------------------------------------------------------
# Labels

LABEL_COLUMNS = ("class_index", "label", "class")
GROUPINGS = ("auto", "family", "label")


def read_labels(files: list[str], labels=None) -> list[str | None]:
    """The label of each file (None where unknown): from `labels` (a CSV path with a file column
    and a label column, or a dict file -> label) or, without it, from class folders (the first
    folder of each relative path). A one-line ImageError when no file gets a label."""
    if labels is None:
        out = [Path(f).parts[0] if len(Path(f).parts) > 1 and not Path(f).is_absolute() else None for f in files]
        if not any(o is not None for o in out):
            raise ImageError("the images have no labels: put them in class folders or give a labels CSV "
                             "(--image-labels; columns file and class_index or label)")
        return out
    if isinstance(labels, dict):
        table = {str(k): str(v) for k, v in labels.items()}
        where = "the labels given"
    else:
        p = Path(labels)
        where = repr(str(p))
        if not p.is_file():
            raise ImageError(f"labels file not found: {str(p)!r}; give a CSV with columns file and class_index or label")
        try:
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
                fcol = cols.get("file") or cols.get("path")
                lcol = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
                if fcol is None or lcol is None:
                    raise ImageError(f"labels CSV {str(p)!r} needs a 'file' (or 'path') column and a 'class_index', "
                                     f"'label' or 'class' column; it has {', '.join(reader.fieldnames or []) or 'no header'}")
                table = {row[fcol].strip(): (row[lcol] or "").strip() for row in reader if (row.get(fcol) or "").strip()}
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ImageError(f"cannot read labels CSV {str(p)!r}: {e}") from None
    by_name = {Path(k).name: v for k, v in table.items()}
    out = [table.get(f, table.get(Path(f).as_posix(), by_name.get(Path(f).name))) for f in files]
    out = [o if o not in ("", None) else None for o in out]
    if not any(o is not None for o in out):
        raise ImageError(f"none of the {len(files)} images is listed in {where} (matched by relative path or file name)")
    return out


def imagenet_indices(labels: list[str | None]) -> list[int | None] | None:
    """The labels as ImageNet-1k class indices when every known label is a whole number 0..999,
    else None."""
    out = []
    for lab in labels:
        if lab is None:
            out.append(None)
            continue
        try:
            v = int(str(lab))
        except ValueError:
            return None
        if not 0 <= v < 1000:
            return None
        out.append(v)
    return out


def group_labels(labels: list[str | None], grouping: str = "auto") -> tuple[list[str | None], str]:
    """The group of each image and the grouping used: "family" (the coarse `cnnviz.taxonomy`
    family of an ImageNet class index), "label" (the label itself); "auto": family when every label
    is an ImageNet-1k class index, else label."""
    from ... import taxonomy

    if grouping not in GROUPINGS:
        raise ParameterError(f"unknown grouping {grouping!r}; use {', '.join(GROUPINGS)}")
    idx = imagenet_indices(labels)
    if grouping == "family" or (grouping == "auto" and idx is not None):
        if idx is None:
            bad = next(lab for lab in labels if lab is not None and imagenet_indices([lab]) is None)
            raise ParameterError(f"grouping by family needs ImageNet-1k class indices (0..999) as labels, got "
                                 f"{bad!r}; use --group label")
        return [taxonomy.family(i) if i is not None else None for i in idx], "family"
    return list(labels), "label"
