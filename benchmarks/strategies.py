"""What SpRAy's clustering costs beside the maps it clusters (`cnnviz strategies`, issue 27).

    python benchmarks/strategies.py [--images 96] [--rounds 3] [--scale 192,384,768]
                                    [--model efficientnet_lite0] [--method gradcam] [--device cpu]

In one process, in interleaved rounds (medians reported): the maps of the first --images photos
of the ImageNet sample for one class (`cnnviz.attribute`, the engine's call; the class does not
change the cost), and `spray` on those maps, with and without its t-SNE embedding. Then `spray`
alone on more maps (--scale: the measured maps repeated with 5 % noise, which keeps their
structure but makes them distinct): the clustering grows with N^2 (distances, kNN graph) to N^3
(the dense eigendecomposition), the maps with N. Prints a Markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", default="192,384,768")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import cnnviz
    from cnnviz.engines.concepts.strategies_spray import spray

    files = sorted(str(p) for p in sample_images().iterdir())[: args.images]
    lm = cnnviz.load_model(args.model)
    target = 11  # goldfinch: one class for every image, as the engine asks per class
    t_maps, t_spray, t_tsne = [], [], []
    maps = None
    spray(np.random.default_rng(0).random((20, 32, 32)))  # imports (scikit-learn) outside the timings
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        maps = cnnviz.attribute(lm, files, args.method, target=target, device=args.device).map
        t_maps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        spray(maps, tsne=False)
        t_spray.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = spray(maps)
        t_tsne.append(time.perf_counter() - t0)
    m, s, st = (statistics.median(v) for v in (t_maps, t_spray, t_tsne))
    print(f"# strategies cost, {args.model}, {args.method}, {cpu_model()}, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds (medians)\n")
    print("| maps N | maps (s) | spray, no t-SNE (s) | spray with t-SNE (s) | clustering / maps |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {len(files)} | {m:.2f} | {s:.3f} | {st:.3f} | {st / m:.3f} |")
    print(f"\n(eigengap chose {r.n_clusters} cluster(s) on the {len(files)} maps)\n")
    rng = np.random.default_rng(0)
    print("| N | spray, no t-SNE (s) | spray with t-SNE (s) | maps at the rate above (s, estimated) | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in (int(v) for v in args.scale.split(",") if v):
        reps = int(np.ceil(n / len(maps)))
        big = np.concatenate([maps] * reps)[:n]
        big = big * (1 + 0.05 * rng.standard_normal(big.shape)).astype(np.float32)
        t0 = time.perf_counter()
        spray(big, tsne=False)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        spray(big)
        b = time.perf_counter() - t0
        est = m / len(files) * n
        print(f"| {n} | {a:.2f} | {b:.2f} | {est:.1f} | {b / est:.3f} |")


if __name__ == "__main__":
    main()
