"""Unit semantics: what each unit of a layer responds to, read from the images that drive it most
(Zhou et al. 2015, "Object detectors emerge in deep scene CNNs", Sec. 3-4; Bau et al. 2017,
"Network dissection").

For every unit of the layer:

- its top-k images (`cnnviz.engines.units.topk.scan`, the spatial maximum per image) and their labels:
  the most common class and group among them (the group is the coarse WordNet-style family of
  `cnnviz.taxonomy` for ImageNet class indices, or the label itself), the purity (share of the
  top-k in that group) and its p-value: the chance that k images drawn at random from the data set
  have a group at least that common (Monte Carlo, multinomial draws with the data set's group
  shares). Zhou et al. labelled units by the categories of their top images this way (by hand, on
  Mechanical Turk); here the labels are given.
- the class-selectivity index (Morcos et al. 2018) over the groups: with mu_g the mean over group
  g's images of the unit's rectified, position-averaged activation, SI = (mu_max - mu_rest) /
  (mu_max + mu_rest), mu_rest the mean of the other groups' mu_g: 0 when every group drives it
  alike, 1 when only one does.
- a colour concept, measured as Bau et al. measure concepts: the unit's map on each top image,
  upsampled (bilinear) to the input crop and thresholded at `threshold` times the unit's largest
  activation in the data set, is a segmentation (Zhou et al. Fig. 9); its IoU with each colour's
  pixels, summed over the top images (sum |M & C| / sum |M | C|), names the best colour. The
  colours are 11 basic colour terms given by rules in HSV space (`colour_names`).
- its label type: the group ("family" or "label") when the purity's p-value is below `alpha`,
  else "colour" when the best colour's IoU reaches `colour_iou`, else "none". The per-layer
  histogram of these types is Bau et al.'s summary of a layer.

Scans: the top-k scan and a position-averaged feature scan (for the selectivity index) stream the
data set once each and resume from their progress files (PATH and PATH with ".features" before its
suffix); both files stay until the result is written. Then only the top images are read again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...bare import takes_model
from ... import schema as S
from ...errors import ParameterError
from ...images import load_image
from ...layers import capture
from ...models import LoadedModel
from ...results import Result, provenance
from ..common import model_on_device, resolve_device
from .features import group_labels, pooled_features, read_labels, resolve_layers

__api__ = ("semantics",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

COLOURS = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
COLOUR_RGB = {"black": (0.1, 0.1, 0.1), "white": (0.95, 0.95, 0.95), "grey": (0.55, 0.55, 0.55), "red": (0.85, 0.1, 0.1),
              "orange": (1.0, 0.55, 0.0), "yellow": (0.95, 0.85, 0.1), "green": (0.2, 0.65, 0.2),
              "blue": (0.15, 0.35, 0.85), "purple": (0.55, 0.2, 0.7), "pink": (1.0, 0.6, 0.75),
              "brown": (0.55, 0.33, 0.14)}
LABEL_TYPES = ("group", "colour", "none")
SIMULATIONS = 20000
EXAMPLES = 8  # units shown in the figure
EXAMPLE_IMAGES = 5  # top images shown per example unit
THUMB = 96


@dataclasses.dataclass
class SemanticsResult(Result):
    """Per-unit semantics of one layer.

    units: int64 U, the channels.
    top_index: int64 U x k, top images (index into files; -1: empty). top_value: float32 U x k.
    purity: float32 U, share of the top-k in the most common group. p_value: float32 U.
    selectivity: float32 U, class-selectivity index over the groups.
    colour_iou: float32 U x 11 (COLOURS), IoU of the unit's thresholded maps with each colour.
    label_type: int64 U, index into LABEL_TYPES.
    example_units: int64 E (index into units), the units drawn; example_images: uint8 E x m x h x w x 3,
    example_masks: bool E x m x h x w, their top images and thresholded maps (thumbnails).
    files: str N, the data set.
    params: layer, k, grouping, groups (names), top_group / top_class (per unit, names), chance_purity,
      threshold, alpha, colour_iou, group_shares.
    """

    kind: ClassVar[str] = "semantics"
    renderer: ClassVar = "cnnviz.render.units.semantics:figure"
    param_schema: ClassVar[dict] = {"top_group": S.TEXTS}
    array_schema: ClassVar[dict] = {"units": S.Arr("i", ("U",)), "purity": S.Arr("f", ("U",)),
                                    "p_value": S.Arr("f", ("U",)), "selectivity": S.Arr("f", ("U",)),
                                    "colour_iou": S.Arr("f", ("U", len(COLOURS))), "label_type": S.Arr("i", ("U",)),
                                    "example_units": S.Arr("i", ("E",)),
                                    "example_images": S.Arr("u", ("E", None, None, None, 3)),
                                    "example_masks": S.Arr("b", ("E", None, None, None))}
    units: np.ndarray = None
    top_index: np.ndarray = None
    top_value: np.ndarray = None
    purity: np.ndarray = None
    p_value: np.ndarray = None
    selectivity: np.ndarray = None
    colour_iou: np.ndarray = None
    label_type: np.ndarray = None
    example_units: np.ndarray = None
    example_images: np.ndarray = None
    example_masks: np.ndarray = None
    files: np.ndarray = None


# --------------------------------------------------------------------------------------------------
# Measures

def colour_names(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of each pixel of uint8 ... x 3 RGB `pixels`, by rules in HSV space (h in
    degrees, s and v in 0..1): v < 0.2 black; s < 0.15: white (v > 0.8) or grey; hue 15-45 with
    v < 0.6 brown; else by hue: red < 15 or >= 345, orange < 45, yellow < 70, green < 170,
    blue < 260, purple < 300, pink < 345."""
    rgb = np.asarray(pixels, np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    v, c = mx, mx - mn
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1), 0)
    safe = np.where(c > 0, c, 1)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    h = np.where(c > 0, h, 0)
    hue_edges = np.array([15, 45, 70, 170, 260, 300, 345])
    hue_names = np.array([3, 4, 5, 6, 7, 8, 9, 3])  # red, orange, yellow, green, blue, purple, pink, red
    out = hue_names[np.searchsorted(hue_edges, h, side="right")]
    out = np.where((h >= 15) & (h < 45) & (v < 0.6), 10, out)
    out = np.where(s < 0.15, np.where(v > 0.8, 1, 2), out)
    out = np.where(v < 0.2, 0, out)
    return out.astype(np.int64)


