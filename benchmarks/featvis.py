"""Feature visualization speed: cnnviz's optimization steps against the forward + backward passes
it cannot beat, and what the image priors buy in a fixed budget of steps.

All in one process, on the same model, batch, image size and device:

  (a) cnnviz.featvis with its default priors (Fourier spectrum with 1/f scaling, decorrelated
      colour, the standard random pad / jitter / scale / rotation, Adam), for a batch of B units of
      a layer (`visualize_units`) and for B class logits of the whole network (`visualize_classes`).
      Steady state: the interval between two consecutive steps, taken from timestamps at the end of
      each step of the engine's own loop (its progress bar is swapped for a clock), so the one-off
      setup (layer resolution, memory-layout probe, the step-0 and final evaluations; for class
      models the closing probability pass) is excluded. The whole call, setup included, is shown
      too;
  (b) the limit: a plain forward + backward of a B-image batch (torch.autograd.grad w.r.t. the
      input, channels_last like the engine, float16 autocast on CUDA like the engine): through the
      whole network, and through the network up to the layer (the engine stops the forward there
      for a layer objective). The engine's network input is the image plus the standard transforms'
      margin (size + pad: the size itself with the default transforms, which have no margin), so that is the size of the fair limit; the whole
      network at the bare image size is shown for reference;
  (c) the ratios cnnviz steps/s / limit passes/s (the issue's bar: at least 0.8), against the fair
      limit: up to the layer for the layer objective, the whole network for class logits;
  (d) convergence: the objective of the final image (untransformed; mean over the B units) after
      fixed budgets of steps, seed 0, priors full against none, with the share of spectral power
      at high frequencies (featvis.high_frequency_share; noise-like images score high).

    python benchmarks/featvis.py [--batch 8] [--size 224] [--layer _blocks.15] [--steps 16]
                                 [--repeats 3] [--limit-iters 4] [--budgets 64,256] [--device auto]

Timed runs of (a) and (b) are interleaved round by round (their order alternating), so that a slow
spell of a shared machine hits all of them alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from machine import cpu_model  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent


class StepClock:
    """Stands in for the engine's progress bar: a timestamp at the end of every step."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.stamps: list[float] = []

    def __call__(self, total, desc, enabled, unit=None):  # the progress_bar signature
        self.stamps = []
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        self.stamps.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if len(self.stamps) < 2:
            raise SystemExit("the engine's loop no longer reports its steps through featvis.loop's progress_bar; "
                             "update StepClock in benchmarks/featvis.py")
        return list(np.diff(self.stamps))


class _Stop(Exception):
    pass


