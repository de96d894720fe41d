"""What `tcav` is made of (see `tcav` for the definition): the result type, the checks of its
inputs, the random sets and seeds, one CAV (`fit_cav`), the sign-count score and the significance
test. Imported by `tcav` (the API) and `tcav_scan` (the passes over the images)."""

from __future__ import annotations

import dataclasses
import os
import random as _random
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from ... import schema as S
from ...errors import ImageError, ParameterError
from ...results import Result

MIN_IMAGES = 5          # a concept folder (and a random set) needs at least this many images
MIN_RUNS = 10           # Kim et al.: significance needs many random runs; fewer are refused
MAX_DEFAULT_CLASSES = 8  # labelled DATA with more classes than this needs --classes
CLASSIFIER = {"name": "SGDClassifier", "loss": "hinge", "alpha": 0.01, "max_iter": 1000, "tol": 1e-3,
              "test_split": 0.33}
CLASSIFIER_KEYS = ("alpha", "max_iter", "tol", "test_split")


@dataclasses.dataclass
class TcavResult(Result):
    """TCAV scores of concepts (C) for classes (K) at layers (L), over N random runs.

    concepts: str C. classes: int64 K (class indices). layers: str L (addresses).
    scores: float32 (C + 1) x K x L x N: the share of each class's images whose directional
      derivative along run n's CAV is positive; the last row is the random-vs-random runs.
    cav_accuracy: float32 (C + 1) x L x N, each CAV's accuracy on its held-out examples.
    score_mean, score_std: float32 C x K x L (std with ddof 1); random_mean, random_std: K x L.
    p_value: float32 C x K x L (two-sided t-test against the random runs; NaN: both constant and
      equal, counted as 1), p_corrected: min(1, p x tests), significant: bool (p_corrected < alpha).
    class_counts: int64 K (images of each class used); concept_counts: int64 C.
    random_files: str P (the random pool's files used, relative to params["random_root"]);
      random_sets: int64 2N x R, indices into random_files (-1: unreadable, left out): rows 0..N-1
      are R_1..R_N (the negatives of run n), rows N..2N-1 Q_1..Q_N (the random runs' "concepts").
    fit_seeds: int64 (C + 1) x N, the seed of each CAV's split and SGD (the same at every layer).
    """

    kind: ClassVar[str] = "tcav"
    renderer: ClassVar = "cnnviz.render.concepts.tcav:figure"
    param_schema: ClassVar[dict] = {"concepts": S.TEXTS, "class_names": S.TEXTS, "layers": S.TEXTS,
                                    "alpha": S.NUMBER, "tests": S.INT, "random_runs": S.INT}
    array_schema: ClassVar[dict] = {
        "scores": S.Arr("f", ("C1", "K", "L", "N")), "score_mean": S.Arr("f", ("C", "K", "L")),
        "score_std": S.Arr("f", ("C", "K", "L")), "random_mean": S.Arr("f", ("K", "L")),
        "random_std": S.Arr("f", ("K", "L")), "p_value": S.Arr("f", ("C", "K", "L")),
        "p_corrected": S.Arr("f", ("C", "K", "L")), "significant": S.Arr("b", ("C", "K", "L")),
        "class_counts": S.Arr("iu", ("K",))}
    concepts: np.ndarray = None
    classes: np.ndarray = None
    layers: np.ndarray = None
    scores: np.ndarray = None
    cav_accuracy: np.ndarray = None
    score_mean: np.ndarray = None
    score_std: np.ndarray = None
    random_mean: np.ndarray = None
    random_std: np.ndarray = None
    p_value: np.ndarray = None
    p_corrected: np.ndarray = None
    significant: np.ndarray = None
    class_counts: np.ndarray = None
    concept_counts: np.ndarray = None
    random_files: np.ndarray = None
    random_sets: np.ndarray = None
    fit_seeds: np.ndarray = None

    def table(self) -> list[dict]:
        """One row per concept, class and layer: score mean and std, the random runs' mean, p,
        corrected p, significant, and whether the concept scores above or below random."""
        p = self.params
        rows = []
        for c, name in enumerate(p["concepts"]):
            for k, cls in enumerate(p["class_names"]):
                for li, layer in enumerate(p["layers"]):
                    rows.append({"concept": name, "class": cls, "layer": layer,
                                 "score": float(self.score_mean[c, k, li]), "std": float(self.score_std[c, k, li]),
                                 "random": float(self.random_mean[k, li]), "p": float(self.p_value[c, k, li]),
                                 "p_corrected": float(self.p_corrected[c, k, li]),
                                 "significant": bool(self.significant[c, k, li]),
                                 "direction": "above" if self.score_mean[c, k, li] > self.random_mean[k, li]
                                 else "below"})
        return rows