def selectivity_index(acts: np.ndarray, groups) -> np.ndarray:
    """Class-selectivity index of each column of `acts` (N x U, non-negative) over `groups` (N
    labels; None rows are left out): (mu_max - mu_rest) / (mu_max + mu_rest); 0 where all are 0."""
    keep = np.array([g is not None for g in groups]) & ~np.isnan(acts).any(1)
    g = np.array([str(x) for x, k in zip(groups, keep) if k])
    a = np.asarray(acts, np.float64)[keep]
    names = sorted(set(g))
    if len(names) < 2:
        raise ParameterError("the selectivity index needs images of at least 2 groups")
    mu = np.stack([a[g == n].mean(0) for n in names])  # G x U
    top = mu.max(0)
    rest = (mu.sum(0) - top) / (len(names) - 1)
    den = top + rest
    return np.where(den > 0, (top - rest) / np.where(den > 0, den, 1), 0.0).astype(np.float32)


def purity_p_values(counts: np.ndarray, k: np.ndarray, shares: np.ndarray, seed: int = 0,
                    simulations: int = SIMULATIONS) -> tuple[np.ndarray, float]:
    """P(the most common group among k random images is at least `counts`) per unit, and the mean
    purity (max count / k) of random draws for the most common k. Draws are multinomial with the
    data set's group `shares` (sampling with replacement; close to without for k << N)."""
    rng = np.random.default_rng(seed)
    out = np.ones(len(counts), np.float32)
    chance = float("nan")
    for kk in sorted(set(int(x) for x in k if x > 0)):
        best = rng.multinomial(kk, shares, size=simulations).max(1)
        sel = k == kk
        out[sel] = [(np.sum(best >= c) + 1) / (simulations + 1) for c in counts[sel]]
        chance = float(best.mean() / kk) if np.isnan(chance) or kk == max(k) else chance
    return out, chance


# --------------------------------------------------------------------------------------------------
# The engine

def _features_path(checkpoint):
    p = Path(checkpoint)
    return p.with_name(p.stem + ".features" + p.suffix)


