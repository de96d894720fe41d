"""Occlusion speed: cnnviz's default (batch size chosen by measuring) against every fixed batch size
and against Captum's Occlusion at every perturbations_per_eval, on several models.

For each model and stride (window 32 on the 224x224 input), in one process, on the same image and
grid, these contenders run in interleaved rounds (round r runs each once, in a rotated order, so a
slow spell of a shared machine hits all alike); the table gives medians and ratios:

  cnnviz first    cnnviz.occlusion with no batch_size, as on a first call: nothing remembered, the
                  batch is chosen by timing the first positions (cnnviz.batching); the sizes it
                  chose are listed;
  cnnviz again    the same as a later call for the same model and input: the search starts from
                  the size chosen last time (remembered in memory here: CNNVIZ_CACHE_DIR=off);
  cnnviz b=N      cnnviz.occlusion(batch_size=N) for each N of --batch-sizes;
  captum ppe=P    captum.attr.Occlusion on the model followed by a softmax (its attribution is then
                  the probability drop), baseline 0 in normalized space (= cnnviz's gray fill),
                  target = top-1, perturbations_per_eval=P for each P of --perturbations.

  incremental first / incremental b=N
                  (with --modes full,incremental) cnnviz.occlusion(mode="incremental"): the unoccluded
                  image once, then per layer only the region each occluder changes (cnnviz.engines.
                  incremental), batch chosen by measuring / fixed at each N of --mode-batch-sizes.
  approximate first, approximate:T first
                  (--modes ...,approximate,approximate:0.5) the approximate mode at its default tau
                  ("auto": measured per run, the choices listed) or at a fixed tau T.

The "MACs x" column is the theoretical saving of a contender's mode: the multiply-accumulates per
position of the full network over those the mode computes (1 for full and Captum), counted from
the regions (result params macs_full / macs_incremental).

cnnviz computes three maps per pass (target probability, top class, one feature map's total),
Captum one. Models other than EfficientNet-Lite0 use random weights (same structure and cost).

    python benchmarks/occlusion.py [--models efficientnet_lite0:8,efficientnet_lite0:16,alexnet:16,...]
                                   [--budget 660] [--repeats 5] [--out table.md] [--quick]
                                   [--modes full,incremental,approximate,approximate:0.5]
                                   [--mode-batch-sizes 16,64]

--budget (seconds) is shared equally by the model/stride rows: each runs rounds until its share is
spent (at least 1, at most --repeats), so the whole run takes about that long. --quick: a smoke
run (lite0 at stride 32, two batch sizes, one Captum setting, one round).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from machine import cpu_model  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = "efficientnet_lite0:8,efficientnet_lite0:16,alexnet:16,resnet18:16,vgg16:16"


def timed(fn, dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, out


def load(name: str):
    import cnnviz

    if name.startswith("efficientnet_lite"):
        return cnnviz.load_model(name)
    torch.manual_seed(0)
    return cnnviz.load_model(name, weights="none")


def bench_one(name: str, stride: int, args, dev, amp: bool, share: float) -> dict:
    """Every contender on one model and stride; returns times and the auto choices."""
    from captum.attr import Occlusion

    import cnnviz
    from cnnviz import batching

    lm = load(name)
    model = lm.model.eval().to(dev)  # cnnviz then finds it on the device and leaves it there
    pixels, x = lm.prepare(args.image)
    x = x.to(dev)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else contextlib.nullcontext
    with torch.inference_mode(), autocast():
        top1 = int(model(x).float().argmax(1))
    chosen: dict[str, list[int]] = {"first": [], "again": []}
    macs: dict[str, float] = {}

    def run_cnnviz(bs, forget=False, mode="full", label=None):
        mode, _, tau = mode.partition(":")  # "approximate:0.5": a fixed tau (default: auto)
        more = {"tau": float(tau)} if tau else {}

        def run():
            if forget:
                batching._in_memory.clear()
            r = cnnviz.occlusion(lm, pixels, window=args.window, stride=stride, batch_size=bs, device=str(dev),
                                 amp=amp, progress=False, mode=mode, **more)
            if bs is None and mode == "full":
                chosen["first" if forget else "again"].append(r.params["batch_size"])
            if label is not None:
                macs[label] = r.params.get("macs_ratio", 1.0)
                if bs is None:
                    chosen.setdefault(label, []).append(r.params["batch_size"])
                if "tau_auto" in r.params:
                    chosen.setdefault(f"{label} tau", []).append(r.params["tau"])
            return r.params["num_positions"]
        return run

    occ = Occlusion(torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval())

    def run_captum(ppe):
        def run():
            with torch.no_grad(), autocast():
                a = occ.attribute(x, sliding_window_shapes=(3, args.window, args.window), strides=(3, stride, stride),
                                  baselines=0.0, target=top1, perturbations_per_eval=ppe, show_progress=False)
            assert a.shape == x.shape
        return run

    contenders = {}
    if "full" in args.mode_list:
        contenders = {"cnnviz first": run_cnnviz(None, forget=True), "cnnviz again": run_cnnviz(None)}
        contenders.update({f"cnnviz b={b}": run_cnnviz(b) for b in args.sizes})
    for mode in (m for m in args.mode_list if m != "full"):
        contenders[f"{mode} first"] = run_cnnviz(None, True, mode, f"{mode} first")
        contenders.update({f"{mode} b={b}": run_cnnviz(b, False, mode, f"{mode} b={b}") for b in args.mode_sizes})
    contenders.update({f"captum ppe={p}": run_captum(p) for p in args.ppes})
    # warm-up, not timed: the process's first passes pay one-off costs (thread pool, allocator, kernel
    # set-up) that would otherwise fall on whichever contender the first round happens to start with
    cnnviz.occlusion(lm, pixels, window=args.window, stride=args.window, batch_size=8, device=str(dev), amp=amp,
                     progress=False)
    with torch.no_grad(), autocast():
        occ.attribute(x, sliding_window_shapes=(3, args.window, args.window), strides=(3, args.window, args.window),
                      baselines=0.0, target=top1, perturbations_per_eval=8, show_progress=False)
    times = {k: [] for k in contenders}
    keys = list(contenders)
    started = time.perf_counter()
    n_pos = None
    for r in range(args.repeats):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        t_round = time.perf_counter()
        for k in order:
            t, out = timed(contenders[k], dev)
            times[k].append(t)
            n_pos = out if isinstance(out, int) else n_pos
        round_s = time.perf_counter() - t_round
        if time.perf_counter() - started + round_s > share:
            break
    print(f"  {name} stride {stride}: {len(times[keys[0]])} round(s) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    return {"model": name, "stride": stride, "positions": n_pos, "times": times, "chosen": chosen, "macs": macs}


def table(rows: list[dict]) -> str:
    out = ["| model, stride | positions | contender | median s | min-max s | / best fixed cnnviz | / best captum "
           "| MACs x | captum / this |",
           "|---|---|---|---|---|---|---|---|---|"]
    summary = ["", "| model, stride | call | chose | / best fixed | / best captum | best fixed | best captum |",
               "|---|---|---|---|---|---|---|"]
    for row in rows:
        med = {k: statistics.median(v) for k, v in row["times"].items()}
        fixed = {k: v for k, v in med.items() if k.startswith("cnnviz b=")}
        captum = {k: v for k, v in med.items() if k.startswith("captum")}
        bf = min(fixed, key=fixed.get) if fixed else None
        bc = min(captum, key=captum.get) if captum else None
        label = f"{row['model']}, {row['stride']}"
        for k, v in med.items():
            ts = row["times"][k]
            rf = f"{v / fixed[bf]:.2f}" if bf else "-"
            rc = f"{v / captum[bc]:.2f}" if bc else "-"
            mx = row.get("macs", {}).get(k, 1.0)
            speed = f"{captum[bc] / v:.2f}" if bc else "-"
            out.append(f"| {label} | {row['positions']} | {k} | {v:.2f} | {min(ts):.2f}-{max(ts):.2f} | {rf} | {rc} "
                       f"| {mx:.2f} | {speed} |")
        for call in ("first", "again"):
            if f"cnnviz {call}" not in med:
                continue
            a = med[f"cnnviz {call}"]
            summary.append(f"| {label} | {call} | {', '.join(map(str, row['chosen'][call]))} | {a / fixed[bf]:.2f} |"
                           f" {a / captum[bc]:.2f} | {bf} | {bc} |" if bf and bc else f"| {label} | {call} | - | - | - | - | - |")
        for k, v in row["chosen"].items():  # the other modes' chosen batch sizes and auto taus
            if k not in ("first", "again") and v:
                summary.append(f"| {label} | {k} | {', '.join(map(str, v))} | - | - | - | - |")
    return "\n".join(out + summary)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma-separated MODEL:STRIDE (any name cnnviz.load_model accepts) [%(default)s]")
    ap.add_argument("--image", default=str(ROOT / "assets" / "rocket.jpg"))
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--batch-sizes", default="4,8,16,32,64", help="fixed cnnviz batch sizes [%(default)s]")
    ap.add_argument("--perturbations", default="1,4,16,64", help="Captum perturbations_per_eval [%(default)s]")
    ap.add_argument("--repeats", type=int, default=5, help="most interleaved rounds per model [%(default)s]")
    ap.add_argument("--budget", type=float, default=660, help="seconds for the whole run, shared by the rows")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    ap.add_argument("--amp", action="store_true", help="float16 autocast on CUDA for all")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--quick", action="store_true", help="smoke run: lite0 stride 32, b=4,16, ppe=16, one round")
    ap.add_argument("--modes", default="full", help="comma-separated occlusion modes to run: full, incremental "
                                                    "[%(default)s]")
    ap.add_argument("--mode-batch-sizes", default="16,64",
                    help="fixed batch sizes for the modes other than full [%(default)s]")
    args = ap.parse_args(argv)
    if args.quick:
        args.models = "efficientnet_lite0:32" if args.models == DEFAULT_MODELS else args.models
        args.batch_sizes, args.perturbations, args.repeats = "4,16", "16", 1
    args.sizes = [int(v) for v in args.batch_sizes.split(",") if v]
    args.ppes = [int(v) for v in args.perturbations.split(",") if v]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.mode_sizes = [int(v) for v in args.mode_batch_sizes.split(",") if v]
    specs = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else 16) for m in args.models.split(",") if m]

    import captum

    import cnnviz
    os.environ["CNNVIZ_CACHE_DIR"] = "off"  # chosen sizes remembered in this process only, not in ~/.cache
    from cnnviz.engines.common import resolve_device

    dev = resolve_device(args.device)
    amp = bool(args.amp and dev.type == "cuda")
    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    load_avg = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    head = (f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"load {load_avg} at start; device {dev}{gpu}; {'float16 autocast' if amp else 'float32'}; "
            f"torch {torch.__version__}, captum {captum.__version__}, cnnviz {cnnviz.__version__}; "
            f"image {Path(args.image).name}, window {args.window}")
    print(head, flush=True)
    share = args.budget / len(specs)
    rows = []
    for name, stride in specs:  # the table so far is written after every row: a stopped run keeps it
        rows.append(bench_one(name, stride, args, dev, amp, share))
        md = table(rows)
        print("\n".join(md.splitlines()[-2:]), file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(f"{head}\n\n{md}\n", encoding="utf-8")
    print(md)
    import resource

    print(f"\npeak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; "
          f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
