"""How close the approximate occlusion mode comes to the exact map, on real photos.

For each of --images photos of the ImageNet sample (spread evenly over its classes), EfficientNet-
Lite0 (real ImageNet weights) computes the exact map (mode "full") once and the approximate map
(mode "approximate") at every --taus value, at window 32 and --stride; the table gives, over the
photos, the Spearman rank correlation of the target-probability maps (mean and minimum), the
share of photos whose largest probability drop lands on the same or an adjacent position (also
counted with ties: exact positions within 1 % of the map's range of its minimum), the tau used
(tau "auto" measures it per photo), the
share of positions computed (the rest interpolated by the drill-down), the counted saving of
multiply-accumulates over the full network, and the time of each mode. The issue's bar: Spearman
>= 0.95 at the default tau and the largest drop the same or adjacent in >= 90 % of photos.

    python benchmarks/occlusion_accuracy.py [--images 30] [--stride 8] [--taus auto,1.0,0.5]
                                            [--model efficientnet_lite0] [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation, ties given their mean rank (scipy.stats.spearmanr's definition)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    return float(np.corrcoef(ra, rb)[0, 1])


def adjacent(a: np.ndarray, b: np.ndarray, tie: float = 0.0) -> bool:
    """The largest drop (smallest probability) of `b` is at or next to that of `a`. With `tie` > 0,
    every position of `a` within `tie` of the map's range from its minimum counts as its largest
    drop (a photo whose object, once covered, leaves p ~ 0 at several positions has no single one)."""
    yb, xb = np.unravel_index(int(np.argmin(b)), b.shape)
    low = a <= a.min() + tie * (a.max() - a.min())
    low[np.unravel_index(int(np.argmin(a)), a.shape)] = True
    ys, xs = np.nonzero(low)
    return bool((np.maximum(np.abs(ys - int(yb)), np.abs(xs - int(xb))) <= 1).any())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--taus", default="auto,1.0,0.5")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    taus = [t if t == "auto" else float(t) for t in args.taus.split(",") if t]

    import torch

    import cnnviz
    os.environ.setdefault("CNNVIZ_CACHE_DIR", "off")
    lm = cnnviz.load_model(args.model)
    files = sorted(sample_images().glob("*.jpg"))
    files = [files[i * len(files) // args.images] for i in range(args.images)]
    rows = {t: {"rho": [], "adj": [], "tie": [], "computed": [], "macs": [], "s": [], "chosen": []} for t in taus}
    full_s = []
    head = (f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; "
            f"model {args.model}; {len(files)} photos; window {args.window}, stride {args.stride}; "
            f"cnnviz {cnnviz.__version__}")
    print(head, flush=True)
    for k, f in enumerate(files):
        t0 = time.perf_counter()
        exact = cnnviz.occlusion(lm, f, window=args.window, stride=args.stride, progress=False, mode="full")
        full_s.append(time.perf_counter() - t0)
        for t in taus:
            t0 = time.perf_counter()
            a = cnnviz.occlusion(lm, f, window=args.window, stride=args.stride, progress=False, mode="approximate",
                                 tau=t)
            r = rows[t]
            r["s"].append(time.perf_counter() - t0)
            r["rho"].append(spearman(exact.true_class_prob, a.true_class_prob))
            r["adj"].append(adjacent(exact.true_class_prob, a.true_class_prob))
            r["tie"].append(adjacent(exact.true_class_prob, a.true_class_prob, tie=0.01))
            r["chosen"].append(a.params.get("tau"))
            d = a.params["drill_down"]
            r["computed"].append(d["computed_positions"] / (d["computed_positions"] + d["filled_positions"]))
            r["macs"].append(a.params.get("macs_ratio", 1.0))
        print(f"  {k + 1}/{len(files)} {f.name}: " + ", ".join(
            f"tau {t}: rho {rows[t]['rho'][-1]:.3f}" for t in taus), file=sys.stderr, flush=True)
    out = [head, "", "| tau | tau used | Spearman mean | Spearman min | photos with rho >= 0.95 | largest drop same/adjacent "
                     "| same, ties within 1 % | positions computed | MACs saved x (per computed position) | s per photo "
                     "| full s per photo |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in taus:
        r = rows[t]
        used = ", ".join(f"{v}: {r['chosen'].count(v)}" for v in sorted(set(r["chosen"])))
        out.append(f"| {t} | {used} | {np.mean(r['rho']):.3f} | {np.min(r['rho']):.3f} | "
                   f"{np.mean(np.array(r['rho']) >= 0.95):.0%} | {np.mean(r['adj']):.0%} | {np.mean(r['tie']):.0%} | "
                   f"{np.mean(r['computed']):.0%} | {np.mean(r['macs']):.2f} | {statistics.median(r['s']):.2f} | "
                   f"{statistics.median(full_s):.2f} |")
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
