"""Evolution of features over training (Zeiler & Fergus 2014, Sec. 4.2, Fig. 4).

For each checkpoint saved during training (state dicts of one architecture), the data set is
scanned for the image and position at which each chosen unit of a layer responds most strongly
(`cnnviz.engines.units.topk.scan` with k = 1: streamed, flat memory), and that single activation is
projected to pixels and cut out around its position (`cnnviz.engines.units.patches.unit_patches`), as
`cnnviz topk --figure` does: with the deconvnet, or with guided backprop where cnnviz's check finds
that the deconvnet's projections do not depend on the image (a network without max pooling; the
check runs at the first checkpoint and its choice holds for every column, so that the columns
compare), at the unit's receptive field, or where its map is high when the field exceeds the image. The figure has one row per
unit and one column per checkpoint: ZF saw the lower layers settle within a few epochs and the
upper ones only after many.

The user's model is never changed: each checkpoint is loaded into a copy of it. The work resumes:
with `progress=PATH` each finished checkpoint's row is written there atomically (and the scan of
the current one keeps its own progress file beside it, PATH.scan), so a rerun with the same
arguments starts where the last one stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ...bare import takes_model
from ... import schema as S
from ...checkpoints import file_id, load_state, read_checkpoint, state_dict_of
from ...errors import ParameterError
from ...files import atomic_path
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import resolve_device
from ..units.patches import DEFAULT_FILL, layer_rf, unit_patches
from ..units.topk import drop_progress, read_progress, remove_stale_temporaries, scan

__api__ = ("evolution",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

PROGRESS_VERSION = 2  # 2: rows hold the projection, the crop and the boxes


@dataclasses.dataclass
class EvolutionResult(Result):
    """The strongest activation of each unit at each checkpoint, with its projection.

    values: float32 C x U, the unit's largest activation over the data (spatial maximum).
    image_index: int64 C x U, the image (index into `files`) where it occurs.
    position: int64 C x U x 2, (y, x) of it in the layer's map.
    projections: uint8 C x U x r x r x 3, its projection (params["projection"]: "deconv" or
      "guided") at the receptive field or the crop (params["crop"]), 128 = zero, scaled by its own
      largest |value|, as ZF show them.
    patches: uint8 C x U x r x r x 3, the image at the receptive field or the crop.
    boxes: int64 C x U x 4, (top, bottom, left, right) of the field or the crop in the input crop
      (inclusive); None in results saved before it was recorded.
    units: int64 U. files: str N, the data set (relative to params["root"]).
    checkpoints: str C, the checkpoints' file names, in training order.
    """

    kind: ClassVar[str] = "evolution"
    renderer: ClassVar = "cnnviz.render.experiments.evolution:figure"
    optional_arrays: ClassVar[tuple] = ("boxes",)  # results saved before boxes were recorded
    param_schema: ClassVar[dict] = {"layer": S.TEXT, "labels": S.TEXTS}
    array_schema: ClassVar[dict] = {
        "values": S.Arr("f", ("C", "U")), "image_index": S.Arr("iu", ("C", "U")),
        "position": S.Arr("iu", ("C", "U", 2)), "projections": S.Arr("u", ("C", "U", None, None, 3)),
        "patches": S.Arr("u", ("C", "U", None, None, 3)), "units": S.Arr("iu", ("U",)),
        "boxes": S.Arr("iu", ("C", "U", 4)),
        "checkpoints": S.Arr("U", ("C",))}
    values: np.ndarray = None
    image_index: np.ndarray = None
    position: np.ndarray = None
    projections: np.ndarray = None
    patches: np.ndarray = None
    units: np.ndarray = None
    files: np.ndarray = None
    checkpoints: np.ndarray = None
    boxes: np.ndarray = None


def _natural(path: str):
    """Sort key: digits compare as numbers (ckpt_2 before ckpt_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_checkpoints(patterns) -> list[Path]:
    """Files named by `patterns` (paths or glob patterns), each pattern's matches in natural order,
    duplicates dropped. A pattern matching nothing is a one-line ParameterError."""
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    if not patterns:
        raise ParameterError("no checkpoints given; pass --checkpoints 'ckpt_*.pt' (state dicts saved during training)")
    out: list[Path] = []
    for pat in patterns:
        pat = str(pat)
        hits = sorted(glob.glob(pat), key=_natural) if glob.has_magic(pat) else ([pat] if Path(pat).exists() else [])
        hits = [h for h in hits if Path(h).is_file()]
        if not hits:
            raise ParameterError(f"checkpoints {pat!r} match no file; give state-dict files saved during training, "
                                 "e.g. --checkpoints 'ckpt_*.pt'")
        out.extend(Path(h) for h in hits if Path(h) not in out)
    return out


def _label(path: Path) -> str:
    return path.stem


def load_checkpoint_into(lm: LoadedModel, path: Path, trust: bool = False) -> LoadedModel:
    """A copy of `lm` with the state dict of `path` loaded (one-line ModelError when the file is
    missing, unreadable or does not fit the architecture); `lm` itself is not touched."""
    state = state_dict_of(read_checkpoint(path, trust), str(path))
    model = copy.deepcopy(lm.model)
    load_state(model, state, repr(str(path)))
    model.eval()
    return LoadedModel(model, lm.name, file_id(Path(path)), lm.preprocessing, list(lm.categories))


@takes_model
def evolution(lm: LoadedModel, checkpoints, data, layer: str, units=None, batch_size: int | None = None,
              device: str = "auto", progress: str | os.PathLike | None = None, show_progress: bool | None = None,
              trust_checkpoint: bool = False, on_checkpoint: Callable[[int, int, dict], None] | None = None,
              resume: bool = True, finish: Callable[[EvolutionResult], None] | None = None,
              projection: str = "auto", crop: str = "auto") -> EvolutionResult:
    """The strongest activation of each of `units` of `layer` over `data` (a folder, CSV or list of
    images) at each of `checkpoints` (paths or glob patterns of state dicts for `lm`'s
    architecture, in training order), with its projection (`projection` "auto", "deconv" or
    "guided"; `crop` "auto", "rf" or "activation": see `cnnviz.engines.units.patches`).

    progress: a progress file (resumed from when it fits these arguments, unless resume=False;
    removed once `finish(result)`, e.g. writing the result, has returned). on_checkpoint(c, C, row)
    is called after each checkpoint.
    """
    paths = find_checkpoints(checkpoints)
    for p in paths:  # every file readable and fitting before the first scan
        load_checkpoint_into(lm, p, trust_checkpoint)
    import torch

    from ...layers import require_maps, resolve_layer
    from ..units.topk import list_files, parse_units

    from ..units.patches import CROPS, PROJECTIONS, _check_choice

    _check_choice("projection", projection, PROJECTIONS)
    _check_choice("crop", crop, CROPS)
    h, w = lm.input_size
    info = require_maps(resolve_layer(lm.model, str(layer), torch.zeros(1, 3, h, w)))
    layer_rf(lm, info.address)  # a layer with no spatial receptive field: one line before any scan
    parse_units(units, info.shape[0])  # out of range: one line before any scan

    root, files, _ = list_files(data)
    key = json.dumps({"v": PROGRESS_VERSION, "model": lm.name, "layer": str(layer), "units": str(units),
                      "projection": projection, "crop": crop,
                      "checkpoints": [file_id(p) for p in paths], "preprocessing": lm.preprocessing.to_dict(),
                      "files": hashlib.sha256("\n".join(files).encode()).hexdigest()}, sort_keys=True)
    key = hashlib.sha256(key.encode()).hexdigest()
    prog = Path(progress) if progress is not None else None
    rows: list[dict] = []
    if prog is not None:
        remove_stale_temporaries(prog)
        if not resume:
            drop_progress(prog)
        if prog.exists():
            data_ = read_progress(prog, key, "an evolution run", "or use --no-resume")
            rows = [{k[len(f"c{c}_"):]: data_[k] for k in data_ if k.startswith(f"c{c}_")}
                    for c in range(int(data_["done"]))]
    resumed = len(rows)
    for c in range(len(rows), len(paths)):
        cm = load_checkpoint_into(lm, paths[c], trust_checkpoint)
        scan_progress = None if prog is None else prog.with_name(prog.name + ".scan")
        r = scan(cm, data, layer, units=units, k=1, batch_size=batch_size, device=device, checkpoint=scan_progress,
                 progress=show_progress, resume=resume)
        # the first checkpoint decides the projection (auto); the later ones use the same
        asked = projection if not rows else str(rows[0]["projection"])
        pr = unit_patches(cm, r, project=True, device=device, fill=DEFAULT_FILL, projection=asked, crop=crop)
        row = {"values": r.values[:, 0].astype(np.float32), "image_index": r.image_index[:, 0],
               "position": r.position[:, 0], "projections": pr.projections[:, 0], "patches": pr.patches[:, 0],
               "boxes": pr.boxes[:, 0], "units": r.units, "projection": np.array(pr.params["projection"]), "crop": np.array(pr.params["crop"]),
               "note": np.array(pr.params["projection_note"] or ""),
               "uninformative": np.array(bool((pr.params["deconv_check"] or {}).get("uninformative")))}
        rows.append(row)
        if prog is not None:
            _save_progress(prog, key, rows)
        if on_checkpoint is not None:
            on_checkpoint(c, len(paths), row)
    stack = {k: np.stack([row[k] for row in rows]) for k in ("values", "image_index", "position", "projections",
                                                             "patches", "boxes")}
    rf = layer_rf(lm, info.address)
    params = {"layer": info.address, "layer_shape": list(info.shape), "rf": list(rf.rf),
              "units": [int(u) for u in rows[0]["units"]], "labels": [_label(p) for p in paths],
              "checkpoint_ids": [file_id(p) for p in paths], "root": str(Path(root).resolve()),
              "num_files": len(files), "input_size": list(lm.input_size), "resumed_checkpoints": resumed,
              "layer_type": info.type, "projection": str(rows[0]["projection"]), "projection_asked": projection,
              "projection_note": str(rows[0]["note"]) or None,
              "deconv_uninformative": any(bool(row["uninformative"]) for row in rows),  # where checked
              "crop": str(rows[0]["crop"]), "crop_asked": crop, "tile": list(stack["projections"].shape[2:4]),
              "display": "single activation, cut at the receptive field or the crop, scaled by its max |value|"}
    result = EvolutionResult(params=params, provenance=provenance(lm.identity(), str(resolve_device(device))), **stack,
                             units=np.asarray(rows[0]["units"], np.int64), files=np.asarray(files, dtype=str),
                             checkpoints=np.asarray([p.name for p in paths], dtype=str))
    if finish is not None:
        finish(result)
    if prog is not None and prog.exists():
        prog.unlink()
    return result


def _save_progress(path: Path, key: str, rows: list[dict]) -> None:
    arrays = {f"c{c}_{k}": v for c, row in enumerate(rows) for k, v in row.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(PROGRESS_VERSION), key=np.array(key), done=np.int64(len(rows)), **arrays)
