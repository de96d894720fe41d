"""Spectral Relevance Analysis on maps already computed: `spray(maps)` (Lapuschkin et al., "Unmasking
Clever Hans predictors and assessing what machines really learn", Nat. Commun. 10, 1096, 2019).

SpRAy asks, for one class, which *strategies* a model uses: it clusters the class's explanation
maps, so that a group of images the model decides on in the same, possibly wrong, way (the
copyright watermark behind a PASCAL VOC "horse") stands out as a cluster of its own. The steps,
as the paper lists them and CoRelAy (the authors' implementation, `corelay`) runs them:

1. preprocessing: each map's positive part (the evidence for the class), downsized to a uniform
   `size` x `size` by area averaging (the mean over each cell of the grid; this is SpRAy's "make the
   maps uniform in shape and size", which also cuts the cost), then scaled to sum 1 (CoRelAy's
   `Normalize` over the pixel axes; a map with no positive mass stays zero) and flattened;
2. affinity: the Euclidean distances between the flattened maps, and from them the k-nearest-
   neighbour graph of CoRelAy's `SparseKNN` (`k_neighbours`, default 10, at most N - 1): A[i, j] = 1
   where j is one of the k maps nearest to i (i itself left out), then A = (A + A^T) / 2;
3. spectral embedding: the eigenvalues 0 = l1 <= l2 <= ... of the normalized graph Laplacian
   L = I - D^-1/2 A D^-1/2 (D the degrees; CoRelAy's `SymmetricNormalLaplacian` +
   `EigenDecomposition`, which returns 1 - the eigenvalues of D^-1/2 A D^-1/2) and the eigenvectors
   of the smallest ones, each row scaled to unit length (Ng, Jordan & Weiss 2002);
4. the number of clusters k by the eigengap (von Luxburg 2007, Sec. 8.3; the paper's "eigengap
   analysis"): the k in 1..`max_clusters` with the largest gap l(k+1) - l(k); k = 1 means the maps
   form one connected group: one strategy. A large homogeneous class is a continuum in the kNN
   graph (its eigenvalues rise with no clear gap) and may be split into several clusters that are
   the same strategy; that is why a cluster is flagged by where its maps look (below), never by
   the number of clusters;
5. k-means (scikit-learn, `n_init` 10, seeded) on the rows of the first k eigenvectors; clusters
   are numbered by size, the largest first;
6. a 2-D embedding of the preprocessed maps by t-SNE (scikit-learn; perplexity min(30, (N - 1) / 3),
   PCA initialisation, seeded) for the figure: nearby points are similar maps.

Per cluster it measures where the members put their mass, on the preprocessed maps:
- `concentration`: the median over the members of the share of a map's mass in its top 5 % of
  pixels (0.05 for a uniform map, 1 for a point);
- `area`: the share of the pixels that hold half of the cluster's mean map's mass (the smallest
  such set): small where the members look at one small place;
- `overlap`: the mean over pairs of members of the histogram intersection sum(min(m_i, m_j)) of
  their maps (1: the same place, 0: disjoint);
- `peak_spread`: the root mean square distance of the members' peaks from their mean position, as
  a share of the map's side;
- `outside`: with `boxes` (object boxes per image, in the maps' pixels), the median share of a
  member's mass outside its box.
A cluster is flagged as a possible shortcut (`flag`, with the `reason` in words) when it holds at
least `min_share` of the class's images (and at least 3) and either (a) its mean map puts half its
mass on at most `small_area` of the pixels, its members overlap by at least `min_overlap` and their
peaks lie within `max_spread` of the side: a small region in the same place across many images; or
(b) with boxes, most of its members' mass (median > `max_outside`) lies outside the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError

__api__ = ("spray",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

MIN_IMAGES = 6  # fewer maps than this give no neighbourhood graph worth the name
TOP_SHARE = 0.05  # concentration: the mass in the top 5 % of pixels


@dataclass
class Cluster:
    """One cluster of a class's maps (see `spray`)."""

    members: np.ndarray         # indices into the maps, ascending
    mean_map: np.ndarray        # H x W at the maps' own resolution, sums to 1 (each member scaled to sum 1)
    concentration: float
    area: float
    overlap: float
    peak_spread: float
    peak: tuple                 # (y, x) of the mean map's maximum, as shares of the height and width
    outside: float | None = None
    flag: bool = False
    reason: str = ""

    @property
    def size(self) -> int:
        return int(len(self.members))


