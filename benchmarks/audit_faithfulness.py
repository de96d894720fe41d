"""Does the audit's faithfulness section separate the methods from a random map? Deletion and
insertion areas of Grad-CAM, occlusion and the random baseline map on EfficientNet-Lite0 over
photos of the ImageNet sample (the README quotes this run).

    python benchmarks/audit_faithfulness.py [--images 60] [--every 8] [--steps 8]
                                            [--window 32] [--stride 32] [--fill blur]

The photos are every `--every`-th of the sample (different classes), at Lite0's 224 px input. Each
image's map explains its top-1 class. Prints per method the mean area with a 95 % interval (1.96
standard errors over the images) and the share of images on which the method beats the random
map (deletion: a lower area; insertion: a higher one).
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()

    import cnnviz

    files = [str(p) for p in sorted(sample_images().glob("*.jpg"))[:: args.every][: args.images]]
    lm = cnnviz.load_model("efficientnet_lite0")
    t0 = time.perf_counter()
    r = cnnviz.audit(lm, files, args.methods, steps=args.steps, fill=args.fill, show=0, wrong=0, sanity_images=0,
                     occlusion_window=args.window, occlusion_stride=args.stride, progress=True, device="cpu")
    seconds = time.perf_counter() - t0
    n = len(r.files)
    print(f"audit faithfulness: efficientnet_lite0, {n} sample photos (every {args.every}th), {args.steps} steps, "
          f"fill {args.fill}, occlusion window {args.window} stride {args.stride}; {seconds:.0f} s, "
          f"{torch.get_num_threads()} threads, {cpu_model()}\n")
    print("| map | deletion AUC (lower is better) | insertion AUC (higher is better) | beats random: deletion "
          "| beats random: insertion |\n| --- | ---: | ---: | ---: | ---: |")

    def ci(v):
        v = np.asarray(v, np.float64)
        return f"{v.mean():.3f} ± {1.96 * v.std(ddof=1) / np.sqrt(len(v)):.3f}"

    bd, bi = r.baseline_deletion_auc, r.baseline_insertion_auc
    for j, m in enumerate(r.methods):
        d, i = r.deletion_auc[:, j], r.insertion_auc[:, j]
        print(f"| {m} | {ci(d)} | {ci(i)} | {np.mean(d < bd):.0%} | {np.mean(i > bi):.0%} |")
    print(f"| random map | {ci(bd)} | {ci(bi)} | | |")
    print(f"\ntop-1 probability of the explained class, mean: {r.top5_prob[:, 0].mean():.3f}")


if __name__ == "__main__":
    main()
