"""Occlusion sensitivity (Zeiler & Fergus 2014, Sec. 4.2 and Fig. 7).

A square of a fill colour is slid over the image; for every position the network is run once and
three things are read from that one pass: the probability of the target class, the most probable
class, and the total activation of one feature map of a chosen layer. Positions are batched.
"""

from __future__ import annotations

import dataclasses

import time
import warnings

import numpy as np
import torch

from ...bare import takes_model
from ...batching import Batches, check_batch_size, model_work, pad
from ...errors import LayerError, ParameterError
from ...fold import folded
from ...geometry import params_of, stack_thumbnails
from ...layers import capture, default_feature_layer, require_maps, resolve_layer, trace_layers
from ...models import LoadedModel
from ...results import OcclusionResult, provenance
from . import incremental
from .incremental import AUTO, check_mode, check_tau
from ..common import (as_pair, autocast, batch_memory_format, model_on_device, progress_bar, refuses_channels_last,
                     resolve_device)

__api__ = ("occlusion",)  # cnnviz.<name> (a literal: see cnnviz/__init__)


def occluder_positions(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]):
    """Top-left corners (ys, xs) of every occluder placement that lies fully inside the image."""
    (h, w), (wh, ww), (sy, sx) = size, window, stride
    if wh > h or ww > w:
        raise ParameterError(f"window {wh}x{ww} is larger than the {h}x{w} model input; use a window of at most "
                             f"{min(h, w)} pixels")
    return np.arange(0, h - wh + 1, sy), np.arange(0, w - ww + 1, sx)


def occluded_batch(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, window: tuple[int, int],
                   fill: torch.Tensor) -> torch.Tensor:
    """Copies of `x` (1x3xHxW), the i-th with the window at (ys[i], xs[i]) set to `fill` (3x1x1)."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_y = (rows[None, :] >= ys[:, None]) & (rows[None, :] < ys[:, None] + window[0])
    in_x = (cols[None, :] >= xs[:, None]) & (cols[None, :] < xs[:, None] + window[1])
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, fill.to(x.device, x.dtype), x)


def _channel_totals(t: torch.Tensor) -> torch.Tensor:
    t = t.float()
    return t.flatten(2).sum(2) if t.ndim > 2 else t


def item_bytes(model, example: torch.Tensor) -> float:
    """Memory of one image's forward pass, over-estimated as all its layer outputs in float32."""
    return float(sum(4 * int(np.prod(i.shape)) for i in trace_layers(model, example) if i.shape))


