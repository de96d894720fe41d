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

import os

import numpy as np

from ...bare import takes_model
from .tcav_core import (CLASSIFIER, CLASSIFIER_KEYS, MAX_DEFAULT_CLASSES, MIN_IMAGES, MIN_RUNS,  # noqa: F401
                        TcavResult, check_concepts, check_settings, fit_cav, fit_seeds, random_sets, sign_scores,
                        significance)

__api__ = ("tcav",)  # cnnviz.<name> (a literal: see cnnviz/__init__)


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


@takes_model
def tcav(lm, data, concepts, classes=None, layers=None, *, random_runs: int = MIN_RUNS, random_from=None,
         random_size: int | None = None, concept_size: int | None = None, classifier: dict | None = None,
         alpha: float = 0.05, seed: int = 0,
         batch_size: int = 16, device: str = "auto", checkpoint: str | os.PathLike | None = None,
         resume: bool = True, progress: bool | None = None, on_step=None, finish=None) -> TcavResult:
    """TCAV (Kim et al. 2018) of `concepts` ({name: folder of examples}) for `classes` of `lm` at
    `layers`; see the module docstring for the definition.

    data: the class images: a folder, class folders, a CSV (see `cnnviz.engines.audit.data`) or a
      list of paths. With labels, a class's images are those labelled with it (classes=None: every
      labelled class, at most 8); without, every image counts for each of `classes` (then required).
    layers: addresses (`cnnviz layers`); default the last block before the last convolution
      (`tcav_scan.default_layer`: Lite0 _blocks.15, ResNet layer3).
    random_runs: N >= 10 CAVs per concept against random sets R_1..R_N, and N random-vs-random ones
      (Q_n against R_n).
    random_from: the pool random sets are drawn from (a folder, CSV or list; default DATA).
    random_size: images per random set (default: the largest concept's count, at most half the pool).
    concept_size: None (Kim et al.'s and captum's way): every run's CAV uses all of a concept's
      examples. A number: each run draws its own subset of that many (seeded by seed, concept and
      run), so that the concept's runs vary as the random runs do; a fixed folder then no longer
      looks significant merely by being fixed (the false alarms of the t-test on a fixed set).
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
    if concept_size is not None:
        if isinstance(concept_size, bool) or not isinstance(concept_size, (int, np.integer)) or concept_size < MIN_IMAGES:
            from ...errors import ParameterError

            raise ParameterError(f"concept_size must be a whole number >= {MIN_IMAGES}, got {concept_size!r}")
        job.concept_size = int(concept_size)
    return run(lm, job, device=device, checkpoint=checkpoint, resume=resume, progress=progress, on_step=on_step,
               finish=finish)
