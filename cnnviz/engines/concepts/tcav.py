"""Testing with Concept Activation Vectors (TCAV; Kim et al., "Interpretability Beyond Feature
Attribution", ICML 2018): does a concept that the user names with a folder of examples (stripes,
a watermark, a red square) move a class's score?

As Kim et al. define it, for each concept C and layer l:
1. the concept activation vector (CAV) v is the normal of a linear classifier separating the
   layer's activations (flattened C x H x W) of C's examples from those of a random set of images,
   pointing towards the concept. The classifier is captum.concept's default, which is the original
   TCAV code's: scikit-learn's SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3) (hinge loss, a
   linear SVM), fitted on a shuffled two thirds of the examples (`test_split` 0.33 held out to
   report the CAV's accuracy);
2. the directional derivative of class k's logit at image x is S(x) = grad_l h_k(f_l(x)) . v, and
   the TCAV score of k is the share of k's images with S(x) > 0 (captum's `sign_count`);
3. significance: the CAV is learnt `random_runs` times (>= 10) against different random sets
   R_1..R_N, and as many random-vs-random CAVs (Q_n against R_n, Q_n another random set) give the
   scores a random "concept" gets; a two-sided t-test (Student's, `scipy.stats.ttest_ind`, as the TCAV code and
   captum's tutorial run it) of the concept's N scores against the random ones, Bonferroni-corrected
   for the number of tests (concepts x classes x layers): significant when p x tests < alpha.

Random images come from DATA (or a folder, `random_from`): 2N sets of `random_size` images, each
drawn without replacement (sets may overlap when the pool is small). The random "concept" is a new
set in every run rather than one fixed R_0 against R_n (captum's tutorial): a fixed R_0 biases all
N random CAVs the same way (towards whatever R_0 happens to hold more of), which narrows the random
scores and makes concepts look significant that are not.

The passes over the images (activations of the concept and random images, gradients of the class
logits on the class images) are in `tcav_scan`; `tcav_scores` does steps 1-3 from arrays, for a
caller (the audit) that already holds the activations and gradients.
"""

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

__api__ = ("tcav",)  # cnnviz.<name> (a literal: see cnnviz/__init__)

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


def tcav_scores(concept_acts: dict, random_acts: dict, class_grads: dict, sets: np.ndarray, *, seed: int = 0,
                settings: dict = CLASSIFIER, alpha: float = 0.05, seeds: np.ndarray | None = None) -> dict:
    """Steps 1-3 from arrays, for a caller that has the activations and gradients already.

    concept_acts: {concept: {layer: n_c x D}}; random_acts: {layer: P x D} (the random pool);
    class_grads: {class: {layer: M_k x D}} (gradients of the class's logit at its images);
    sets: 2N x R indices into the pool (`random_sets`; -1 entries are left out).
    Returns the arrays of a TcavResult (scores, cav_accuracy, the significance, fit_seeds)."""
    names, classes = list(concept_acts), list(class_grads)
    layers = list(random_acts)
    runs = len(sets) // 2
    seeds = fit_seeds(len(names), runs, seed) if seeds is None else seeds
    scores = np.zeros((len(names) + 1, len(classes), len(layers), runs), np.float32)
    accuracy = np.zeros((len(names) + 1, len(layers), runs), np.float32)
    for li, layer in enumerate(layers):
        for n in range(runs):
            negative = random_acts[layer][sets[n][sets[n] >= 0]]
            for c in range(len(names) + 1):
                positive = (concept_acts[names[c]][layer] if c < len(names)
                            else random_acts[layer][sets[runs + n][sets[runs + n] >= 0]])
                cav, accuracy[c, li, n] = fit_cav(positive, negative, seeds[c, n], settings)
                for k, cls in enumerate(classes):
                    scores[c, k, li, n] = sign_scores(class_grads[cls][layer], cav)
    return {"scores": scores, "cav_accuracy": accuracy, "fit_seeds": seeds, **significance(scores, alpha)}


def tcav(lm, data, concepts, classes=None, layers=None, *, random_runs: int = MIN_RUNS, random_from=None,
         random_size: int | None = None, classifier: dict | None = None, alpha: float = 0.05, seed: int = 0,
         batch_size: int = 16, device: str = "auto", checkpoint: str | os.PathLike | None = None,
         resume: bool = True, progress: bool | None = None, on_step=None, finish=None) -> TcavResult:
    """TCAV (Kim et al. 2018) of `concepts` ({name: folder of examples}) for `classes` of `lm` at
    `layers`; see the module docstring for the definition.

    data: the class images: a folder, class folders, a CSV (see `cnnviz.engines.audit.data`) or a
      list of paths. With labels, a class's images are those labelled with it (classes=None: every
      labelled class, at most 8); without, every image counts for each of `classes` (then required).
    layers: addresses (`cnnviz layers`); default the last convolutional block (Grad-CAM's layer).
    random_runs: N >= 10 CAVs per concept against random sets R_1..R_N, and N random-vs-random ones
      (Q_n against R_n).
    random_from: the pool random sets are drawn from (a folder, CSV or list; default DATA).
    random_size: images per random set (default: the largest concept's count, at most half the pool).
    classifier: overrides of CLASSIFIER's alpha, max_iter, tol, test_split.
    alpha: significance level, Bonferroni-corrected for concepts x classes x layers tests.
    checkpoint: progress file (written atomically after every run of CAVs and every chunk of class
      images; resumed from when `resume`; removed once `finish(result)` has returned). Under
      torchrun each rank fits every W-th run and takes every W-th chunk, with its own PATH.rankR.
    on_step(done, total): called after each step of this process (tests stop a run with it).
    """
    from .tcav_scan import plan, run

    settings = check_settings(random_runs, alpha, classifier, seed, random_size)
    job = plan(lm, data, concepts, classes, layers, random_runs=random_runs, random_from=random_from,
               random_size=random_size, seed=seed, settings=settings, alpha=alpha, batch_size=batch_size)
    return run(lm, job, device=device, checkpoint=checkpoint, resume=resume, progress=progress, on_step=on_step,
               finish=finish)
