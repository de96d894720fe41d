"""Batch sizes chosen by measuring, for every engine that runs many inputs through the model.

The best batch depends on the model, the input size and how busy the machine is (EfficientNet-Lite0
on 2 quiet cores: batch 64 is 4x slower than 4; AlexNet: 2.2x faster; on a busy machine 16-64 won
for every model). So when the user gives no batch size, `Batches` times the first batches of the
real work at growing sizes (4, 8, 16, ... on a CPU; 16, 32, ... on a GPU; never more than the
device's free memory allows), keeps the fastest and re-checks its neighbours if the throughput
later falls clearly (a machine that got busy). Every trial batch is real work: nothing is
computed twice.

Where the search starts. A search from 4 spends ~120 of a 169-position sweep on sizes that lose on
a busy machine (AlexNet, ResNet-18 there: 64 is 2-3x faster than 4). So the start is, in order:
the size chosen last time for the same work (engine, model, input, device, threads, busy or not),
remembered in `remembered_path()` (a small JSON file; CNNVIZ_CACHE_DIR=off keeps it in memory);
16 when the machine is busy (the 1-minute load average above 1.5x the cores this process may use);
16 in the incremental occlusion modes, which also try nothing smaller (they step through the
model's graph in Python once per batch, and chose 16-64 on every model and stride benchmarked,
never 4 or 8);
16 for a weight-heavy model (more than WEIGHT_BOUND = 0.03 parameters per multiply-accumulate:
AlexNet's 0.086 and MobileNetV3-Small's 0.045, against 0.006-0.018 for ResNets, VGG and
EfficientNet-Lite; a small batch there re-reads large weight matrices for few images, and
AlexNet at 4 is 2x slower per image than at 32); else 4 (16 on a GPU). From there the search goes up while that is clearly faster and, when the
first step up loses, down, one batch per size; the final choice is remembered for next time with
the time per item of every size timed (the best seen over all calls, which a later call's
batches add to), so a later call skips the neighbours already found clearly
slower (it runs at the remembered size from its first batch) and tries those never timed (a small
job that cut the first search short finishes it over the next calls) or lost by little (a noisy
batch does not settle the choice for good). Two sizes within RETIME (10 %) of each other on their
first batch are each timed once more before the choice (on a shared machine one batch in three
or four is disturbed by 10 % or more). Going up, a size as fast as the one below (at most TIE = 2 %
slower) is kept and the climb stops there: a larger batch amortizes the per-batch costs and
holds up better when the machine gets busy (AlexNet on 2 cores: 32 and 64 within 2 %).

Exactness. On the CPU, oneDNN/MKL compute images in groups of `GROUP` = 4 along the batch axis:
an image's outputs are bitwise the same in any batch whose groups are full, but an image in a
partial group (the last 1-3 images of a batch of 5, 6, 7, or of the last, short batch) comes out
differently, by up to ~3e-6 in the logits (measured on lite0, resnet18, alexnet; AMD EPYC, AVX2).
`pad` therefore fills every batch up to a multiple of GROUP with copies of its last item (their
outputs are dropped), so every image is computed in a full group and results do not depend on the
batch size at all, chosen or given. A call with a single item runs it alone, unpadded (`padder`):
it has no other batch size to agree with, and padding would cost a whole group's time (on Lite0 a
one-image saliency call took 2.5x as long); its outputs agree with the same item's in a larger
call to float32 rounding (~2e-6 in Lite0's logits). CUDA (cuDNN picks algorithms per batch shape)
gives no such guarantee: there results agree across batch sizes to float32 (or, with autocast,
float16) rounding.

Wiring an engine (one line around its loop):

    batches = Batches(n, batch_size, device=dev, item_bytes=...)
    for lo, hi in batches:
        out = model(pad(x[lo:hi]))[: hi - lo]        # the caller's work on items lo..hi
    params.update(batches.record())
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time

import numpy as np
import torch

from .batch_store import recall, remember, remembered_path  # noqa: F401 (remembered_path: public here too)
from .errors import ParameterError

GROUP = 4  # images per oneDNN/MKL batch group on the CPU (see the module docstring)
CPU_START, CPU_LIMIT = 4, 256
GPU_START, GPU_LIMIT = 16, 1024
MEMORY_SHARE = 0.5  # of the free memory a batch may use
RECHECK_SLOWDOWN = 1.5  # re-check when the recent time per item exceeds the tuned one by this factor
RECHECK_WINDOW = 5  # batches in the running median
RECHECK_SPACING = 5  # batches at least between re-checks (and before the first)
MIN_GAIN = 0.05  # a size other than the start is kept only when it is this much faster per item
CLOSE_CALL = 0.15  # a remembered neighbour this much slower per item or less is timed again
BUSY_LOAD = 1.5  # the machine is busy when the 1-minute load average exceeds this many times its cores
CPU_BUSY_START = 16
WEIGHT_BOUND = 0.03  # parameters per multiply-accumulate above which a model is weight-heavy (see below)
CPU_WEIGHTS_START = 16
CPU_GRAPH_START = 16  # the incremental occlusion modes (a Python step per graph node and batch): the
# search starts there and goes no lower (their passes over a few dozen positions would otherwise
# halve down to 8 for one batch, which costs a 16's time for half the positions)
GRAPH_MODES = ("incremental", "approximate")
TIE = 0.02  # a larger size at most this much slower per item (after a close call is settled) is kept
TAIL = 4  # the last batch may be up to 1/TAIL larger than the chosen size, rather than leave a small tail
RETIME = 0.10  # two sizes this close per item (by one batch each) are timed once more before a choice


def check_batch_size(batch_size, what: str = "batch size") -> int | None:
    """None (choose by measuring) or a positive whole number; anything else is a one-line error."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ParameterError(f"{what} must be a positive whole number, got {batch_size!r}; "
                             "or leave it out to choose it by measuring")
    return int(batch_size)


