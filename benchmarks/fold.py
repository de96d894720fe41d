"""Folding in isolation: whole forward passes of a model as it is against its folded copy
(cnnviz.fold: eval-mode batch norms merged into the convolutions, symmetric "same" paddings made the
convolutions' own), at several batch sizes, in interleaved rounds on the same inputs.

    python benchmarks/fold.py [--models efficientnet_lite0,resnet18] [--batch-sizes 4,16] [--rounds 7]
    python benchmarks/fold.py --first-call [--models efficientnet_lite0] [--rounds 7]

Per model and batch size it prints the median time per image of each, the speed-up (as is / folded)
and the largest difference of the logits relative to their largest magnitude. Models other than
EfficientNet-Lite0 use random weights (same structure and cost); the input is the channels-last
layout that the occlusion sweep uses on a CPU.

With --first-call: what the first fold of a model costs (`folded` on a model it has not seen: the
trial passes, the copy, the fold and the check), against a model's forward pass on one image and
against a repeated one-image LRP call (`cnnviz.attribute(lm, path, "lrp-epsilon")`), in interleaved
rounds, medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from machine import cpu_model  # benchmarks/ is on sys.path when run as a script


def load(name: str):
    import cnnviz

    if name.startswith("efficientnet_lite"):
        return cnnviz.load_model(name)
    torch.manual_seed(0)
    return cnnviz.load_model(name, weights="none")


def bench(name: str, sizes: list[int], rounds: int) -> list[str]:
    from cnnviz.engines.common import batch_memory_format
    from cnnviz.fold import folded

    lm = load(name)
    model = lm.model.eval()
    h, w = lm.input_size
    torch.manual_seed(1)
    lines = []
    with torch.inference_mode():
        example = torch.randn(1, 3, h, w)
        fast, info = folded(model, example, keep=[])
        layout = batch_memory_format(model, example)
        for b in sizes:
            x = torch.randn(b, 3, h, w).contiguous(memory_format=layout)
            ref, out = model(x), fast(x)  # also the warm-up of both at this shape
            err = float((ref - out).abs().max() / ref.abs().max())
            times: dict[str, list[float]] = {"as is": [], "folded": []}
            for r in range(rounds):
                for label, m in (("as is", model), ("folded", fast))[:: 1 if r % 2 == 0 else -1]:
                    t0 = time.perf_counter()
                    m(x)
                    times[label].append((time.perf_counter() - t0) / b)
            med = {k: statistics.median(v) for k, v in times.items()}
            lines.append(f"| {name} | {b} | {info.get('folded_batch_norms', '?')} | {med['as is'] * 1e3:.1f} | "
                         f"{med['folded'] * 1e3:.1f} | {med['as is'] / med['folded']:.2f} | {err:.1e} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def first_call(name: str, rounds: int) -> list[str]:
    import copy

    import cnnviz
    from cnnviz.fold import folded
    from machine import sample_images

    lm = load(name)
    model = lm.model.eval()
    h, w = lm.input_size
    x = torch.randn(1, 3, h, w)
    files = sorted(sample_images().glob("*.jpg"))
    path = str(files[0]) if files else str(__import__("pathlib").Path(__file__).parent.parent / "assets" / "rocket.jpg")
    cnnviz.attribute(lm, path, "lrp-epsilon")  # warm: the fold of lm remembered, oneDNN's first shape
    times: dict[str, list[float]] = {"first fold": [], "forward": [], "lrp call": []}
    for _ in range(rounds):
        fresh = copy.deepcopy(model)  # a model never folded (untimed)
        t0 = time.perf_counter()
        folded(fresh, x)
        times["first fold"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        times["forward"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cnnviz.attribute(lm, path, "lrp-epsilon")
        times["lrp call"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return [f"| {name} | {med['first fold']:.1f} | {med['forward']:.1f} | {med['lrp call']:.1f} | "
            f"{med['first fold'] / med['lrp call']:.2f} |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18")
    ap.add_argument("--batch-sizes", default="4,16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--first-call", action="store_true", help="the first fold's cost against a one-image LRP call")
    args = ap.parse_args(argv)
    load_avg = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
          f"load {load_avg} at start; torch {torch.__version__}; {args.rounds} interleaved rounds, medians\n")
    if args.first_call:
        print("| model | first fold ms | forward ms (1 image, no grad) | LRP-ε call ms (repeated) | fold / call |")
        print("|---|---|---|---|---|")
        for name in args.models.split(","):
            print("\n".join(first_call(name, args.rounds)), flush=True)
        return 0
    print("| model | batch | batch norms folded | ms/image as is | ms/image folded | speed-up | max logit diff (rel.) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print("\n".join(bench(name, [int(v) for v in args.batch_sizes.split(",")], args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
