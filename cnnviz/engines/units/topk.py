"""Top-k activating images: which images of a data set drive each unit of a layer most strongly.

A folder of images (or of class folders, or a CSV list) is streamed through a DataLoader; for every
unit (channel) of the chosen layer the activation's maximum over spatial positions is taken per
image, and the k largest per unit are kept with the image and the position. Memory is O(units * k),
whatever the size of the data set.

Exactness: candidates are ordered by (value descending, image index ascending, position ascending)
and batches always hold the same images (batch b is dataset items b*B .. b*B+B-1, an unreadable
image keeping its slot), so the merge itself adds no rounding and does not depend on the order the
batches come in. A single-process run, a resumed run and a distributed run (under torchrun; rank r
scans batches r, r+W, ...) therefore end with identical results *when every process computes
with the same number of threads on the same kind of device*. The convolutions' arithmetic depends
on the thread count (the order of the sums changes), so, e.g., 2 processes of 1 thread against 1
process of 2 threads give the same rankings with values equal only to float rounding (about 1e-6
relative); two images whose values are that close may then swap places.

Resume: with `checkpoint=PATH` the running top-k and the number of batches done are written
atomically every `checkpoint_every` batches; a rerun with the same arguments continues from there.
The progress file is removed only after `finish` (e.g. saving the result) has returned, so a kill
at any moment loses at most `checkpoint_every` batches. Temporaries that a killed process left
beside the progress file are removed when the next scan starts. A scan in which no image could be
read is an error (ImageError), not an empty result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from ...batching import Batches, check_batch_size, model_work, pad
from ...errors import CnnvizError, ImageError, LayerError, ParameterError
from ...files import atomic_path, check_output
from ...layers import capture, require_maps, resolve_layer
from ...bare import LoadedModel, takes_model
from ...results import Result, provenance
from ..experiments.datasets import ImageListDataset, list_files  # noqa: F401  (importable from here too)
from ..common import autocast, batch_memory_format, model_on_device, progress_bar, resolve_device
__api__ = ("scan",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

_NO_IMAGE = np.iinfo(np.int64).max  # image index of an empty slot: loses every tie
CHECKPOINT_VERSION = 1


class CheckpointError(CnnvizError):
    """A progress file that belongs to another scan, or cannot be read."""


@dataclass
class TopkResult(Result):
    """Top-k activating images per unit of one layer.

    values: float32 U x k, the unit's spatial maximum per image, descending (-inf: fewer than k images).
    image_index: int64 U x k, index into `files` (-1 for an empty slot).
    position: int64 U x k x 2, (y, x) of the maximum in the layer's map (-1 for an empty slot).
    units: int64 U, the channels scanned.
    files: str N, the data set in scan order, relative to params["root"].
    skipped: str S, unreadable files (reasons in params["skipped_reasons"]).
    """

    kind: ClassVar[str] = "topk"
    values: np.ndarray = None
    image_index: np.ndarray = None
    position: np.ndarray = None
    units: np.ndarray = None
    files: np.ndarray = None
    skipped: np.ndarray = None

    def top(self, unit: int) -> list[tuple[str, float, tuple[int, int]]]:
        """(file, value, (y, x)) of the top images of channel `unit`, best first."""
        hits = np.flatnonzero(self.units == unit)
        if not hits.size:
            raise LayerError(f"unit {unit} was not scanned; scanned units: {_units_str(self.units)}")
        r = hits[0]
        return [(str(self.files[i]), float(v), (int(p[0]), int(p[1])))
                for v, i, p in zip(self.values[r], self.image_index[r], self.position[r]) if i >= 0]


# --------------------------------------------------------------------------------------------------
# Exact top-k bookkeeping

def empty_state(num_units: int, k: int) -> dict:
    return {"values": np.full((num_units, k), -np.inf, np.float32),
            "image_index": np.full((num_units, k), _NO_IMAGE, np.int64),
            "position": np.full((num_units, k, 2), -1, np.int64)}


def merge(state: dict, values: np.ndarray, image_index: np.ndarray, position: np.ndarray, k: int) -> dict:
    """Keep the k best of `state` and the candidates (U x M values, U x M images, U x M x 2
    positions), ordered by value desc, image asc, y asc, x asc. Exact and order-independent."""
    v = np.concatenate([state["values"], values.astype(np.float32)], axis=1)
    i = np.concatenate([state["image_index"], image_index.astype(np.int64)], axis=1)
    p = np.concatenate([state["position"], position.astype(np.int64)], axis=1)
    v = np.where(np.isnan(v), -np.inf, v).astype(np.float32)
    order = np.lexsort((p[..., 1], p[..., 0], i, -v), axis=-1)[:, :k]
    return {"values": np.take_along_axis(v, order, 1), "image_index": np.take_along_axis(i, order, 1),
            "position": np.take_along_axis(p, order[..., None], 1)}


def _spatial_max(units: torch.Tensor):
    def reduce(t: torch.Tensor):
        t = t.detach()
        if t.ndim == 2:
            t = t[:, :, None, None]
        t = t.index_select(1, units.to(t.device)).float()
        w = t.shape[3]
        flat = t.flatten(2)
        idx = flat.argmax(2)  # the first maximum: the lowest (y, x)
        val = flat.gather(2, idx[..., None])[..., 0]
        return val.cpu(), (idx // w).cpu(), (idx % w).cpu()
    return reduce


# --------------------------------------------------------------------------------------------------
# Units

def check_units(text: str) -> list[tuple[int, int | None]]:
    """The syntax of a units text ("0:64", "3", "1,5,9", "0:64,100", "100:" for 100 to the last
    channel), checked without the layer: (start, stop) per comma-separated part, stop None for an
    open range. Raises ParameterError, in one line naming the bad part, for anything else
    (negative units, reversed or empty ranges, "a:b:c", empty parts, junk)."""
    text = str(text).strip()
    if not text:
        raise ParameterError("--units is empty; give e.g. 0:64 or 3,7,9")
    spans: list[tuple[int, int | None]] = []
    for part in text.split(","):
        part = part.strip()
        bits = part.split(":")
        try:
            if len(bits) > 2:
                raise ValueError
            lo = int(bits[0]) if bits[0].strip() or len(bits) == 1 else 0
            hi = lo + 1 if len(bits) == 1 else (int(bits[1]) if bits[1].strip() else None)
        except ValueError:
            raise ParameterError(f"units {text!r} is not understood (at {part!r}); write e.g. 0:64, 5 or "
                                 "1,5,9") from None
        if len(bits) == 1 and lo < 0:
            raise ParameterError(f"unit {lo} in units {text!r} is negative; units are channels numbered from 0, "
                                 "e.g. 5 or 0:64")
        if lo < 0 or (hi is not None and hi <= lo):
            raise ParameterError(f"units {part!r} is an empty or negative range; write START:STOP with "
                                 "0 <= START < STOP, e.g. 0:64")
        spans.append((lo, hi))
    return spans


def parse_units(units, num_channels: int | None = None) -> list[int] | None:
    """None (all), an int, a range, a list, or text (see `check_units`). With `num_channels` the
    units must lie in 0..num_channels-1 (LayerError otherwise)."""
    last = f"0..{num_channels - 1}" if num_channels is not None else "0 and up"
    if units is None:
        return None if num_channels is None else list(range(num_channels))
    if isinstance(units, str):
        out: list[int] = []
        for lo, hi in check_units(units):
            if hi is None:
                if num_channels is None:
                    raise ParameterError(f"units {units!r}: an open range needs the layer's channel count")
                hi = max(num_channels, lo + 1)
            if num_channels is not None and hi > num_channels:  # before expanding: "0:10**12" is no list
                raise LayerError(f"units {units!r} out of range: the layer has channels {last}")
            out.extend(range(lo, hi))
    elif isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        out = [int(units)]
    else:
        try:
            out = [operator.index(u) for u in units]
        except TypeError:
            raise ParameterError(f"units {units!r} is not understood; give an int, a list of ints, a range or text "
                                 "like '0:64'") from None
    if not out:
        raise ParameterError(f"units {units!r} selects no unit")
    if len(set(out)) != len(out):
        raise ParameterError(f"units {units!r} lists a unit twice")
    if min(out) < 0 or (num_channels is not None and max(out) >= num_channels):
        raise LayerError(f"units {_units_str(out)} out of range: the layer has channels {last}")
    return out


def _units_str(units) -> str:
    u = [int(x) for x in units]
    if u and u == list(range(u[0], u[-1] + 1)):
        return f"{u[0]}:{u[-1] + 1}"
    return ",".join(map(str, u))


# --------------------------------------------------------------------------------------------------
# Distributed

def _dist_setup() -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialized the process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_available():
            raise ParameterError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
        dist.init_process_group(backend="gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def release_group(world: int, owns_group: bool) -> None:
    """Destroy the process group if this run initialized it (`_dist_setup`'s third value)."""
    if world > 1 and owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def finish_and_release(result, finish, rank: int, world: int, owns_group: bool, ckpt: Path | None):
    """The end of a resumable, torchrun-split run, shared by the top-k scan and the audit: rank 0
    hands `result` to `finish` (which writes it), every rank waits at the barrier until it has, the
    process group is released, and only then each rank drops its progress file `ckpt`: a run killed
    before the result is written keeps the progress to resume from. Returns `result`."""
    try:
        if rank == 0:
            fault_pause("finish")
            if finish is not None:
                finish(result)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written the result: now every rank may drop its progress
    finally:
        release_group(world, owns_group)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return result


# --------------------------------------------------------------------------------------------------
# Checkpoint

def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that a killed writer of `path` left beside it, and return them.

    `atomic_path` writes `.STEM.XXXXXXXX.SUFFIX` (mkstemp's 8 random characters) and renames it onto
    `path`; on an exception or Ctrl-C/SIGTERM it removes it, but a kill -9 (or a power cut) in
    between leaves it behind for good. A run that is about to write `path` calls this first, so
    they do not pile up. (Two runs writing the same file at once would already clobber each other.)
    """
    parent = (p := Path(path)).parent  # Path("x").parent is Path(".")
    pattern = re.compile(rf"\.{re.escape(p.stem)}\.[a-z0-9_]{{8}}{re.escape(p.suffix)}")
    removed = []
    if parent.is_dir():
        for f in parent.iterdir():
            if pattern.fullmatch(f.name) and f.is_file() and not f.is_symlink():
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed.append(f)
    return removed


def fault_pause(point: str) -> None:
    """Test hook: with CNNVIZ_TEST_PAUSE=POINT:SECONDS, announce POINT on stderr and sleep there,
    so that a fault test can kill the process at that moment deterministically. Points:
    "progress-write" (a progress file is written to its temporary, not yet renamed) and
    "finish" (the scan is done, the result not yet written)."""
    name, _, seconds = os.environ.get("CNNVIZ_TEST_PAUSE", "").partition(":")
    if name == point:
        print(f"cnnviz test pause: {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 5))


def _save_checkpoint(path: Path, key: str, state: dict, batches_done: int, skipped: list[tuple[str, str]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(CHECKPOINT_VERSION), key=np.array(key), batches_done=np.int64(batches_done),
                     skipped=np.array(json.dumps(skipped)), **state)
        fault_pause("progress-write")


def is_progress_file(path: Path) -> bool:
    """Whether `path` is a progress file cnnviz wrote (an npz archive whose `key` is a SHA-256 hex
    digest): only such a file is ever deleted to start over."""
    import zipfile

    try:
        if path.is_symlink() or not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with np.load(path, allow_pickle=False) as d:
            key = str(d["key"]) if "key" in d.files else ""
    except Exception:  # noqa: BLE001
        return False
    return len(key) == 64 and all(c in "0123456789abcdef" for c in key)


def drop_progress(path: Path) -> None:
    """Start over: delete the progress file `path` if cnnviz wrote it; refuse (one line) to delete
    anything else that happens to sit at that path."""
    from ...errors import OutputError

    if not (path.exists() or path.is_symlink()):
        return
    if not is_progress_file(path):
        raise OutputError(f"{str(path)!r} is not a cnnviz progress file, so it is not replaced; move it away or give "
                          "another output name")
    path.unlink()


def read_progress(path: Path, key: str, what: str, fresh: str) -> dict:
    """The arrays of progress file `path`, checked to belong to the same work (`key`); else a
    one-line CheckpointError naming `what` ("a scan", "an audit") and how to start over (`fresh`)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            data = {n: d[n] for n in d.files}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read progress file {str(path)!r} ({e}); delete it to start over") from None
    if str(data.get("key", "")) != key:
        raise CheckpointError(f"progress file {str(path)!r} belongs to {what} with other arguments or other files; "
                              f"delete it ({fresh}) to start over")
    return data


def _load_checkpoint(path: Path, key: str, num_units: int, k: int):
    data = read_progress(path, key, "a scan", "or use --no-resume")
    state = {n: data[n] for n in ("values", "image_index", "position")}
    if state["values"].shape != (num_units, k):
        raise CheckpointError(f"progress file {str(path)!r} does not fit this scan; delete it to start over")
    return state, int(data["batches_done"]), [tuple(s) for s in json.loads(str(data["skipped"]))]


# --------------------------------------------------------------------------------------------------
# The scan

FIXED_BATCH = 32  # where the batch size cannot be chosen by measuring (resumable or distributed scans)


@takes_model
def scan(lm: LoadedModel, source, layer: str, units=None, k: int = 9, batch_size: int | None = None,
         num_workers: int = 0,
         device: str = "auto", checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 10,
         progress: bool | None = None, amp: bool | None = None,
         on_batch: Callable[[int, int], None] | None = None, resume: bool = True,
         finish: Callable[[TopkResult], None] | None = None) -> TopkResult:
    """The `k` images that activate each unit of `layer` most (spatial maximum per image).

    source: a folder (class folders are searched recursively), a CSV with a `file`/`path` column,
      or a list of image paths.
    units: None (all channels), an int, a range/list, or text like "0:64".
    batch_size: images per forward pass; None: chosen by measuring the first batches of the scan
      (cnnviz.batching) when the scan is single-process, has no progress file and loads images in
      the main process (num_workers=0); otherwise 32, since resumed and distributed scans count
      whole batches of one size. Every batch is padded to full groups of 4 (cnnviz.batching.pad),
      so the values do not depend on the batch size.
    checkpoint: progress file; written every `checkpoint_every` batches, resumed from when it
      exists and fits these arguments (unless resume=False: then it is discarded), removed when the
      scan completes and `finish` has returned. Under torchrun each rank keeps its own (PATH.rankR).
    on_batch(batches_done, batches_total): called after each batch (and checkpoint); the total is
      None while batch sizes are being chosen by measuring.
    finish(result): called (on rank 0 only) before the progress file is removed: write the result
      there, so that a kill before it is written leaves the progress to resume from.
    Under torchrun (or with torch.distributed initialized) each rank scans every W-th batch and the
    ranks' top-k are merged exactly; every rank returns the merged result.
    Raises ImageError, writing nothing, when no image could be read. The global torch random state
    is left alone (the DataLoader gets its own generator).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise ParameterError(f"k must be a positive whole number, got {k!r}")
    batch_size = check_batch_size(batch_size)
    if not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every <= 0:
        raise ParameterError(f"checkpoint_every must be a positive whole number, got {checkpoint_every!r}")
    if num_workers < 0:
        raise ParameterError(f"workers must be 0 or more, got {num_workers!r}")
    k = int(k)
    root, files, ignored = list_files(source)
    h, w = lm.input_size
    example = torch.zeros(1, 3, h, w)
    info = require_maps(resolve_layer(lm.model, layer, example), vector_ok=True)
    unit_list = parse_units(units, info.shape[0])
    rank, world, owns_group = _dist_setup()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    measured = batch_size is None and checkpoint is None and world == 1 and num_workers == 0
    batches = (Batches(len(files), None, device=dev, work=model_work(lm.model, example, engine="topk", amp=use_amp))
               if measured else None)
    why_fixed = None
    if batch_size is None and not measured:
        batch_size = FIXED_BATCH
        why_fixed = ("a resumable scan (progress file)" if checkpoint is not None else
                     "a distributed scan" if world > 1 else "loader workers (num_workers > 0)")
    num_batches = -(-len(files) // batch_size) if batch_size else 1
    mine = list(range(rank, num_batches, world))
    # a resumed run must continue with the same weights: the state's hash, not only its name
    model_id = lm.fingerprint() if checkpoint is not None else lm.identity()
    key_src = json.dumps({"v": CHECKPOINT_VERSION, "model": model_id, "layer": info.address, "units": unit_list,
                          "k": k, "batch_size": batch_size, "amp": use_amp, "rank": rank, "world": world,
                          "files": hashlib.sha256("\n".join(files).encode()).hexdigest()}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()
    ckpt = None
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if world > 1:
            ckpt = ckpt.with_name(f"{ckpt.name}.rank{rank}")
        check_output(ckpt, (ckpt.suffix.lower(),))  # a directory or a read-only folder: fail before the work
        remove_stale_temporaries(ckpt)
        if not resume:
            drop_progress(ckpt)

    U = len(unit_list)
    state, done, skipped = empty_state(U, k), 0, []
    resumed_from = 0
    if ckpt is not None and ckpt.exists():
        state, done, skipped = _load_checkpoint(ckpt, key, U, k)
        resumed_from = done

    dataset = ImageListDataset(root, files, lm.preprocessing)
    if batches is not None:  # sizes chosen as the scan goes: the sampler asks for each slice when it is needed
        todo = (list(range(lo, hi)) for lo, hi in batches)
    else:
        todo = [list(range(b * batch_size, min((b + 1) * batch_size, len(files)))) for b in mine[done:]]
    # its own generator: the DataLoader draws a base seed when iterated, from the global one otherwise
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=todo, num_workers=num_workers,
                                         pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(0))
    units_t = torch.as_tensor(unit_list, dtype=torch.long)
    start = time.perf_counter()
    with model_on_device(lm.model, dev) as model, torch.inference_mode():
        with autocast(dev, use_amp):
            layout = batch_memory_format(model, example.to(dev))
        with capture(model, info, reduce=_spatial_max(units_t)) as cap, \
                progress_bar(len(files), "top-k", progress if rank == 0 else False) as bar:
            for idx, x, ok, reason in loader:
                with autocast(dev, use_amp):  # padded to full groups: values independent of the batch size
                    model(pad(x).to(dev, non_blocking=True).contiguous(memory_format=layout))
                val, ys, xs = (a[:len(idx)].numpy() for a in cap.values.pop())
                okm = ok.numpy().astype(bool)
                for i, good, why in zip(idx.tolist(), okm, reason):
                    if not good:
                        skipped.append((files[i], why))
                if okm.any():
                    img = idx.numpy()[okm]
                    state = merge(state, val[okm].T, np.broadcast_to(img, (U, img.size)),
                                  np.stack([ys[okm].T, xs[okm].T], axis=-1), k)
                done += 1
                bar.update(len(img) if okm.any() else 0)
                if ckpt is not None and (done % checkpoint_every == 0 or done == len(mine)):  # fixed size here
                    _save_checkpoint(ckpt, key, state, done, skipped)
                if on_batch is not None:
                    on_batch(done, len(mine) if batches is None else None)
    elapsed = time.perf_counter() - start

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (state, skipped))
        state = empty_state(U, k)
        skipped = []
        for st, sk in gathered:
            state = merge(state, st["values"], st["image_index"], st["position"], k)
            skipped.extend(sk)
    skipped.sort(key=lambda s: files.index(s[0]) if s[0] in files else len(files))
    if len(skipped) >= len(files):  # every rank sees the merged list: all of them stop here
        release_group(world, owns_group)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
        raise ImageError(_nothing_read(source, root, skipped))

    empty = state["image_index"] == _NO_IMAGE
    image_index = np.where(empty, -1, state["image_index"])
    params = {"layer": info.address, "layer_type": info.type, "layer_shape": list(info.shape), "k": k,
              "units": _units_str(unit_list), "num_units": U, "num_files": len(files),
              "num_scanned": len(files) - len(skipped), "root": str(Path(root).resolve()),
              "source": str(source) if not isinstance(source, (list, tuple)) else "list",
              "skipped_reasons": [why for _, why in skipped], "ignored": ignored[:100], "num_ignored": len(ignored),
              **(batches.record() if batches is not None else
                 {"batch_size": batch_size, "batch_size_auto": False, "batch_fixed_for": why_fixed}),
              "num_workers": num_workers, "world_size": world, "amp": use_amp,
              "memory_format": str(layout).replace("torch.", ""), "resumed_from_batch": resumed_from,
              "seconds": round(elapsed, 3)}
    result = TopkResult(params=params, provenance=provenance(lm.identity(), str(dev)),
                        values=state["values"], image_index=image_index, position=state["position"],
                        units=np.asarray(unit_list, dtype=np.int64), files=np.asarray(files, dtype=str),
                        skipped=np.asarray([f for f, _ in skipped], dtype=str))
    return finish_and_release(result, finish, rank, world, owns_group, ckpt)


def _nothing_read(source, root: Path, skipped: list[tuple[str, str]]) -> str:
    """The one-line error for a data set of which no image could be read, with the first reasons."""
    where = "the list given" if isinstance(source, (list, tuple)) else repr(str(source))
    reasons = " | ".join(" ".join(why.split()) for _, why in skipped[:3])
    more = f" | and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (f"no image could be read from {where}: all {len(skipped)} file(s) are unreadable ({reasons}{more}); "
            "check the files or point to another folder")
