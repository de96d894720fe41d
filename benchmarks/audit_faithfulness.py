"""Does the audit's faithfulness section separate the methods from a random map? Deletion and
insertion areas of Grad-CAM, occlusion and the random baseline map on EfficientNet-Lite0 over
photos of the ImageNet sample (the README quotes this run).

    python benchmarks/audit_faithfulness.py [--images 60] [--every 8] [--steps 8]
                                            [--window 32] [--stride 32] [--fill blur]
                                            [--progress-file P.npz [--partial]]

The photos are every `--every`-th of the sample (different classes), at Lite0's 224 px input. Each
image's map explains its top-1 class. Prints per method the mean area with a 95 % interval (1.96
standard errors over the images) and the share of images on which the method beats the random
map (deletion: a lower area; insertion: a higher one). With --progress-file the audit keeps its
progress there (and resumes from it); --partial prints the table of the images done so far.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--window", type=int, default=32, help="occlusion window (px)")
    ap.add_argument("--stride", type=int, default=32, help="occlusion stride (px)")
    ap.add_argument("--fill", default="blur")
    ap.add_argument("--methods", default="gradcam,occlusion")
    ap.add_argument("--progress-file", default=None)
    ap.add_argument("--partial", action="store_true", help="print the images done so far in --progress-file")
    args = ap.parse_args()
    if args.partial:
        with np.load(args.progress_file) as p:
            ok = p["readable"]
            table(args.methods.split(","), p["deletion_auc"][ok], p["insertion_auc"][ok],
                  p["baseline_deletion_auc"][ok], p["baseline_insertion_auc"][ok],
                  f"partial: {int(ok.sum())} photos done (every {args.every}th of the sample)")
        return

    import cnnviz

    files = [str(p) for p in sorted(sample_images().glob("*.jpg"))[:: args.every][: args.images]]
    lm = cnnviz.load_model("efficientnet_lite0")
    t0 = time.perf_counter()
    r = cnnviz.audit(lm, files, args.methods, steps=args.steps, fill=args.fill, show=0, wrong=0, sanity_images=0,
                     occlusion_window=args.window, occlusion_stride=args.stride, progress=True, device="cpu",
                     checkpoint=args.progress_file)
    seconds = time.perf_counter() - t0
    table(list(r.methods), r.deletion_auc, r.insertion_auc, r.baseline_deletion_auc, r.baseline_insertion_auc,
          f"{len(r.files)} sample photos (every {args.every}th)")
    print(f"\n{seconds:.0f} s, {torch.get_num_threads()} threads, {cpu_model()}; top-1 probability of the explained "
          f"class, mean: {r.top5_prob[:, 0].mean():.3f}")


def table(methods, dele, ins, bd, bi, what: str) -> None:
    args = sys.argv[1:]
    print(f"audit faithfulness: efficientnet_lite0, {what}; {' '.join(args)}\n")
    print("| map | deletion AUC (lower is better) | insertion AUC (higher is better) | beats random: deletion "
          "| beats random: insertion |\n| --- | ---: | ---: | ---: | ---: |")

    def ci(v):
        v = np.asarray(v, np.float64)
        return f"{v.mean():.3f} ± {1.96 * v.std(ddof=1) / np.sqrt(len(v)):.3f}"

    for j, m in enumerate(methods):
        d, i = dele[:, j], ins[:, j]
        print(f"| {m} | {ci(d)} | {ci(i)} | {np.mean(d < bd):.0%} | {np.mean(i > bi):.0%} |")
    print(f"| random map | {ci(bd)} | {ci(bi)} | | |")


if __name__ == "__main__":
    main()