@takes_model
def occlusion(lm: LoadedModel, image, *, window=32, stride=8, fill="mean", target=None, layer: str | None = None,
              channel: int | None = None, batch_size: int | None = None, device: str = "auto", amp: bool | None = None,
              fold: bool = True, progress: bool | None = None, mode: str = "full",
              tau: float | str = "auto") -> OcclusionResult:
    """Occlusion sensitivity of `lm` on `image` (a path, a PIL image, or uint8 HxWx3 pixels of the
    model's input size).

    window, stride: occluder size and step in input pixels (int or (h, w)).
    fill: "mean" (gray: the dataset mean), "black", "white", a gray level or RGB in [0, 1].
    target: class index or name; default the top-1 class of the unoccluded image.
    layer, channel: the feature map to follow; default the last convolutional block and its channel
      with the largest total activation on the unoccluded image.
    batch_size: occluded images per forward pass (default: chosen by timing the first positions at
      a few sizes, see cnnviz.batching; the choice and timings are in the result's params). Results
      do not depend on it on a CPU (every image is computed in a full oneDNN batch group).
    amp: float16 autocast on CUDA (default: on for CUDA). The model is returned as it was.
    fold: sweep with a copy of the model whose eval-mode batch norms and symmetric paddings are
      folded into its convolutions (cnnviz.fold; 1.1-1.3x faster on EfficientNet-Lite0, equal to
      ~1e-6); False runs the model as it is.
    mode: "full" runs every occluded image through the whole network; "incremental" runs the
      unoccluded image once and then recomputes, layer by layer, only the region the occluder
      changes (cnnviz.engines.occlusion.incremental; equal to "full" up to float rounding; averaged over a
      224 px grid with window 32, 2.1x fewer multiply-accumulates on AlexNet and ResNet-18, 5.3x on
      VGG-16). A model torch.fx cannot trace falls back to
      "full" with a warning; params record the mode, the multiply-accumulates per position of
      both and the fraction of each layer recomputed. "approximate" adds Krypton's projective-
      field thresholding (a changed region longer than `tau` of its map is cut to its centre) and
      adaptive drill-down (a coarse grid first, the fine grid only near the largest drops); params
      list the approximations used.
    tau: the approximate mode's threshold, in (0, 1]; 1 keeps the regions whole. "auto" (the
      default) measures it on each run: 0.75, then 0.5 if 0.75 passed, each kept while its map
      differs little from the exact one at 16 positions computed both ways, else 1 (see
      cnnviz.engines.occlusion.incremental; params["tau_auto"] gives what was tried).
    """
    mode, tau = check_mode(mode), check_tau(tau)
    if mode != "approximate" and tau != AUTO:
        raise ParameterError(f"tau {tau!r} applies to mode 'approximate' only (mode is {mode!r}); drop tau or use "
                             "mode='approximate'")
    window, stride = as_pair(window, "window"), as_pair(stride, "stride")
    batch_size = check_batch_size(batch_size)
    dev = resolve_device(device)
    use_amp = dev.type == "cuda" if amp is None else bool(amp)
    pixels, x, geo = lm.prepare(image, geometry=True)
    ys, xs = occluder_positions(tuple(x.shape[2:]), window, stride)
    fill_value = lm.preprocessing.fill_value(fill)
    target_index = None if target is None else lm.class_index(target)
    info = require_maps(default_feature_layer(lm.model, x) if layer is None else resolve_layer(lm.model, layer, x))
    if info.view is not None and mode != "full":
        raise ParameterError(f"mode {mode!r} follows layers that output CxHxW maps; {info.address!r} is read as maps "
                             f"from {'channels-last' if info.view == 'hwc' else 'token'} output: use mode full or "
                             "another layer")
    if channel is not None and not 0 <= int(channel) < info.shape[0]:
        raise LayerError(f"channel {channel} is out of range: layer {info.address!r} has channels 0..{info.shape[0] - 1}")

    start = time.perf_counter()
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    flat_y, flat_x = torch.as_tensor(gy.ravel()), torch.as_tensor(gx.ravel())
    n = flat_y.numel()
    with model_on_device(lm.model, dev) as model:
        x_dev = x.to(dev)
        sweep_model, fold_info = folded(model, x_dev, keep=[info]) if fold else (model, {"folded": False})
        plan = Plan(x=x_dev, flat_y=flat_y, flat_x=flat_x, window=window, fill=fill_value.to(dev), target=target_index,
                    channel=channel, batch_size=batch_size, dev=dev, amp=use_amp, progress=progress, mode=mode, tau=tau)
        result = _sweep(model, sweep_model, info, plan)
    probs_t, top_c, top_p, feats, base_probs, base_map, plan, layout, batches, mode_info = result
    target_index, channel = plan.target, plan.channel
    elapsed = time.perf_counter() - start

    shape = (len(ys), len(xs))
    top_class = torch.cat(top_c).numpy().astype(np.int32).reshape(shape)
    present = np.unique(np.concatenate([top_class.ravel(), [target_index]]))
    params = {
        "window": list(window), "stride": list(stride), "fill": fill if isinstance(fill, str) else list(np.atleast_1d(fill)),
        "fill_normalized": fill_value.flatten().tolist(), "target": target_index,
        "target_name": lm.class_name(target_index), "target_given": target is not None,
        "layer": info.address, "layer_type": info.type, "layer_shape": list(info.shape), "channel": channel,
        **batches.record(), **fold_info, **mode_info,
        "memory_format": str(layout).replace("torch.", ""), "amp": use_amp, "num_positions": n,
        "baseline_prob": float(base_probs[target_index]), "baseline_top_class": int(base_probs.argmax()),
        "baseline_top_name": lm.class_name(int(base_probs.argmax())),
        "baseline_activation": float(base_map[channel].sum()), "seconds": round(elapsed, 3),
        "geometry": params_of([geo]),
    }
    return OcclusionResult(
        params=params, provenance=provenance(lm.identity(), str(dev)),
        image=np.ascontiguousarray(pixels, dtype=np.uint8), original=stack_thumbnails([geo]),
        true_class_prob=torch.cat(probs_t).numpy().astype(np.float32).reshape(shape),
        top_class=top_class,
        top_class_prob=torch.cat(top_p).numpy().astype(np.float32).reshape(shape),
        feature_activation=torch.cat(feats).numpy().astype(np.float32).reshape(shape),
        feature_map=base_map[channel].cpu().numpy().astype(np.float32),
        positions_y=ys.astype(np.int32), positions_x=xs.astype(np.int32),
        class_indices=present.astype(np.int32),
        class_names=np.array([lm.class_name(int(i)) for i in present], dtype=str),
    )