def pad(batch: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """`batch` with copies of its last item appended up to a multiple of `group`, so that every
    item is computed in a full group (outputs then do not depend on the batch size; drop the
    extra rows of the output with `[:len(batch)]`). Set the memory layout after padding: the
    result is in the plain layout, and a different layout means different kernels and digits."""
    extra = (-batch.shape[0]) % group
    if not extra:
        return batch
    return torch.cat([batch, batch[-1:].expand(extra, *batch.shape[1:])])


def padder(items: int):
    """`pad` for a call over `items` items (images, noisy copies, positions), or nothing at all when
    there is one: a single item has no other batch to agree with (every batch size gives the same
    one batch), and padding it to a group would compute it GROUP times (on Lite0, 2.5x the time
    of a one-image call)."""
    return pad if items > 1 else _as_is


def _as_is(batch: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    return batch


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: torch.cuda.mem_get_info on CUDA, MemAvailable on a Linux CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def memory_limit(device: torch.device, item_bytes: float | None, limit: int) -> int:
    """The largest batch (at most `limit`) whose items fit in MEMORY_SHARE of the free memory."""
    free = available_memory(device)
    if not item_bytes or free is None:
        return limit
    return max(1, min(limit, int(free * MEMORY_SHARE // item_bytes)))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_load(device: torch.device) -> tuple[bool, float | None]:
    """(busy, 1-minute load average) for a CPU device; a GPU is never judged busy this way."""
    if device.type != "cpu":
        return False, None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False, None
    return load > BUSY_LOAD * usable_cores(), round(load, 2)


def multiply_accumulates(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one item's forward pass in the convolutions and linear layers,
    counted from the layers' output shapes (cnnviz.layers.trace_layers: remembered per model and
    input shape, at most one forward pass of one item). 0 when it cannot be counted."""
    from .layers import trace_layers

    try:
        infos = trace_layers(model, example[:1])
    except Exception:  # a model the tracer cannot run on one item: no count, no harm
        return 0
    macs = 0
    for info in infos:
        if info.shape is None:
            continue
        try:
            m = model.get_submodule(info.name)
        except AttributeError:
            continue
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            macs += int(np.prod(info.shape)) * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))
        elif isinstance(m, torch.nn.Linear):
            macs += int(np.prod(info.shape)) * m.in_features
    return macs


def model_work(model: torch.nn.Module, x: torch.Tensor, *, macs_of: torch.nn.Module | None = None, **more) -> dict:
    """The usual `work` description of a forward pass: the model's class and size, the input's
    shape and memory layout, the parameters per multiply-accumulate (how weight-heavy it is:
    where the search starts), plus the caller's options that change the cost. macs_of: a model
    with the same convolutions and linear layers to count them on (the user's model, whose trace
    is remembered, for a folded copy of it)."""
    layout = "channels_last" if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) else "plain"
    params = sum(p.numel() for p in model.parameters())
    macs = multiply_accumulates(macs_of if macs_of is not None else model, x) if x.ndim == 4 else 0
    return {"model": type(model).__name__, "parameters": params, "input": list(x.shape[1:]), "dtype": str(x.dtype),
            "layout": layout, "weights_per_mac": float(f"{params / macs:.4g}") if macs else None, **more}


def work_key(work: dict, device: torch.device, busy: bool) -> str:
    """A digest of what the timing depends on: the caller's description of the work (engine,
    model, input shape, ...), the device, the threads and whether the machine is busy."""
    where = {"device": device.type, "threads": torch.get_num_threads(), "cores": usable_cores(), "busy": busy,
             "torch": torch.__version__.split("+")[0]}
    if device.type == "cuda":
        where["gpu"] = torch.cuda.get_device_name(device)
    text = json.dumps({"work": work, "where": where}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Batches:
    """Slices (lo, hi) covering items 0..n-1 in order. With `batch_size` given, all of that size;
    with None, sizes chosen by timing the caller's work on each slice (the time between one slice
    and the request for the next), as the module docstring explains.

    item_bytes: memory one item needs in a forward pass (bounds the sizes tried); on CUDA it is
    measured on the first batch when not given. start, limit: smallest and largest size tried.
    work: a JSON-able description of the work (engine, model, input shape, options that change
    the cost); when given, the search starts from the size chosen last time for the same work and
    the choice is remembered (see the module docstring). None: neither.
    """

    def __init__(self, n: int, batch_size: int | None = None, *, device: torch.device | str = "cpu",
                 item_bytes: float | None = None, start: int | None = None, limit: int | None = None,
                 work: dict | None = None):
        self.n = int(n)
        self.fixed = check_batch_size(batch_size)
        self.device = torch.device(device)
        gpu = self.device.type == "cuda"
        self.start = start or (GPU_START if gpu else CPU_START)  # the smallest size tried
        self.limit = memory_limit(self.device, item_bytes, limit or (GPU_LIMIT if gpu else CPU_LIMIT))
        self.item_bytes = item_bytes
        self.key, self.load = None, None
        self.known_rates: dict[int, float] = {}  # seconds per item at each size, from the remembered search
        self.first, self.first_from = self.start, "default"
        if self.fixed is None:
            graph_mode = not gpu and (work or {}).get("mode") in GRAPH_MODES
            if graph_mode and start is None:
                self.start = CPU_GRAPH_START  # and no smaller size is tried: see CPU_GRAPH_START
            busy, self.load = machine_load(self.device)
            self.key = work_key(work, self.device, busy) if work is not None else None
            known, self.known_rates = recall(self.key) if self.key is not None else (None, {})
            if known is not None:
                self.first, self.first_from = known, "remembered"
            elif busy and not gpu:
                self.first, self.first_from = max(self.start, CPU_BUSY_START), "busy machine"
            elif not gpu and (work or {}).get("weights_per_mac") and work["weights_per_mac"] > WEIGHT_BOUND:
                self.first, self.first_from = max(self.start, CPU_WEIGHTS_START), "weight-heavy model"
            elif graph_mode:
                self.first, self.first_from = max(self.start, CPU_GRAPH_START), "incremental mode"
            self.first = min(max(self.first, self.start), self.limit)
        self.size = self.fixed or self.first
        self.times: dict[int, list[float]] = {}  # size -> seconds per item of each full batch timed
        self.trial_items = 0
        self.rechecks: list[dict] = []

    # -- timing -----------------------------------------------------------------------------------
    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _rate(self, size: int) -> float:
        """Best (least disturbed) seconds per item seen at `size`: in this call's batches and, for the
        same work on the same machine, in the earlier calls' (the remembered rates; a disturbance
        only ever slows a batch down, so the evidence of several calls adds up)."""
        known = self.known_rates.get(size)
        return min(self.times[size] + ([known] if known is not None else []))

    def _run(self, lo: int, size: int):
        """Yield one slice at `size` and time it; returns the new lo. A short tail joins it: when at
        most size // TAIL items would be left, the slice takes them too, rather than leave a small
        last batch that pays a whole batch's fixed costs for few items (the incremental occlusion
        modes step through the graph once per batch, and their passes over a few dozen positions
        would otherwise end on a batch of 1-3). Its time per item counts as `size`'s (a quarter
        more items at most: the same per-item cost but for the fixed part)."""
        hi = min(lo + size, self.n)
        if hi < self.n <= lo + min(size + size // TAIL, self.limit):
            hi = self.n
        measure_memory = self.device.type == "cuda" and self.item_bytes is None
        if measure_memory:
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        t0 = self._clock()
        yield lo, hi
        dt = self._clock() - t0
        if measure_memory:
            self.item_bytes = max(1.0, (torch.cuda.max_memory_allocated(self.device) - base) / (hi - lo))
            self.limit = memory_limit(self.device, self.item_bytes, self.limit)
        if hi - lo >= size:
            self.times.setdefault(size, []).append(dt / (hi - lo))
        return hi

    def _affordable(self, lo: int, size: int) -> bool:
        """Worth trying `size` now: within the memory limit and at least `start`, with a full batch
        of it left to time (real work either way)."""
        return self.start <= size <= self.limit and self.n - lo >= size

    def _trial(self, lo: int, size: int, batches: int = 1):
        """`batches` batches at `size` (fewer when they would not fit), judged by the fastest."""
        for _ in range(batches):
            if lo < self.n:
                lo = yield from self._run(lo, size)
        return lo

    def _better(self, size: int, than: int) -> bool:
        return size in self.times and self._rate(size) < (1 - MIN_GAIN) * self._rate(than)

    def _settle(self, lo: int, size: int, best: int):
        """When `size` and `best` came out within RETIME of each other on one batch each, time one
        more batch of each (both real work, and cheap: they are about as fast) so that a single
        disturbed batch does not decide; judged then by the faster batch of each."""
        if not (size in self.times and best in self.times and len(self.times[size]) < 2):
            return lo
        if abs(self._rate(size) / self._rate(best) - 1) > RETIME or self.n - lo < size + best:
            return lo
        lo = yield from self._run(lo, best)
        return (yield from self._run(lo, size))

    def _known_to_lose(self, size: int, than: int) -> bool:
        """The remembered search timed both and `size` was clearly slower (by CLOSE_CALL): not worth
        a batch. A close loser is timed again: one batch costs little when it is close, and one
        noisy batch must not settle the choice for good."""
        k = self.known_rates
        return size in k and than in k and k[size] > (1 + CLOSE_CALL) * k[than]

    # -- the schedule -----------------------------------------------------------------------------
    def __iter__(self):
        lo = 0
        if self.fixed is not None:
            while lo < self.n:
                hi = min(lo + self.fixed, self.n)
                yield lo, hi
                lo = hi
            return
        lo = yield from self._explore(lo)
        yield from self._steady(lo)
        if self.key is not None:
            rates = {**self.known_rates, **{s: self._rate(s) for s in self.times}}
            remember(self.key, self.size, rates)

    def _explore(self, lo: int):
        """From the first size, double while that is clearly faster (by MIN_GAIN), one batch per
        size (each size's first batch pays for setting up its shape, so all are judged alike; a close
        call gets one more batch of each, see `_settle`); when the first step up loses (or cannot
        be tried), halve while that is clearly faster. A neighbour the remembered search found slower is not tried again, so a repeated
        call runs at the remembered size from its first batch; one it never timed is (a search cut
        short by a small job finishes over later calls)."""
        best = self.first
        lo = yield from self._trial(lo, best)
        for step in (2, 0.5):
            size = int(best * step)
            while (best in self.times and self._affordable(lo, size)
                   and not self._known_to_lose(size, best)):
                lo = yield from self._trial(lo, size)
                lo = yield from self._settle(lo, size, best)
                if not self._better(size, best):
                    if step == 2 and self._rate(size) <= (1 + TIE) * self._rate(best):
                        best = size  # as fast: the larger batch, which amortizes per-batch costs
                    break
                best, size = size, int(size * step)
            if best != self.first:
                break
        self.trial_items = lo
        self.size = best
        return lo

    def _steady(self, lo: int):
        since = 0
        while lo < self.n:
            lo = yield from self._run(lo, self.size)  # the last batch takes a short tail along (see _run)
            since += 1
            recent = self.times.get(self.size, [])[-RECHECK_WINDOW:]
            if (since >= RECHECK_SPACING and len(recent) == RECHECK_WINDOW
                    and statistics.median(recent) > RECHECK_SLOWDOWN * self._rate(self.size)):
                lo = yield from self._recheck(lo, statistics.median(recent))
                since = 0

    def _recheck(self, lo: int, current: float):
        """Throughput fell: time the neighbouring sizes afresh and keep the fastest of the three."""
        fresh = {self.size: current}
        self.known_rates = {}  # the machine changed: what earlier calls saw no longer holds
        for size in (self.size // 2, self.size * 2):
            if size < self.start or not self._affordable(lo, size):
                continue
            seen = size in self.times
            self.times.pop(size, None)
            for _ in range(1 if seen else 2):
                if lo < self.n:
                    lo = yield from self._run(lo, size)
            if size in self.times:
                fresh[size] = self._rate(size)
        best = min(fresh, key=fresh.get)
        self.times[best] = [fresh[best]]  # the new reference for the next slowdown
        self.rechecks.append({"at_item": lo, "items_per_s": {str(s): round(1 / t, 1) for s, t in fresh.items()},
                              "chosen": best})
        self.size = best
        return lo

    # -- what the result records ------------------------------------------------------------------
    def record(self) -> dict:
        """Parameters for the result: the batch size used (the one chosen, when measured), whether
        it was measured, and the throughput (items/s, best batch) of every size timed."""
        if self.fixed is not None:
            return {"batch_size": self.fixed, "batch_size_auto": False}
        return {"batch_size": self.size, "batch_size_auto": True, "batch_first": self.first,
                "batch_first_from": self.first_from, "load_average": self.load,
                "batch_trials": {str(s): round(1 / min(t), 1) for s, t in sorted(self.times.items())},
                "batch_trial_items": self.trial_items, "batch_limit": self.limit,
                "batch_rechecks": self.rechecks}

    def summary(self) -> str:
        """One phrase for a CLI summary line."""
        return summary(self.record())


def summary(params: dict) -> str:
    """'batch 16 (chosen by measuring: 4: 95/s, 8: 110/s, 16: 121/s)', with where the search
    started when that was not the default ('from the remembered 16: ...'), or 'batch 16'."""
    if not params.get("batch_size_auto"):
        return f"batch {params.get('batch_size')}"
    trials = ", ".join(f"{s}: {v:.0f}/s" for s, v in params.get("batch_trials", {}).items())
    if not trials:
        return f"batch {params['batch_size']} (too few items to time: none filled a batch)"
    origin = {"remembered": ", starting from the remembered {}", "busy machine": ", starting from {} on a busy machine",
              "weight-heavy model": ", starting from {} for a weight-heavy model",
              "incremental mode": ", starting from {} in an incremental mode"}
    origin = origin.get(params.get("batch_first_from"), "").format(params.get("batch_first"))
    return f"batch {params['batch_size']} (chosen by measuring{origin}: {trials})"
