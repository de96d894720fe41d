"""Where the time of `cnnviz.audit` goes: seconds per image per section, and the share of the
whole spent inside the model's forward passes and in backward passes (torch.autograd.grad).

    python benchmarks/audit.py [--images 8] [--methods gradcam,saliency,occlusion] [--steps 16]
                               [--sanity-images 1] [--layer _blocks.10] [--model efficientnet_lite0]
                               [--device cpu]

The images are the first ones of the ImageNet sample (labels from its labels.csv). Sections are
the audit's own timings (params["seconds"]: reading, forward pass, maps per method, deletion and
insertion per method, maps of the true class of misclassified images, sanity check, units). Forward
passes are timed by a pre-hook and a hook on the model's root module (also in the folded copy the
occlusion sweep runs, which inherits them), backward passes by wrapping torch.autograd.grad; the
rest is data handling, metrics and bookkeeping. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--methods", default="gradcam,saliency,occlusion")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--sanity-images", type=int, default=1)
    ap.add_argument("--layer", default="_blocks.10", help="the units section's layer ('none': no units section)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import cnnviz

    sample = sample_images().parent  # the sample's folder: images/ and labels.csv
    rows = list(csv.DictReader(open(sample / "labels.csv", newline="")))[: args.images]
    tmp = Path(tempfile.mkdtemp(prefix="cnnviz-audit-bench-"))
    listing = tmp / "data.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for r in rows:
            w.writerow([str(sample / "images" / r["file"]), r["class_name"]])
    lm = cnnviz.load_model(args.model)

    clock = {"forward": 0.0, "backward": 0.0}
    started: list[float] = []

    def pre(module, inputs):
        started.append(time.perf_counter())

    def post(module, inputs, output):
        clock["forward"] += time.perf_counter() - started.pop()

    real_grad = torch.autograd.grad

    def grad(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real_grad(*a, **kw)
        finally:
            clock["backward"] += time.perf_counter() - t0

    handles = [lm.model.register_forward_pre_hook(pre), lm.model.register_forward_hook(post)]
    torch.autograd.grad = grad
    t0 = time.perf_counter()
    try:
        result = cnnviz.audit(lm, listing, args.methods, steps=args.steps, sanity_images=args.sanity_images,
                              layer=None if args.layer == "none" else args.layer,
                              device=args.device, progress=False)
    finally:
        total = time.perf_counter() - t0
        torch.autograd.grad = real_grad
        for h in handles:
            h.remove()
    n = result.params["num_images"]
    print(f"cnnviz audit: {args.model}, {n} images, methods {args.methods}, {args.steps} deletion steps, "
          f"{args.sanity_images} sanity image(s), {args.device}, {torch.get_num_threads()} threads, {cpu_model()}\n")
    print("| section | seconds | seconds per image |\n| --- | ---: | ---: |")
    for name, sec in result.params["seconds"].items():
        print(f"| {name} | {sec:.1f} | {sec / n:.2f} |")
    print(f"| **total** | {total:.1f} | {total / n:.2f} |\n")
    fwd, bwd = clock["forward"], clock["backward"]
    print(f"forward passes: {fwd:.1f} s ({fwd / total:.0%}), backward passes: {bwd:.1f} s ({bwd / total:.0%}), "
          f"together {(fwd + bwd) / total:.0%} of the audit; the rest: {total - fwd - bwd:.1f} s")
    print(f"top-1 {result.params['top1']:.1%}; deletion AUC "
          + ", ".join(f"{m} {v:.3f}" for m, v in result.params["mean_deletion_auc"].items())
          + "; insertion AUC " + ", ".join(f"{m} {v:.3f}" for m, v in result.params["mean_insertion_auc"].items()))


if __name__ == "__main__":
    main()