@dataclass
class Spray:
    """What `spray` returns: the clustering of N maps, and how each cluster looks."""

    labels: np.ndarray          # N: cluster of each map (0 = the largest cluster)
    n_clusters: int
    eigenvalues: np.ndarray     # the smallest eigenvalues of the normalized Laplacian, ascending
    gaps: np.ndarray            # gaps[k - 1] = l(k+1) - l(k) for k = 1..max_clusters
    chosen_by: str              # "eigengap" or "given"
    embedding: np.ndarray       # N x 2, t-SNE of the preprocessed maps
    spectral: np.ndarray        # N x k, the row-normalized eigenvectors k-means ran on
    small: np.ndarray           # N x size x size, the preprocessed maps (each sums to 1 or is zero)
    clusters: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def flagged(self) -> list:
        return [c for c in self.clusters if c.flag]


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ParameterError(f"{name} must be a whole number >= {lo}, got {v!r}")
    return int(v)


def downsize(maps: np.ndarray, size: int) -> np.ndarray:
    """N x H x W -> N x size x size by area averaging: cell (i, j) is the mean over rows
    floor(i H / size) .. ceil((i + 1) H / size) - 1 and the same for the columns (torch's adaptive
    average pooling; an exact block mean where size divides H and W)."""
    m = np.asarray(maps, dtype=np.float64)
    n, h, w = m.shape

    def bins(length):
        lo = (np.arange(size) * length) // size
        hi = -((-(np.arange(size) + 1) * length) // size)
        return lo, hi

    (ylo, yhi), (xlo, xhi) = bins(h), bins(w)
    c = np.zeros((n, h + 1, w + 1))
    c[:, 1:, 1:] = m.cumsum(1).cumsum(2)
    s = (c[:, yhi][:, :, xhi] - c[:, ylo][:, :, xhi] - c[:, yhi][:, :, xlo] + c[:, ylo][:, :, xlo])
    return s / ((yhi - ylo)[:, None] * (xhi - xlo)[None, :])


def preprocess(maps: np.ndarray, size: int) -> np.ndarray:
    """SpRAy's step 1: positive part, downsized to size x size (area averaging), scaled to sum 1."""
    m = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    small = downsize(m, size)
    s = small.sum(axis=(1, 2), keepdims=True)
    return small / np.where(s > 0, s, 1)


def knn_affinity(x: np.ndarray, k: int) -> np.ndarray:
    """CoRelAy's SparseKNN on Euclidean distances, dense: A[i, j] = 1 for the k nearest j != i,
    symmetrized as (A + A^T) / 2."""
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    np.fill_diagonal(d2, np.inf)
    nearest = np.argsort(d2, axis=1, kind="stable")[:, :k]
    a = np.zeros_like(d2)
    np.put_along_axis(a, nearest, 1.0, axis=1)
    return (a + a.T) / 2


def spectrum(a: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest eigenvalues of L = I - D^-1/2 A D^-1/2, ascending, and their
    eigenvectors (columns)."""
    d = a.sum(1)
    inv = 1 / np.sqrt(np.where(d > 0, d, 1))
    s = inv[:, None] * a * inv[None, :]
    values, vectors = np.linalg.eigh(s)  # ascending eigenvalues of D^-1/2 A D^-1/2
    values, vectors = values[::-1][:count], vectors[:, ::-1][:, :count]
    return np.clip(1 - values, 0, None), vectors


def eigengap(values: np.ndarray, max_clusters: int) -> tuple[int, np.ndarray]:
    """k in 1..max_clusters with the largest gap values[k] - values[k - 1] (first of equal gaps)."""
    gaps = np.diff(values[: max_clusters + 1])
    return int(np.argmax(gaps)) + 1, gaps


def _rows_normalized(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1)


def _where(y: float, x: float) -> str:
    """A place in words: the ninths of the map."""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    if row == "middle":
        return "centre" if col == "centre" else f"middle {col}"
    return f"{row} {col}" if col != "centre" else f"{row} centre"


def _stats(small: np.ndarray, members: np.ndarray, maps_norm_mean: np.ndarray, boxes) -> dict:
    m = small[members]
    flat = m.reshape(len(m), -1)
    top = max(1, int(round(TOP_SHARE * flat.shape[1])))
    conc = float(np.median(np.sort(flat, axis=1)[:, ::-1][:, :top].sum(1)))
    mean = flat.mean(0)
    total = mean.sum()
    if total > 0:
        order = np.sort(mean)[::-1].cumsum()
        area = float((np.searchsorted(order, 0.5 * total) + 1) / flat.shape[1])
    else:
        area = float("nan")
    if len(m) > 1:
        inter = [np.minimum(flat[i], flat[j]).sum() for i in range(len(m)) for j in range(i + 1, len(m))]
        overlap = float(np.mean(inter))
    else:
        overlap = float("nan")
    peaks = np.array([np.unravel_index(int(np.argmax(f)), m.shape[1:]) for f in m], dtype=np.float64)
    peaks = (peaks + 0.5) / np.array(m.shape[1:])
    spread = float(np.sqrt(((peaks - peaks.mean(0)) ** 2).sum(1).mean())) if len(m) > 1 else float("nan")
    py, px = np.unravel_index(int(np.argmax(maps_norm_mean)), maps_norm_mean.shape)
    out = {"concentration": conc, "area": area, "overlap": overlap, "peak_spread": spread,
           "peak": ((py + 0.5) / maps_norm_mean.shape[0], (px + 0.5) / maps_norm_mean.shape[1]), "outside": None}
    if boxes is not None:
        shares = []
        for i in members:
            b = boxes[i]
            if b is None or not np.all(np.isfinite(b)):
                continue
            full = small[i]
            if full.sum() <= 0:
                continue
            hh, ww = full.shape
            x0, y0, x1, y1 = b
            ys = (np.arange(hh) + 0.5) / hh
            xs = (np.arange(ww) + 0.5) / ww
            inside = (ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None, :] >= x0) & (xs[None, :] < x1)
            shares.append(float(full[~inside].sum() / full.sum()))
        out["outside"] = float(np.median(shares)) if shares else None
    return out


def spray(maps, *, size: int = 32, n_clusters: int | None = None, max_clusters: int = 8, k_neighbours: int = 10,
          n_eigval: int | None = None, seed: int = 0, boxes=None, min_share: float = 0.05, small_area: float = 0.1,
          min_overlap: float = 0.4, max_spread: float = 0.1, max_outside: float = 0.5, tsne: bool = True) -> Spray:
    """Spectral Relevance Analysis of one class's maps (N x H x W, any resolution, signed or not;
    see the module's docstring for every step and rule). Returns a `Spray`: each map's cluster, the
    Laplacian's eigenvalues and the eigengap that chose the number of clusters, the t-SNE embedding,
    and per cluster its members, mean map (at the maps' resolution), concentration, area, overlap,
    peak spread and whether it is flagged as a possible shortcut, with the reason in words.

    n_clusters: given, the eigengap is not used. max_clusters: the largest k the eigengap may pick.
    k_neighbours: neighbours of the kNN affinity (CoRelAy's default, 10). n_eigval: eigenvectors
      k-means runs on (default: the number of clusters, as Ng, Jordan & Weiss).
    boxes: optional N x 4 (x0, y0, x1, y1) object boxes as shares of the width and height (NaN rows:
      unknown), for the "outside the object" rule.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ParameterError(f"maps must be N x H x W, got shape {maps.shape}")
    n = len(maps)
    if n < MIN_IMAGES:
        raise ParameterError(f"{n} maps are too few to cluster; SpRAy needs at least {MIN_IMAGES}")
    size = _check_int("size", size, 2)
    max_clusters = _check_int("max_clusters", max_clusters, 1)
    k_neighbours = _check_int("k_neighbours", k_neighbours, 1)
    if n_clusters is not None:
        n_clusters = _check_int("n_clusters", n_clusters, 1)
        if n_clusters > n:
            raise ParameterError(f"n_clusters {n_clusters} is more than the {n} maps")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (n, 4):
            raise ParameterError(f"boxes must be {n} x 4 (x0, y0, x1, y1 as shares of the map), got {boxes.shape}")
    k_nn = min(k_neighbours, n - 1)
    small = preprocess(maps, size)
    flat = small.reshape(n, -1)
    top_k = min(n, max(max_clusters, n_clusters or 1, n_eigval or 1) + 1)
    values, vectors = spectrum(knn_affinity(flat, k_nn), top_k)
    k_gap, gaps = eigengap(values, min(max_clusters, top_k - 1))
    k = n_clusters if n_clusters is not None else k_gap
    e = n_eigval or k
    spectral = _rows_normalized(vectors[:, :e])
    if k == 1:
        labels = np.zeros(n, np.int64)
    else:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(spectral).astype(np.int64)
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], np.flatnonzero(labels == c)[0] if sizes[c] else n))
    remap = np.empty(k, np.int64)
    remap[order] = np.arange(k)
    labels = remap[labels]
    embedding = _tsne(flat, seed) if tsne else np.zeros((n, 2), np.float32)
    pos = np.clip(np.nan_to_num(maps.astype(np.float64)), 0, None)
    tot = pos.sum(axis=(1, 2), keepdims=True)
    pos = pos / np.where(tot > 0, tot, 1)
    clusters = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        mean_map = pos[members].mean(0)
        st = _stats(small, members, small[members].mean(0), boxes)
        cl = Cluster(members=members, mean_map=mean_map.astype(np.float32), **st)
        _judge(cl, n, min_share, small_area, min_overlap, max_spread, max_outside)
        clusters.append(cl)
    params = {"size": size, "k_neighbours": k_nn, "max_clusters": max_clusters, "n_eigval": e, "seed": seed,
              "affinity": f"symmetric {k_nn}-nearest-neighbour graph of Euclidean distances (CoRelAy SparseKNN)",
              "laplacian": "normalized, I - D^-1/2 A D^-1/2", "preprocessing":
              f"positive part, area-averaged to {size}x{size}, scaled to sum 1",
              "flag_rule": {"min_share": min_share, "small_area": small_area, "min_overlap": min_overlap,
                            "max_spread": max_spread, "max_outside": max_outside}}
    return Spray(labels=labels, n_clusters=len(clusters), eigenvalues=values.astype(np.float64),
                 gaps=gaps.astype(np.float64), chosen_by="given" if n_clusters is not None else "eigengap",
                 embedding=embedding, spectral=spectral, small=small.astype(np.float32), clusters=clusters,
                 params=params)


def _tsne(flat: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(flat)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        flat.astype(np.float64)).astype(np.float32)


def _judge(cl: Cluster, n: int, min_share: float, small_area: float, min_overlap: float, max_spread: float,
           max_outside: float) -> None:
    """Set `cl.flag` and `cl.reason` (see the module's docstring for the rule)."""
    share = cl.size / n
    many = cl.size >= 3 and share >= min_share
    y, x = cl.peak
    where = f"{_where(y, x)} (x {100 * x:.0f} %, y {100 * y:.0f} % of the crop)"
    who = f"{cl.size} of {n} images ({100 * share:.0f} %)"
    if (many and np.isfinite(cl.area) and cl.area <= small_area and np.isfinite(cl.overlap)
            and cl.overlap >= min_overlap and np.isfinite(cl.peak_spread) and cl.peak_spread <= max_spread):
        cl.flag = True
        cl.reason = (f"{who} put half their mean mass on {100 * cl.area:.1f} % of the crop, at the {where}; their "
                     f"peaks spread by {100 * cl.peak_spread:.0f} % of the side (rms) and their maps overlap "
                     f"{100 * cl.overlap:.0f} %: a small region in the same place across many images")
    elif many and cl.outside is not None and cl.outside > max_outside:
        cl.flag = True
        cl.reason = (f"{who} put {100 * cl.outside:.0f} % of their mass (median) outside the object's box: the "
                     "model looks beside the object")
    else:
        spread = "" if not np.isfinite(cl.peak_spread) else f", peaks spread {100 * cl.peak_spread:.0f} % of the side"
        cl.reason = (f"half the mean mass on {100 * cl.area:.0f} % of the crop around the {_where(y, x)}{spread}"
                     if np.isfinite(cl.area) else "no positive mass")