@takes_model
def semantics(lm: LoadedModel, source, layer: str, units=None, k: int = 10, labels=None, grouping: str = "auto",
              threshold: float = 0.5, alpha: float = 0.01, colour_iou: float = 0.2, batch_size: int | None = None,
              device: str = "auto", checkpoint=None, checkpoint_every: int = 10, resume: bool = True,
              progress: bool | None = None, seed: int = 0, finish=None) -> SemanticsResult:
    """Label every unit of `layer` (or `units`) from its top-k images over `source`; see the module
    docstring. labels: CSV or dict (default: class folders); grouping: "auto", "family", "label"."""
    from ..experiments.datasets import list_files
    from .topk import scan

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ParameterError(f"k must be a positive whole number, got {k!r}")
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold must lie between 0 and 1 (a share of the unit's largest activation), got {threshold!r}")
    if not 0 < alpha < 1:
        raise ParameterError(f"alpha must lie between 0 and 1, got {alpha!r}")
    if not 0 < colour_iou <= 1:
        raise ParameterError(f"colour IoU threshold must lie in (0, 1], got {colour_iou!r}")
    root, files, _ = list_files(source)
    if k > len(files):
        raise ParameterError(f"k={k} is larger than the {len(files)} images of the data set; use -k {len(files)} or fewer")
    raw = read_labels(files, labels)
    groups, used = group_labels(raw, grouping)
    info = resolve_layers(lm, [layer])[0]
    out: list[SemanticsResult] = []

    def after_topk(top):
        def after_features(feats):
            r = _label(lm, info, top, feats, raw, groups, used, threshold, alpha, colour_iou, seed, device)
            out.append(r)
            if finish is not None:
                finish(r)

        pooled_features(lm, source, [info], pool="relu-mean", batch_size=batch_size, device=device,
                        checkpoint=None if checkpoint is None else _features_path(checkpoint),
                        checkpoint_every=checkpoint_every, resume=resume, progress=progress, finish=after_features,
                        what="semantics")

    scan(lm, source, info.address, units=units, k=k, batch_size=batch_size, device=device, checkpoint=checkpoint,
         checkpoint_every=checkpoint_every, progress=progress, resume=resume, finish=after_topk)
    return out[0]


def _label(lm, info, top, feats, raw, groups, used, threshold, alpha, colour_iou, seed, device) -> SemanticsResult:
    units = top.units
    U, k = top.image_index.shape
    files = list(top.files)
    # groups and classes among the top images
    gidx = top.image_index
    valid = gidx >= 0
    top_groups, purity, counts, kvalid = [], np.zeros(U, np.float32), np.zeros(U, np.int64), valid.sum(1)
    top_class, top_labels = [], []
    for u in range(U):
        gs = [groups[i] for i in gidx[u][valid[u]] if groups[i] is not None]
        if gs:
            names, c = np.unique(gs, return_counts=True)
            best = int(np.argmax(c))
            top_groups.append(str(names[best]))
            counts[u] = c[best]
        else:
            top_groups.append("")
        labs = [_class_text(lm, raw[i]) for i in gidx[u][valid[u]]]
        top_labels.append(labs)
        known = [x for x in labs if x]
        if known:
            names, c = np.unique(known, return_counts=True)
            top_class.append(f"{names[int(np.argmax(c))]} ({int(c.max())}/{len(labs)})")
        else:
            top_class.append("")
    purity = (counts / np.maximum(kvalid, 1)).astype(np.float32)
    labelled = [g for g, ok in zip(groups, feats.ok) if g is not None and ok]
    names_all = sorted(set(labelled))
    shares = np.array([labelled.count(n) for n in names_all], np.float64) / max(1, len(labelled))
    p_value, chance = purity_p_values(counts, kvalid, shares, seed)
    acts = feats.features[info.address][:, units]
    sel = selectivity_index(np.where(feats.ok[:, None], acts, np.nan), groups)
    # the units' maps on their top images: colour IoU and thumbnails
    peak = np.maximum(top.values[:, 0], 1e-12)
    inter = np.zeros((U, len(COLOURS)))
    union = np.zeros((U, len(COLOURS)))
    dev = resolve_device(device)
    owners: dict[int, list[tuple[int, int]]] = {}
    for u in range(U):
        for j in np.flatnonzero(valid[u]):
            owners.setdefault(int(gidx[u, j]), []).append((u, int(j)))
    label_type = np.full(U, 2, np.int64)

    def measure(i, px, pairs, masks):
        names = colour_names(px)
        onehot = names[None] == np.arange(len(COLOURS))[:, None, None]  # 11 x H x W
        for (u, _), mask in zip(pairs, masks):
            inter[u] += (onehot & mask).sum((1, 2))
            union[u] += (onehot | mask).sum((1, 2))

    _unit_masks(lm, info, units, feats.root, files, owners, peak, threshold, dev, measure)
    iou = (inter / np.maximum(union, 1)).astype(np.float32)
    label_type[(iou.max(1) >= colour_iou)] = 1
    label_type[(p_value < alpha) & (counts >= 2)] = 0
    examples = _pick_examples(label_type, p_value, iou, sel)
    # the examples' top images and masks, as thumbnails: a second, small pass (nothing kept from the first)
    m = min(EXAMPLE_IMAGES, int(k))
    ex_img = np.zeros((len(examples), m, THUMB, THUMB, 3), np.uint8)
    ex_mask = np.zeros((len(examples), m, THUMB, THUMB), bool)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for e, u in enumerate(examples):
        for j in range(m):
            if valid[u, j]:
                wanted.setdefault(int(gidx[u, j]), []).append((u, e * m + j))

    def keep(i, px, pairs, masks):
        thumb = _resize(px, THUMB)
        for (_, slot), mask in zip(pairs, masks):
            ex_img[slot // m, slot % m] = thumb
            ex_mask[slot // m, slot % m] = _resize(mask.astype(np.uint8) * 255, THUMB) > 127

    _unit_masks(lm, info, units, feats.root, files, wanted, peak, threshold, dev, keep)
    params = {**feats.params, "layer": info.address, "layer_type": info.type, "layer_shape": list(info.shape), "k": int(k), "grouping": used,
              "groups": names_all, "group_shares": [float(s) for s in shares], "top_group": top_groups,
              "top_count": [int(c) for c in counts], "top_class": top_class, "top_labels": top_labels, "chance_purity": chance,
              "threshold": threshold, "alpha": alpha, "colour_iou": colour_iou, "colours": list(COLOURS),
              "label_types": [used, "colour", "none"], "num_units": int(U),
              "num_group_units": int((label_type == 0).sum()), "expected_by_chance": float(alpha * U),
              "num_colour_units": int((label_type == 1).sum()), "mean_purity": float(purity.mean()),
              "topk_seconds": top.params["seconds"], "skipped": list(top.skipped),
              "skipped_reasons": top.params["skipped_reasons"], "simulations": SIMULATIONS, "seed": seed}
    return SemanticsResult(params=params, provenance=provenance(lm.identity(), str(dev)), units=units.astype(np.int64),
                           top_index=gidx.astype(np.int64), top_value=top.values.astype(np.float32), purity=purity,
                           p_value=p_value, selectivity=sel, colour_iou=iou, label_type=label_type,
                           example_units=np.asarray(examples, np.int64), example_images=ex_img,
                           example_masks=ex_mask, files=np.asarray(files, dtype=str))


def _unit_masks(lm, info, units, root, files, owners, peak, threshold, dev, visit) -> None:
    """For each image i of `owners` (image -> [(unit row, tag), ...]), read it, compute the units'
    maps, upsample them (bilinear) to the input crop and threshold each at `threshold` x the unit's
    `peak`; call visit(i, crop pixels, pairs, masks). Batches of 8 images; nothing is kept."""
    from ...batching import pad

    units_t = torch.as_tensor(units, dtype=torch.long)
    order = sorted(owners)
    with model_on_device(lm.model, dev) as model, torch.inference_mode(), \
            capture(model, info, reduce=lambda t: t.detach().index_select(1, units_t.to(t.device)).float().cpu()) as cap:
        for lo in range(0, len(order), 8):
            chunk = order[lo:lo + 8]
            prepared = [lm.prepare(load_image(Path(root) / files[i])) for i in chunk]
            x = torch.cat([t for _, t in prepared])
            model(pad(x).to(dev))
            maps = cap.values.pop()[:len(chunk)]
            if maps.ndim == 2:
                maps = maps[:, :, None, None]
            h, w = x.shape[2:]
            for n, i in enumerate(chunk):
                rows = [u for u, _ in owners[i]]
                up = torch.nn.functional.interpolate(maps[n:n + 1, rows], size=(h, w), mode="bilinear",
                                                     align_corners=False)[0].numpy()
                visit(i, prepared[n][0], owners[i], [m > threshold * peak[u] for u, m in zip(rows, up)])


def _class_text(lm, label) -> str:
    """A label as a class name: an ImageNet-1k index by the model's class list (when it has 1000
    classes), anything else as it is; '' for no label."""
    if label is None:
        return ""
    try:
        i = int(label)
    except ValueError:
        return str(label)
    return lm.class_name(i) if len(lm.categories) == 1000 else str(label)


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))


def _pick_examples(label_type, p_value, iou, sel) -> list[int]:
    """Units for the figure: the most significant group units, then the strongest colour units,
    then the most selective others, EXAMPLES in all."""
    group = [int(u) for u in np.argsort(p_value, kind="stable") if label_type[u] == 0]
    colour = [int(u) for u in np.argsort(-iou.max(1), kind="stable") if label_type[u] == 1]
    rest = [int(u) for u in np.argsort(-sel, kind="stable") if label_type[u] == 2]
    picks = group[:5] + colour[:2]
    for u in group[5:] + colour[2:] + rest:
        if len(picks) >= EXAMPLES:
            break
        picks.append(u)
    return picks[:EXAMPLES]