def limit_pass(model, x: torch.Tensor, dev: torch.device, amp: bool, classes: list[int],
               layer=None, units: list[int] | None = None):
    """One forward + backward of `x` (B x 3 x H x W, channels_last): the gradient of the sum of the
    B class logits w.r.t. the input, or (with `layer` = (module, call index)) of the sum of the
    mean activations of the B units of that layer, the forward stopped there."""
    xi = x.detach().requires_grad_(True)
    handle, store, calls = None, {}, [0]
    if layer is not None:
        module, call = layer

        def hook(mod, inp, out):
            calls[0] += 1
            if calls[0] - 1 == call:
                store["act"] = out
                raise _Stop

        handle = module.register_forward_hook(hook)
    try:
        with torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext():
            if layer is None:
                out = model(xi).float()
                pick = (torch.arange(len(classes), device=out.device), torch.tensor(classes, device=out.device))
                value = out[pick].sum()
            else:
                with contextlib.suppress(_Stop):
                    model(xi)
                a = store["act"].float()
                pick = (torch.arange(len(units), device=a.device), torch.tensor(units, device=a.device))
                value = a[pick].flatten(1).mean(1).sum()
        (g,) = torch.autograd.grad(value, xi)
    finally:
        if handle is not None:
            handle.remove()
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0", help="any name cnnviz.load_model accepts")
    ap.add_argument("--layer", default="_blocks.15", help="layer of the unit objective")
    ap.add_argument("--batch", type=int, default=8, help="units (0..B-1) / classes / images per batch")
    ap.add_argument("--size", type=int, default=224, help="image size (the network sees size + pad)")
    ap.add_argument("--steps", type=int, default=16, help="steps per timed cnnviz call (steps - 1 intervals each)")
    ap.add_argument("--limit-iters", type=int, default=4, help="timed forward + backward passes per limit per round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--budgets", default="64,256", help="step budgets for the convergence table; '' skips it")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    args = ap.parse_args(argv)
    if args.steps < 3 or args.batch < 1 or args.repeats < 1 or args.limit_iters < 1:
        ap.error("--steps must be >= 3, --batch, --repeats and --limit-iters >= 1")

    import cnnviz
    from cnnviz import featvis
    from cnnviz.engines.featvis import loop as engine
    from cnnviz.engines.common import resolve_device

    try:
        dev = resolve_device(args.device)
    except cnnviz.CnnvizError as e:  # e.g. --device cuda on a machine without one
        print(f"skipped: {e}")
        return 0
    amp = dev.type == "cuda"  # the engine's default precision
    lm = cnnviz.load_model(args.model)
    model = lm.model.eval().to(dev)  # cnnviz finds it on the device and leaves it there
    B, size = args.batch, args.size
    pad = featvis.STANDARD_TRANSFORMS.pad
    fed = size + pad
    units = list(range(B))
    nclasses = len(lm.categories)
    classes = [min(nclasses - 1, int(round(i * nclasses / B))) for i in range(B)]
    example = lm.preprocessing.normalize(np.full((size, size, 3), 128, np.uint8))
    info = cnnviz.resolve_layer(model, args.layer, example.to(dev))
    layer = (dict(model.named_modules())[info.name], info.call or 0)
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(f"model {lm.name}; batch {B}; image {size}x{size}, network input {fed}x{fed} (standard transforms pad "
          f"{pad}); layer {info.address} {'x'.join(map(str, info.shape))}, units {units[0]}..{units[-1]}; "
          f"classes {classes}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.2f}; device {dev}{gpu}; "
          f"{'float16 autocast' if amp else 'float32'}; torch {torch.__version__}, cnnviz {cnnviz.__version__}",
          flush=True)

    clock = StepClock(dev)
    gen = torch.Generator().manual_seed(0)
    x_fed = torch.rand((B, 3, fed, fed), generator=gen).to(dev).contiguous(memory_format=torch.channels_last)
    x_img = torch.rand((B, 3, size, size), generator=gen).to(dev).contiguous(memory_format=torch.channels_last)

    def cnnviz_units():
        with mock.patch.object(engine, "progress_bar", clock):
            featvis.visualize_units(lm, info.address, units, size=size, steps=args.steps, seed=0, device=str(dev),
                                    progress=False)
        return clock.intervals()

    def cnnviz_classes():
        with mock.patch.object(engine, "progress_bar", clock):
            featvis.visualize_classes(lm, classes, size=size, steps=args.steps, seed=0, device=str(dev),
                                      progress=False)
        return clock.intervals()

    def limit(x, with_layer):
        def run():
            out = []
            for _ in range(args.limit_iters):
                t0 = time.perf_counter()
                limit_pass(model, x, dev, amp, classes, layer if with_layer else None, units)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                out.append(time.perf_counter() - t0)
            return out
        return run

    A_UNITS = f"(a) cnnviz units {info.address}, priors full"
    A_CLASS = "(a) cnnviz class logits, priors full"
    B_LAYER = f"(b) fwd+bwd up to {info.address}, {fed}px"
    B_WHOLE = f"(b) fwd+bwd whole network, {fed}px"
    B_WHOLE_IMG = f"(b) fwd+bwd whole network, {size}px"
    contenders = {A_UNITS: cnnviz_units, A_CLASS: cnnviz_classes, B_LAYER: limit(x_fed, True),
                  B_WHOLE: limit(x_fed, False)}
    if fed != size:  # transforms with a margin: also the bare image size, for reference
        contenders[B_WHOLE_IMG] = limit(x_img, False)
    per_step = {k: [] for k in contenders}  # seconds per step / per pass
    per_call = {k: [] for k in (A_UNITS, A_CLASS)}  # whole call, setup included
    for fn in contenders.values():
        fn()  # warm-up
    for r in range(args.repeats):
        order = list(contenders.items())
        for k, fn in order if r % 2 == 0 else order[::-1]:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            per_step[k].extend(fn())
            if k in per_call:
                per_call[k].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{args.repeats} done, load average {os.getloadavg()[0]:.2f}", flush=True)

    med = {k: statistics.median(v) for k, v in per_step.items()}
    w = max(map(len, contenders)) + 2
    print(f"\nsteady state: median s per step, over {args.repeats} rounds x {args.steps - 1} step intervals "
          f"(cnnviz, setup excluded) or x {args.limit_iters} passes (limits)")
    print(f"{'':<{w}}{'s/step':>8}{'IQR':>14}{'steps/s':>9}")
    for k, ts in per_step.items():
        q = np.percentile(ts, [25, 75])
        print(f"{k:<{w}}{med[k]:>8.3f}{f'{q[0]:.3f}-{q[1]:.3f}':>14}{1 / med[k]:>9.2f}")
    print(f"\nwhole calls, setup included ({args.steps} steps): " + "; ".join(
        f"{k[4:].split(',')[0]}: median {statistics.median(v):.2f} s = {args.steps / statistics.median(v):.2f} steps/s"
        for k, v in per_call.items()))

    print("\n(c) ratio cnnviz steps/s / limit passes/s (bar: >= 0.8)")
    pairs = [("units vs up to the layer (fair: the engine stops there)", A_UNITS, B_LAYER),
             ("units vs whole network", A_UNITS, B_WHOLE),
             ("class logits vs whole network (fair)", A_CLASS, B_WHOLE),
             (f"class logits vs whole network at {size}px (no margin)", A_CLASS, B_WHOLE_IMG)]
    pairs = pairs if fed != size else pairs[:3]
    for text, a, b in pairs:
        print(f"  {text:<58}{med[b] / med[a]:>6.2f}")

    budgets = [int(v) for v in args.budgets.split(",") if v.strip()]
    if budgets:
        print(f"\n(d) convergence: {info.address} units {units[0]}..{units[-1]}, seed 0; objective = mean activation "
              "of each unit on its final image (untransformed), mean [min, max] over the units; HF = share of "
              "spectral power above 0.25 cycles/pixel", flush=True)
        print(f"{'priors':<8}{'steps':>6}{'objective':>11}{'min':>9}{'max':>9}{'HF':>8}{'wall s':>8}")
        for priors in ("full", "none"):
            for steps in budgets:
                t0 = time.perf_counter()
                res = featvis.visualize_units(lm, info.address, units, size=size, steps=steps, priors=priors, seed=0,
                                              device=str(dev), progress=False)
                t = time.perf_counter() - t0
                o = res.objective
                hf = featvis.high_frequency_share(res.images)
                print(f"{priors:<8}{steps:>6}{o.mean():>11.3f}{o.min():>9.3f}{o.max():>9.3f}{hf.mean():>8.3f}{t:>8.1f}",
                      flush=True)
        photo = featvis.high_frequency_share(lm.prepare(ROOT / "assets" / "coffee.jpg")[0])[0]
        print(f"(without priors the raw objective climbs faster, on noise-like images: see the HF share; the photo "
              f"assets/coffee.jpg has {photo:.3f})")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