# --------------------------------------------------------------------------------------------------
# checks (all before the model loads)

def check_concepts(concepts, min_images: int = MIN_IMAGES) -> dict[str, tuple[Path, list[str]]]:
    """{name: (root, files)} for {name: folder (or list of image paths)}; a one-line ImageError
    for a missing folder or one with fewer than `min_images` images, ParameterError for no
    concepts or a bad name."""
    from ..experiments.datasets import list_files

    if isinstance(concepts, (str, os.PathLike)) or not hasattr(concepts, "items") or not concepts:
        raise ParameterError("no concepts given: name each with its folder of examples, {'striped': 'stripes/'} "
                             "(on the command line --concept striped=stripes/)")
    out = {}
    for name, folder in concepts.items():
        if not isinstance(name, str) or not name.strip() or "=" in name or "," in name:
            raise ParameterError(f"concept name {name!r} must be non-empty text without '=' or ','")
        if name.strip().lower() == "random":
            raise ParameterError("'random' is the name of the random-vs-random runs; call the concept otherwise")
        if not isinstance(folder, (list, tuple)) and not Path(folder).is_dir():
            raise ImageError(f"concept {name!r}: folder {str(folder)!r} not found; give a folder of example images")
        try:
            root, files, _ = list_files(folder)
        except ImageError:
            files, root = [], Path(folder) if not isinstance(folder, (list, tuple)) else Path(".")
        if len(files) < min_images:
            raise ImageError(f"concept {name!r}: {str(folder)!r} holds {len(files)} image(s), a concept needs at least "
                             f"{min_images}; add examples (Kim et al. used about 50)")
        out[name.strip()] = (Path(root), files)
    return out