def _incremental_graph(sweep_model, info, x_dev, dev, use_amp, mode, tau=1.0):
    """The traced graph for the incremental mode, or None and the reason it fell back to full. Its
    unoccluded pass tries channels_last first and so doubles as `batch_memory_format`'s check: a
    model whose forward cannot take that layout gets the plain one."""
    if mode == "full":
        return None, {"mode": "full"}
    from ...errors import ModelError
    from .incremental.sweep import IncrementalGraph

    def build(layout):
        with autocast(dev, use_amp):
            return IncrementalGraph(sweep_model, x_dev.contiguous(memory_format=layout), info.name, info.call,
                                    layout=layout, tau=(1.0 if tau == AUTO else tau) if mode == "approximate" else 1.0)

    try:
        try:
            graph = build(torch.channels_last)
        except RuntimeError as e:
            if not refuses_channels_last(e):
                raise
            graph = build(torch.contiguous_format)
    except ModelError as e:
        warnings.warn(f"occlusion mode {mode!r} unavailable, running the full mode: {e}", stacklevel=3)
        return None, {"mode": "full", "mode_requested": mode, "mode_fallback": str(e)}
    return graph, {"mode": mode}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One occlusion sweep, decided once and passed whole: the prepared image `x` (on `dev`), the
    occluder's top-left corners (`flat_y`, `flat_x`, row-major over the grid), its `window` and
    `fill` (normalized, on `dev`), the class `target` and the layer's `channel` read at each position
    (None until the unoccluded pass chooses them), the batch size (None: measured), mixed precision,
    the progress bar, the mode (full, incremental, approximate) and the approximate mode's tau."""

    x: torch.Tensor
    flat_y: torch.Tensor
    flat_x: torch.Tensor
    window: tuple[int, int]
    fill: torch.Tensor
    target: int | None
    channel: int | None
    batch_size: int | None
    dev: torch.device
    amp: bool
    progress: bool | None
    mode: str = "full"
    tau: float | str = 1.0


