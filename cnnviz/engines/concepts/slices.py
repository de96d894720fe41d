"""Failure slices: coherent groups of images where the model fails (in the spirit of Eyuboglu et al.,
"Domino", ICLR 2022, and d'Eon et al., "Spotlight", 2022), found among the images the model gets
wrong or is unsure of, and described by what their images share.

`failure_slices(features, correct, confidence, ...)` works on numbers the audit already has:

1. The failures: every labelled image whose top-1 class is wrong, and every image whose top-1
   probability is below `low_confidence` (0.5 by default; the only kind of failure an unlabelled
   image can show).
2. They are grouped by an embedding: the penultimate features (the input of the model's last
   linear layer), or the downsized maps of one method. Each row is centred on the data set's mean
   and scaled to unit length, and the failures are clustered agglomeratively (average linkage,
   cosine distance), cut where two groups are on average further apart than 0.7 times the median
   distance between two images of the data set (failures as alike as typical images stay one
   group; a silhouette would split any blob, being blind to scale); at most `max_slices` groups.
   Groups smaller than `min_size` are dropped.
3. Each slice is scored the way the papers score theirs, by how the model does on images *like*
   these: its accuracy on the `neighbours` images of the whole data set nearest (cosine) to the
   slice's centroid, members included, beside the data set's accuracy and a trivial baseline (the
   same measure for the centroids of 50 random sets of as many images as the slice; a slice whose
   neighbourhood is no worse than random ones is not a finding).
4. What its images share, each stated only when it stands out (a one-sample t statistic of the
   slice's mean against the data set's mean and spread, |t| >= 2.5): brightness, saturation and
   hue (from the photos' per-image colour statistics, `colour_stats`), where the map's mass sits
   (its centroid and its share in the central box), and the most common class family (a share at
   least twice the family's share of the data set and of at least half the slice).

Nothing here runs a model: the audit gathers the features, maps and colours in its one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError


T_STANDS_OUT = 2.5
RANDOM_SETS = 50
SPLIT = 0.7  # groups of failures further apart than 0.7 x the median distance of two images are split
HUE_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


@dataclass
class Slice:
    """One group of failures. members: indices into the data set's rows."""
    members: np.ndarray
    neighbours: np.ndarray          # the data set's images nearest to the centroid
    neighbour_accuracy: float       # the model's accuracy on them (labelled ones; nan if none)
    random_accuracy: float          # the same for random sets of as many images (mean)
    random_accuracy_low: float      # ... its 5th percentile: a slice below it is a finding
    shares: list[str] = field(default_factory=list)  # what its images share, in words
    wrong: int = 0                  # members misclassified (of the labelled ones)
    unsure: int = 0                 # members below the confidence threshold

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def finding(self) -> bool:
        """Its neighbourhood is worse than the random sets' 5th percentile."""
        return bool(np.isfinite(self.neighbour_accuracy) and self.neighbour_accuracy < self.random_accuracy_low)


def colour_stats(pixels: np.ndarray) -> np.ndarray:
    """N x 4 per-image colour numbers of uint8 N x H x W x 3 photos: mean brightness (0-1, the V of
    HSV), mean saturation (0-1) and the circular mean hue as (cos, sin) weighted by saturation (0, 0
    for a gray image)."""
    x = np.asarray(pixels, dtype=np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-8), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-8)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
    ang = 2 * np.pi * hue
    wgt = sat * (chroma > 1e-6)
    axes = tuple(range(1, x.ndim - 1))
    return np.stack([mx.mean(axes), sat.mean(axes), (wgt * np.cos(ang)).mean(axes), (wgt * np.sin(ang)).mean(axes)],
                    1).astype(np.float32)


