"""TCAV speed: cnnviz.tcav against captum.concept.TCAV on the same work, one process.

In interleaved rounds (round r runs each contender once, in a rotated order, so that a slow spell
of a shared machine hits all alike), on EfficientNet-Lite0 (real weights), layer _blocks.15
(320 x 7 x 7), one concept of 10 sample photos, random sets of 10 from a pool of 30 other photos,
N random runs (concept vs R_n and Q_n vs R_n: 2N CAVs) and 8 class images scored for one class:

  cnnviz   cnnviz.tcav(lm, DATA, {"concept": FOLDER}, classes=[c], layers=[L], random_from=POOL,
           random_runs=N, random_size=10): the whole call from the image files, significance included;
  captum   captum.concept.TCAV(model, [L]) with the same 2N experimental sets (each a Concept whose
           data iterator yields the set's prepared tensors, prepared in the timed part), `interpret`
           on the class images for the class (its DefaultClassifier, the same SGD settings), into a
           fresh save_path each round (captum caches activations and CAVs on disk), then the same
           two-sided t-test (scipy) of the concept's N scores against the random ones.

Both compute each image's activations once (captum: once per Concept, so a pool image in several
sets is run once per set; cnnviz keeps them per image) and fit 2N SGD classifiers.

    python benchmarks/tcav.py [--runs 10] [--rounds 2]

Measured (2026-12-08, AMD EPYC, 2 cores, under /work/bin/heavy --quiet, no other heavy job; 10 runs,
2 rounds, medians):

| contender | median s | vs captum |
|---|---|---|
| cnnviz | 3.75 | 0.319 |
| captum | 11.76 | 1.000 |

cnnviz / captum = 0.32 (rounds: 3.7 / 12.0 s, 3.8 / 11.6 s). captum runs every random set's images
through the model once per set (a pool image drawn into several sets runs several times) and writes
and reads every activation and CAV through its disk cache; cnnviz reads each image once and keeps
it. Unseeded, captum's scores differ from cnnviz's by up to 0.75 in a single run: with 10 + 10
examples the CAV, and with it each run's score, depends much on the split and SGD's shuffling,
which is why TCAV tests over many runs; seeded alike, they agree exactly (tests/test_tcav.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script

LAYER = "_blocks.15"


def _link(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import cnnviz
    from captum.concept import TCAV, Concept
    from scipy.stats import ttest_ind

    images = sorted((sample_images()).glob("*.jpg"))
    tmp = Path(tempfile.mkdtemp(prefix="tcav-bench-"))
    concept = _link(tmp / "concept", images[5:25:2])
    pool = _link(tmp / "random", images[100:400:10])
    data = _link(tmp / "data", images[450:490:5])
    lm = cnnviz.load_model("efficientnet_lite0")
    cls = 11  # goldfinch

    def ours():
        return cnnviz.tcav(lm, data, {"concept": concept}, classes=[cls], layers=[LAYER], random_from=pool,
                           random_runs=args.runs, random_size=10, device="cpu")

    reference = ours()
    sets = reference.random_sets
    pool_files = [pool / f for f in reference.random_files]

    def theirs(save: Path):
        def batch(files):
            return torch.cat([lm.prepare(f)[1] for f in files])

        n = len(sets) // 2
        c = Concept(0, "concept", [batch(sorted(concept.iterdir()))])
        rand = [Concept(1 + j, f"r{j}", [batch([pool_files[i] for i in sets[j]])]) for j in range(2 * n)]
        pairs = [[c, rand[i]] for i in range(n)] + [[rand[n + i], rand[i]] for i in range(n)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tc = TCAV(lm.model, [LAYER], model_id="m", save_path=str(save))
            scores = tc.interpret(batch(sorted(data.iterdir())), pairs, target=cls)
        s = np.array([float(scores["-".join(str(x.id) for x in p)][LAYER]["sign_count"][0]) for p in pairs])
        return ttest_ind(s[:n], s[n:]).pvalue, s

    times: dict[str, list[float]] = {"cnnviz": [], "captum": []}
    for r in range(args.rounds):
        order = ["cnnviz", "captum"] if r % 2 == 0 else ["captum", "cnnviz"]
        for name in order:
            save = tmp / f"cav{r}"
            t0 = time.perf_counter()
            if name == "cnnviz":
                ours()
            else:
                theirs(save)
            times[name].append(time.perf_counter() - t0)
            shutil.rmtree(save, ignore_errors=True)
            print(f"round {r + 1} {name}: {times[name][-1]:.2f} s", flush=True)
    _, s = theirs(tmp / "check")
    n = len(sets) // 2
    delta = max(np.abs(reference.scores[0, 0, 0] - s[:n]).max(), np.abs(reference.scores[1, 0, 0] - s[n:]).max())
    delta_mean = max(abs(reference.scores[0, 0, 0].mean() - s[:n].mean()), abs(reference.scores[1, 0, 0].mean() - s[n:].mean()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{cpu_model()}, torch threads {torch.get_num_threads()}; {args.runs} runs, {args.rounds} rounds, medians")
    print("| contender | median s | vs captum |\n|---|---|---|")
    for k in ("cnnviz", "captum"):
        print(f"| {k} | {med[k]:.2f} | {med[k] / med['captum']:.3f} |")
    print(f"\ncnnviz / captum = {med['cnnviz'] / med['captum']:.2f}; rounds: "
          + ", ".join(f"{a:.1f} / {b:.1f} s" for a, b in zip(times['cnnviz'], times['captum'])))
    print(f"captum unseeded (its own splits and SGD seeds): max |score - captum's| per run {delta:.3f}, of the "
          f"mean over the runs {delta_mean:.3f}; the seeded comparison is tests/test_tcav.py")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