def _sweep(model, sweep_model, info, plan: Plan):
    """The unoccluded pass on `model`, then every occluder position through `sweep_model` (the
    folded copy, or the model itself) in batches chosen by `Batches`, each padded to full groups;
    in the incremental mode through the traced graph of `sweep_model`, recomputing only what each
    occluder changes."""
    dev, use_amp, x_dev, mode, tau = plan.dev, plan.amp, plan.x, plan.mode, plan.tau
    n = plan.flat_y.numel()
    probs_t, top_c, top_p, feats = [], [], [], []
    with torch.inference_mode():
        with capture(model, info) as fmap, autocast(dev, use_amp):
            logits = model(x_dev)
        base_probs = torch.softmax(logits.float(), dim=1)[0]
        base_map = fmap.values[0][0].float()
        target = int(base_probs.argmax()) if plan.target is None else plan.target
        channel = int(base_map.flatten(1).sum(1).argmax()) if plan.channel is None else int(plan.channel)
        plan = dataclasses.replace(plan, target=target, channel=channel)
        graph, mode_info = _incremental_graph(sweep_model, info, x_dev, dev, use_amp, mode, tau)
        if graph is not None:
            layout = graph.layout
        else:
            with autocast(dev, use_amp):
                layout = batch_memory_format(sweep_model, x_dev)
        work = model_work(sweep_model, x_dev.contiguous(memory_format=layout), macs_of=model, engine="occlusion",
                          amp=use_amp, folded=sweep_model is not model, mode=mode_info["mode"])
        if mode_info["mode"] == "approximate":
            work["tau"] = tau  # "auto" or the given value: the batch remembered for this kind of work
        if graph is not None:
            ny = int(torch.unique(plan.flat_y).numel())
            arrays, batches, extra = _graph_sweep(
                graph, plan, ny, n // ny, lambda m: batches_of(m, plan.batch_size, dev, model, x_dev, work),
                float(base_probs[target]))
            probs_t, top_c, top_p, feats = ([a] for a in arrays)
            return (probs_t, top_c, top_p, feats, base_probs, base_map, plan, layout, batches,
                    {**mode_info, **graph.record(), **extra})
        batches = batches_of(n, plan.batch_size, dev, model, x_dev, work)
        with capture(sweep_model, info, reduce=lambda t: _channel_totals(t[:, channel: channel + 1])[:, 0]) as cap, \
                progress_bar(n, "occlusion", plan.progress) as bar:
            for lo, hi in batches:
                k = hi - lo
                batch = occluded_batch(x_dev, pad(plan.flat_y[lo:hi]).to(dev), pad(plan.flat_x[lo:hi]).to(dev),
                                       plan.window, plan.fill)
                batch = batch.contiguous(memory_format=layout)
                with autocast(dev, use_amp):
                    out = sweep_model(batch)
                p = torch.softmax(out[:k].float(), dim=1)
                best_p, best_c = p.max(dim=1)
                probs_t.append(p[:, target].cpu())
                top_p.append(best_p.cpu())
                top_c.append(best_c.cpu())
                feats.append(cap.values.pop()[:k].cpu())
                bar.update(k)
    return probs_t, top_c, top_p, feats, base_probs, base_map, plan, layout, batches, mode_info


def batches_of(n, batch_size, dev, model, x_dev, work) -> Batches:
    return Batches(n, batch_size, device=dev, item_bytes=item_bytes(model, x_dev), work=work)


def _graph_sweep(graph, plan: Plan, ny, nx, make_batches, base_prob):
    """Every position through the traced graph (incremental), or, in the approximate mode, the
    coarse grid first and then the fine positions near its largest drops (drill.py), the rest
    interpolated bilinearly between the coarse positions (the top class: the nearest one's). Returns the four per-position arrays, the `Batches`
    of the first pass and what the drill-down did."""
    from .incremental import drill

    n = ny * nx
    out = [torch.empty(n), torch.empty(n, dtype=torch.long), torch.empty(n), torch.empty(n)]
    with progress_bar(n, "occlusion", plan.progress) as bar:
        if plan.mode != "approximate":
            batches = make_batches(n)
            _graph_positions(graph, batches, np.arange(n), plan, out, bar)
            extra = {}
        else:
            coarse = drill.coarse_positions(ny, nx)
            tau_info, done = {}, np.zeros(0, dtype=np.int64)
            if plan.tau == AUTO:
                done, tau_info = _calibrate_tau(graph, make_batches, coarse, plan, out, bar)
            first = coarse[~np.isin(coarse, done)]
            batches = make_batches(len(first))
            _graph_positions(graph, batches, first, plan, out, bar)
            fine = drill.fine_positions(ny, nx, coarse, base_prob - out[0][coarse].numpy())
            if len(fine):
                _graph_positions(graph, make_batches(len(fine)), fine, plan, out, bar)
            rest = np.ones(n, dtype=bool)
            rest[coarse] = rest[fine] = False
            near = torch.as_tensor(drill.nearest_coarse(ny, nx)[rest])
            fill = torch.as_tensor(rest)
            out[1][fill] = out[1][near]  # the top class: a category, from the nearest coarse position
            for a in (out[0], out[2], out[3]):
                a[fill] = torch.as_tensor(drill.interpolate(ny, nx, a[coarse].double().numpy())[rest], dtype=a.dtype)
            bar.update(int(rest.sum()))
            how = (f" (auto: the smallest of {', '.join(map(str, incremental.AUTO_TAUS))}, tried in turn until one "
                   f"fails, within relative error {incremental.TAU_TOLERANCE} on {tau_info.get('positions')} "
                   f"positions computed exactly, else 1)" if tau_info else "")
            extra = {"approximations": [f"projective-field threshold tau={graph.tau}{how}",
                                        f"adaptive drill-down: every {drill.STEP}nd position, then the fine positions "
                                        f"near the top {drill.TOP_FRACTION:.0%} of drops, the others interpolated"],
                     "tau": graph.tau, **({"tau_auto": tau_info} if tau_info else {}),
                     "drill_down": {"step": drill.STEP, "top_fraction": drill.TOP_FRACTION,
                                    "computed_positions": int(len(coarse) + len(fine)), "filled_positions":
                                    int(rest.sum())}}
    if graph.unknown:
        warnings.warn(f"incremental occlusion computed whole maps from operations it does not know: "
                      f"{'; '.join(graph.unknown[:4])} (exact, but slower)", stacklevel=4)
    return out, batches, extra