def map_stats(maps: np.ndarray) -> np.ndarray:
    """N x 3 of N x H x W maps (negative values count as zero): the centroid of the mass (x, y, each
    0 at the left/top edge and 1 at the right/bottom) and the share of the mass in the central box
    (the middle half of each side). An all-zero map gives nan."""
    m = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    n, h, w = m.shape
    total = m.sum((1, 2))
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (m.sum(1) * xs).sum(1) / total
        cy = (m.sum(2) * ys).sum(1) / total
        centre = m[:, h // 4: h - h // 4, w // 4: w - w // 4].sum((1, 2)) / total
    return np.stack([cx, cy, centre], 1).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x - x.mean(0, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _groups(emb: np.ndarray, scale: float, max_slices: int) -> np.ndarray:
    """Cluster labels of the rows of `emb` (unit rows): agglomerative, average linkage, cosine,
    cut where the mean distance between two groups exceeds SPLIT x `scale` (the median distance
    between two images of the data set), so that failures as alike as any two images are one group
    and only groups clearly apart are split; at most `max_slices` groups."""
    from sklearn.cluster import AgglomerativeClustering

    if len(emb) < 2:
        return np.zeros(len(emb), np.int64)
    lab = AgglomerativeClustering(n_clusters=None, distance_threshold=SPLIT * scale, metric="cosine",
                                  linkage="average").fit_predict(emb)
    if len(np.unique(lab)) > max_slices:
        lab = AgglomerativeClustering(n_clusters=max_slices, metric="cosine", linkage="average").fit_predict(emb)
    return lab.astype(np.int64)


def _median_distance(unit: np.ndarray, seed: int) -> float:
    rng = np.random.default_rng(seed)
    rows = unit if len(unit) <= 2000 else unit[rng.choice(len(unit), 2000, replace=False)]
    d = 1.0 - rows @ rows.T
    return float(np.median(d[np.triu_indices(len(rows), 1)]))


def _nearest(emb_all: np.ndarray, centroid: np.ndarray, k: int) -> np.ndarray:
    sim = emb_all @ centroid
    return np.argsort(-sim, kind="stable")[:k]


def _accuracy(correct: np.ndarray, rows: np.ndarray) -> float:
    c = correct[rows]
    c = c[np.isfinite(c)]
    return float(c.mean()) if c.size else float("nan")


def _stands_out(values: np.ndarray, members: np.ndarray) -> float:
    """t statistic of the members' mean against the data set's mean and spread (nan-safe)."""
    v = values[np.isfinite(values)]
    s = values[members]
    s = s[np.isfinite(s)]
    if len(v) < 3 or len(s) < 2 or v.std() == 0:
        return 0.0
    return float((s.mean() - v.mean()) / (v.std(ddof=1) / np.sqrt(len(s))))


def _describe(members, colours, mapstats, families, family_names) -> list[str]:
    out = []
    if colours is not None:
        for col, name, hi, lo in ((0, "brightness", "brighter", "darker"), (1, "saturation", "more colourful", "grayer")):
            t = _stands_out(colours[:, col], members)
            if abs(t) >= T_STANDS_OUT:
                out.append(f"{hi if t > 0 else lo} than the data set ({name} {colours[members, col].mean():.2f} "
                           f"against {colours[:, col].mean():.2f})")
        vec = colours[members, 2:4].mean(0)
        if np.hypot(*vec) > 0.15 and np.hypot(*vec) > 2 * np.hypot(*colours[:, 2:4].mean(0)):
            hue = (np.arctan2(vec[1], vec[0]) / (2 * np.pi)) % 1.0
            out.append(f"mostly {HUE_NAMES[int(round(hue * 8)) % 8]} in hue")
    if mapstats is not None:
        for col, axis, words in ((0, "x", ("left", "right")), (1, "y", ("top", "bottom"))):
            t = _stands_out(mapstats[:, col], members)
            if abs(t) >= T_STANDS_OUT:
                out.append(f"the map's mass towards the {words[int(t > 0)]} ({axis} {np.nanmean(mapstats[members, col]):.2f} "
                           f"against {np.nanmean(mapstats[:, col]):.2f}, 0 to 1)")
        t = _stands_out(mapstats[:, 2], members)
        if abs(t) >= T_STANDS_OUT:
            out.append(f"{'more' if t > 0 else 'less'} of the map's mass in the centre "
                       f"({np.nanmean(mapstats[members, 2]):.0%} against {np.nanmean(mapstats[:, 2]):.0%})")
    if families is not None:
        fam = families[members]
        vals, counts = np.unique(fam[fam >= 0], return_counts=True)
        if len(vals):
            top = vals[np.argmax(counts)]
            share, base = counts.max() / len(members), float(np.mean(families[families >= 0] == top))
            if share >= 0.5 and share >= 2 * base and counts.max() >= 2:
                out.append(f"{counts.max()} of {len(members)} are {family_names[int(top)]} "
                           f"({base:.0%} of the data set)")
    return out


def failure_slices(embedding: np.ndarray, correct: np.ndarray, confidence: np.ndarray, *,
                   low_confidence: float = 0.5, max_slices: int = 6, min_size: int = 3, neighbours: int = 10,
                   colours: np.ndarray | None = None, mapstats: np.ndarray | None = None,
                   families: np.ndarray | None = None, family_names=None, seed: int = 0) -> list[Slice]:
    """The failure slices of a data set (see the module's docstring), largest first.

    embedding: N x D (penultimate features, or flattened maps). correct: N, 1.0 right, 0.0 wrong,
    nan unlabelled. confidence: N top-1 probabilities. colours: N x 4 (`colour_stats`), mapstats:
    N x 3 (`map_stats`), families: N family indices (-1 unknown) naming `family_names[i]`."""
    emb = np.asarray(embedding, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    n = len(emb)
    if emb.ndim < 2 or len(correct) != n or len(confidence) != n:
        raise ParameterError(f"failure slices need one row per image: embedding {emb.shape}, correct {correct.shape}, "
                             f"confidence {confidence.shape}")
    if not 0 < low_confidence <= 1:
        raise ParameterError(f"low_confidence must be in (0, 1], got {low_confidence!r}")
    wrong = correct == 0
    unsure = confidence < low_confidence
    fails = np.flatnonzero(wrong | unsure)
    if len(fails) < min_size or n < 4:
        return []
    unit = _unit_rows(emb)
    labels = _groups(unit[fails], _median_distance(unit, seed), max_slices)
    k = min(neighbours, n)
    rng = np.random.default_rng(seed)
    out = []
    for g in np.unique(labels):
        members = fails[labels == g]
        if len(members) < min_size:
            continue
        centroid = unit[members].mean(0)
        near = _nearest(unit, centroid / max(np.linalg.norm(centroid), 1e-12), k)
        rand = []
        for _ in range(RANDOM_SETS):
            pick = rng.choice(n, size=len(members), replace=False)
            c = unit[pick].mean(0)
            rand.append(_accuracy(correct, _nearest(unit, c / max(np.linalg.norm(c), 1e-12), k)))
        rand = np.asarray(rand)
        rand = rand[np.isfinite(rand)]
        out.append(Slice(
            members=members, neighbours=near, neighbour_accuracy=_accuracy(correct, near),
            random_accuracy=float(rand.mean()) if rand.size else float("nan"),
            random_accuracy_low=float(np.percentile(rand, 5)) if rand.size else float("nan"),
            shares=_describe(members, colours, mapstats, families, family_names),
            wrong=int(wrong[members].sum()), unsure=int(unsure[members].sum())))
    out.sort(key=lambda s: (-s.size, s.neighbour_accuracy))
    return out
