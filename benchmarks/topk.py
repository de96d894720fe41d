"""Top-k scan throughput against the bare forward passes of the same model on the same data.

All in one process, on the same model, layer, images, batch size, workers and device:

  (a) cnnviz.engines.units.topk.scan: every unit of the layer, k images kept per unit (hook on the
      layer, per-unit spatial maximum and argmax, exact top-k merge after every batch);
  (b) the bare forward limit: the very same DataLoader (the scan's own ImageListDataset, the same
      batches, workers and memory layout) feeding model(batch) under torch.inference_mode(), and
      nothing else.

Both include the data pipeline (JPEG decoding, resize, crop, normalization), since a scan cannot
go without it; the claim is that the scan adds at most 10 % to it: images/s of (a) >= 0.9 x (b).

    python benchmarks/topk.py [--images 200] [--layer _blocks.10] [--units all] [-k 9]
                              [--batch-size 32] [--workers 0] [--repeats 3] [--device auto]

Timed runs of (a) and (b) are interleaved round by round (their order alternating), so that a slow
spell of a shared machine hits both alike; the ratio uses the medians. Memory: the process's peak
resident set size (getrusage; DataLoader workers separately), the resident size once the model is
loaded, and the size of the scan's top-k state (values, image indices, positions), which is all a
scan keeps whatever the number of images. Exit status 1 when the ratio is below --threshold.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATA = sample_images()


def rss_now_mib() -> float:
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(who=resource.RUSAGE_SELF) -> float:
    kb = resource.getrusage(who).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)


def timed(fn, dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    from cnnviz.engines.units.topk import scan

    scan_defaults = inspect.signature(scan).parameters
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0", help="any name cnnviz.load_model accepts")
    ap.add_argument("--data", default=str(DATA), help="folder of images [default: the shared ImageNet sample]")
    ap.add_argument("--images", type=int, default=200, help="use the first N images (sorted) [default: 200]")
    ap.add_argument("--layer", default="_blocks.10")
    ap.add_argument("--units", default=None, help="channels to scan, e.g. 0:64 [default: all]")
    ap.add_argument("-k", type=int, default=scan_defaults["k"].default)
    ap.add_argument("--batch-size", type=int, default=scan_defaults["batch_size"].default,
                    help="both sides [default: the scan's default]")
    ap.add_argument("--workers", type=int, default=scan_defaults["num_workers"].default,
                    help="DataLoader worker processes, both sides")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    ap.add_argument("--amp", action="store_true", help="float16 autocast on CUDA for both")
    ap.add_argument("--threshold", type=float, default=0.9, help="required scan / forward throughput ratio")
    args = ap.parse_args(argv)

    import cnnviz
    from cnnviz.engines.common import autocast, batch_memory_format, resolve_device
    from cnnviz.engines.units.topk import ImageListDataset, empty_state, list_files, parse_units
    from cnnviz.layers import resolve_layer

    data = Path(args.data)
    if not data.is_dir():
        print(f"no image folder at {data}; give one with --data", file=sys.stderr)
        return 2
    root, files, _ = list_files(data)
    files = sorted(files)[: args.images] if args.images > 0 else sorted(files)
    paths = [str(root / f) for f in files]
    n = len(paths)
    dev = resolve_device(args.device)
    amp = bool(args.amp and dev.type == "cuda")
    bs, workers = args.batch_size, args.workers

    rss_start = rss_now_mib()
    lm = cnnviz.load_model(args.model)
    model = lm.model.eval().to(dev)  # the scan then finds it on the device and leaves it there
    h, w = lm.input_size
    example = torch.zeros(1, 3, h, w, device=dev)
    info = resolve_layer(model, args.layer, example)
    units = parse_units(args.units, info.shape[0])
    with autocast(dev, amp):
        layout = batch_memory_format(model, example)
    rss_model = rss_now_mib()

    # (b) exactly the scan's data pipeline: its dataset class, batches b*B .. b*B+B-1, same workers
    dataset = ImageListDataset(Path("."), paths, lm.preprocessing)
    batches = [list(range(b, min(b + bs, n))) for b in range(0, n, bs)]

    def run_scan():
        return scan(lm, paths, args.layer, units=units, k=args.k, batch_size=bs, num_workers=workers,
                    device=str(dev), amp=amp, progress=False)

    def run_forward():
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                             pin_memory=dev.type == "cuda")
        seen = 0
        with torch.inference_mode(), autocast(dev, amp):
            for _, x, _, _ in loader:
                model(x.to(dev, non_blocking=True).contiguous(memory_format=layout))
                seen += x.shape[0]
        return seen

    gpu = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(f"model {lm.name}; layer {info.address} ({info.type}, {'x'.join(map(str, info.shape))}), "
          f"{len(units)} units, k={args.k}; {n} images from {data}; batch {bs}, {workers} workers, "
          f"{str(layout).replace('torch.', '')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; "
          f"device {dev}{gpu}; {'float16 autocast' if amp else 'float32'}; torch {torch.__version__}, "
          f"cnnviz {cnnviz.__version__}", flush=True)

    names = {"scan": "(a) topk scan", "forward": "(b) forward only"}
    fns = {"scan": run_scan, "forward": run_forward}
    result = run_scan()  # warm-up (and a check that it scanned every image)
    assert result.params["num_scanned"] == n, result.params
    assert run_forward() == n
    times = {key: [] for key in fns}
    for r in range(args.repeats):
        order = ["scan", "forward"] if r % 2 == 0 else ["forward", "scan"]
        for key in order:
            t, out = timed(fns[key], dev)
            times[key].append(t)
            if key == "scan":
                result = out

    wd = max(map(len, names.values())) + 2
    print(f"\n{'':<{wd}}{'median s':>9}{'best s':>8}{'images/s':>10}   runs (s)")
    for key, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{names[key]:<{wd}}{statistics.median(ts):>9.2f}{min(ts):>8.2f}"
              f"{n / statistics.median(ts):>10.1f}   {runs}")
    med = {key: statistics.median(ts) for key, ts in times.items()}
    ratio = med["forward"] / med["scan"]  # = scan images/s / forward images/s
    ok = ratio >= args.threshold
    print(f"\nratio scan / forward throughput = {ratio:.3f}  (required >= {args.threshold:.2f}: "
          f"{'PASS' if ok else 'FAIL'}; 1.00: nothing beyond the forward passes)")

    state = empty_state(len(units), args.k)
    state_bytes = sum(a.nbytes for a in state.values())
    result_bytes = sum(a.nbytes for a in result.arrays().values())
    print(f"memory: peak RSS {peak_rss_mib():.0f} MiB (this process; at start {rss_start:.0f} MiB, "
          f"model loaded {rss_model:.0f} MiB, now {rss_now_mib():.0f} MiB)"
          + (f"; workers' peak RSS {peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB" if workers else ""))
    print(f"top-k state: {len(units)} units x k={args.k}: {state_bytes / 1024:.1f} KiB "
          f"(values float32, image indices int64, positions 2 x int64), independent of the number of images; "
          f"result arrays incl. the file list: {result_bytes / 1024:.1f} KiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