def _calibrate_tau(graph, make_batches, coarse, plan: Plan, out, bar):
    """tau="auto" (see cnnviz.engines.occlusion.incremental): CALIBRATION_POSITIONS coarse positions, spread
    over the grid, computed exactly into `out`, then at each of AUTO_TAUS (largest first) while
    within TAU_TOLERANCE of them; sets graph.tau to the last within it (1 when the first is not).
    Returns the positions computed and what was tried (the trials' work is counted apart from the
    result's multiply-accumulates per position)."""
    k = min(incremental.CALIBRATION_POSITIONS, len(coarse))
    calib = coarse[np.unique(np.linspace(0, len(coarse) - 1, k).round().astype(int))]
    graph.tau = 1.0
    given = make_batches(len(calib))
    # one batch of the 16 unless the user fixed the size: a batch-size search over 16 items would
    # spend them all on small sizes, and the searches of the passes that follow start afresh anyway
    first = given if given.fixed is not None else [(0, len(calib))]
    spans = _graph_positions(graph, first, calib, plan, out, bar)
    exact = out[0][calib].double().numpy()
    scratch = [torch.empty_like(a) for a in out]
    tried, chosen = {}, 1.0
    with graph.uncounted() as trials:
        for tau in incremental.AUTO_TAUS:  # largest first; a smaller tau cuts more, so stop at the first failure
            graph.tau = tau
            _graph_positions(graph, spans, calib, plan, scratch, None)
            tried[str(tau)] = round(incremental.relative_error(scratch[0][calib].double().numpy(), exact), 4)
            if tried[str(tau)] > incremental.TAU_TOLERANCE:
                break
            chosen = tau
    graph.tau = chosen
    return calib, {"chosen": chosen, "tried": tried, "tolerance": incremental.TAU_TOLERANCE,
                   "positions": int(len(calib)),
                   "trial_macs_per_position": int(round(trials["macs"] / max(1, len(calib))))}


def _graph_positions(graph, batches, idx, plan: Plan, out, bar):
    """The positions `idx` (flat) through the graph, in `batches`; results written into `out`.
    Returns the (lo, hi) spans run."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    ys, xs = plan.flat_y[idx], plan.flat_x[idx]
    spans = []
    for lo, hi in batches:
        spans.append((lo, hi))
        k = hi - lo
        with autocast(plan.dev, plan.amp):
            logits, total = graph.run(pad(ys[lo:hi]), pad(xs[lo:hi]), plan.window, plan.fill, k, plan.channel)
        p = torch.softmax(logits[:k].float(), dim=1)
        best_p, best_c = p.max(dim=1)
        at = idx[lo:hi]
        out[0][at], out[1][at], out[2][at] = p[:, plan.target].cpu(), best_c.cpu(), best_p.cpu()
        out[3][at] = total[:k].float().cpu()
        if bar is not None:
            bar.update(k)
    return spans