def check_settings(random_runs: int, alpha: float, classifier: dict | None, seed: int,
                   random_size: int | None) -> dict:
    """The classifier settings (CLASSIFIER updated by `classifier`), the others checked."""
    if isinstance(random_runs, bool) or not isinstance(random_runs, (int, np.integer)) or random_runs < MIN_RUNS:
        raise ParameterError(f"random_runs must be a whole number >= {MIN_RUNS} (Kim et al.: significance needs many "
                             f"random runs), got {random_runs!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ParameterError(f"alpha (the significance level) must lie between 0 and 1, got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a whole number >= 0, got {seed!r}")
    if random_size is not None and (isinstance(random_size, bool) or not isinstance(random_size, (int, np.integer))
                                    or random_size < MIN_IMAGES):
        raise ParameterError(f"random_size must be a whole number >= {MIN_IMAGES}, got {random_size!r}")
    settings = dict(CLASSIFIER)
    for key, value in (classifier or {}).items():
        if key not in CLASSIFIER_KEYS:
            raise ParameterError(f"unknown classifier setting {key!r}; one of {', '.join(CLASSIFIER_KEYS)}")
        settings[key] = value
    if not (isinstance(settings["alpha"], (int, float)) and settings["alpha"] > 0):
        raise ParameterError(f"the classifier's alpha (L2 strength) must be positive, got {settings['alpha']!r}")
    if not (isinstance(settings["max_iter"], (int, np.integer)) and settings["max_iter"] >= 1):
        raise ParameterError(f"the classifier's max_iter must be a whole number >= 1, got {settings['max_iter']!r}")
    if not (isinstance(settings["tol"], (int, float)) and settings["tol"] >= 0):
        raise ParameterError(f"the classifier's tol must be >= 0, got {settings['tol']!r}")
    if not (isinstance(settings["test_split"], (int, float)) and 0 <= settings["test_split"] < 0.5):
        raise ParameterError(f"test_split must lie in [0, 0.5), got {settings['test_split']!r}")
    return settings


def random_sets(pool_size: int, runs: int, size: int, seed: int) -> np.ndarray:
    """2 runs x size indices into the pool: R_1..R_runs (each run's negatives), then Q_1..Q_runs
    (the random runs' "concepts"), each drawn without replacement."""
    rng = np.random.default_rng([seed, 7])
    return np.stack([np.sort(rng.choice(pool_size, size, replace=False)) for _ in range(2 * runs)]).astype(np.int64)


def fit_seeds(num_concepts: int, runs: int, seed: int) -> np.ndarray:
    """(C + 1) x N seeds, one per CAV (row C: the random-vs-random CAVs)."""
    return np.random.default_rng([seed, 11]).integers(0, 2**31 - 1, (num_concepts + 1, runs)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# the CAV and the scores

def fit_cav(positive: np.ndarray, negative: np.ndarray, seed: int, settings: dict = CLASSIFIER):
    """(CAV, held-out accuracy) of a linear classifier separating `positive` rows (the concept)
    from `negative` rows (random images), as captum's DefaultClassifier trains it: the rows in that
    order, shuffled (Python's `random` seeded with `seed`), the first int(test_split x n) held out,
    SGDClassifier(random_state=seed) fitted on the rest; the CAV points towards the concept."""
    from sklearn.linear_model import SGDClassifier

    x = np.concatenate([positive, negative]).astype(np.float32, copy=False)
    y = np.concatenate([np.ones(len(positive), np.int64), np.zeros(len(negative), np.int64)])
    order = list(range(len(x)))
    _random.Random(int(seed)).shuffle(order)
    n_test = int(settings["test_split"] * len(order))
    test, train = np.asarray(order[:n_test], np.int64), np.asarray(order[n_test:], np.int64)
    if len(set(y[train].tolist())) < 2:
        raise ParameterError("a CAV's training split holds examples of one side only; use more concept or random "
                             "images (or a smaller test_split)")
    clf = SGDClassifier(loss=settings["loss"], alpha=settings["alpha"], max_iter=int(settings["max_iter"]),
                        tol=settings["tol"], random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached is a setting, recorded
        clf.fit(x[train], y[train])
    cav = clf.coef_[0].astype(np.float32)
    acc = float((clf.predict(x[test]) == y[test]).mean()) if len(test) else float("nan")
    return cav, acc


def sign_scores(gradients: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """The share of rows of `gradients` (M x D) whose dot product with each CAV (... x D) is
    positive: captum's sign_count."""
    d = gradients.astype(np.float32) @ cavs.reshape(-1, cavs.shape[-1]).T
    return (d > 0).mean(0).reshape(cavs.shape[:-1]).astype(np.float32)


def significance(scores: np.ndarray, alpha: float) -> dict:
    """Per concept, class and layer, from scores (C + 1) x K x L x N (last row random): mean, std,
    the random runs' mean and std, p of the two-sided t-test, Bonferroni-corrected p, significant."""
    from scipy.stats import ttest_ind

    concept, rand = scores[:-1].astype(np.float64), scores[-1].astype(np.float64)
    C, K, L, N = concept.shape
    tests = C * K * L
    p = np.ones((C, K, L))
    for c in range(C):
        for k in range(K):
            for li in range(L):
                a, b = concept[c, k, li], rand[k, li]
                if np.ptp(a) == 0 and np.ptp(b) == 0:  # both constant: t is 0/0 (equal) or infinite
                    p[c, k, li] = 1.0 if a[0] == b[0] else 0.0
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p[c, k, li] = ttest_ind(a, b).pvalue
    corrected = np.minimum(1.0, p * tests)
    ddof = 1 if N > 1 else 0
    return {"score_mean": concept.mean(-1).astype(np.float32), "score_std": concept.std(-1, ddof=ddof).astype(np.float32),
            "random_mean": rand.mean(-1).astype(np.float32), "random_std": rand.std(-1, ddof=ddof).astype(np.float32),
            "p_value": p.astype(np.float32), "p_corrected": corrected.astype(np.float32),
            "significant": corrected < alpha, "tests": tests}
