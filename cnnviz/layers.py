"""Layer addressing and activation capture.

A layer is named by its module path (`features.10`, `layer4.1.relu`). A module that runs several
times in one forward pass (EfficientNet-Lite's shared ReLU6, ResNet's `relu` used twice per block)
is addressed per call as `name@k`, k counting from 0 in execution order. Every hook is removed when
the `with` block ends, also on error.
"""

from __future__ import annotations

import contextlib
import math
import difflib
import weakref
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import LayerError


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer output: `address` is `name` or `name@call` for reused modules."""

    address: str
    name: str
    call: int | None
    type: str
    shape: tuple[int, ...] | None  # output shape for one input image, without the batch axis
    order: int  # position in execution order
    is_conv: bool = False
    # How the output is read as C x H x W maps when it is laid out otherwise (see `require_maps`):
    # None (as it is), "hwc" (channels last: N x H x W x C) or "tokens" (N x L x C: `prefix` tokens,
    # e.g. a class token, then an H x W grid of patches, row by row). `shape` is then the maps' shape.
    view: str | None = None
    prefix: int = 0


def _tensor_of(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block and restore each module's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    if any(f for _, f in flags):  # a model already in eval mode (the usual case) is not walked again
        model.eval()
    try:
        yield model
    finally:
        for m, f in flags:
            if m.training != f:  # setting an attribute of a module is slow; most are as they were
                m.training = f


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Run `example` (1x3xHxW) once and list every module call in execution order. The listing is
    remembered per model, input shape and set of modules, so engines that address layers on
    every call do not pay an extra forward pass each time."""
    key = (tuple(example.shape[1:]), example.dtype, tuple(id(m) for m in model.modules()))
    cached = _TRACES.get(model, {}).get(key)
    if cached is not None:
        return list(cached)
    infos = _trace(model, example)
    _TRACES.setdefault(model, {})[key] = tuple(infos)
    return infos


def module_calls(model: nn.Module, run: Callable[[], object],
                 extra: Callable[[torch.Tensor], object] | None = None) -> list[tuple]:
    """Call `run()` (which runs the model) with a hook on every submodule, and list each module
    call in execution order as (address, name, call, module, output shape, extra(output)).
    A module called several times is addressed `name@k` with call = k; otherwise call is None.
    Hooks are removed afterwards, also on error."""
    records: list[tuple] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, inp, out, _name=name):
            t = _tensor_of(out)
            records.append((_name, mod, tuple(t.shape[1:]) if t is not None else None,
                            extra(t) if extra is not None and t is not None else None))

        handles.append(module.register_forward_hook(hook))
    with _hooks(handles):
        run()
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec[0]] = counts.get(rec[0], 0) + 1
    seen: dict[str, int] = {}
    calls = []
    for name, mod, shape, value in records:
        k = seen.get(name, 0)
        seen[name] = k + 1
        reused = counts[name] > 1
        calls.append((f"{name}@{k}" if reused else name, name, k if reused else None, mod, shape, value))
    return calls


def _trace(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    def run():
        with eval_mode(model), torch.no_grad():
            model(example)

    return [LayerInfo(address, name, call, type(mod).__name__, shape, order, isinstance(mod, nn.Conv2d))
            for order, (address, name, call, mod, shape, _) in enumerate(module_calls(model, run))]


def parse_address(address: str) -> tuple[str, int | None]:
    name, sep, call = address.strip().partition("@")
    if not sep:
        return name, None
    if not call.isdigit():
        raise LayerError(f"bad layer address {address!r}: the part after @ is the call number, e.g. {name}@0")
    return name, int(call)


def layer_address(model: nn.Module, layer):
    """A layer as cnnviz names it: a name as it is, a module object of `model` (grad-cam's
    `model.layer4[-1]`) as its name in `model.named_modules()`, a list or tuple of either as a list
    of names. A module that is not part of the model is a one-line LayerError."""
    if isinstance(layer, (list, tuple)):
        return [layer_address(model, one) for one in layer]
    if not isinstance(layer, nn.Module):
        return layer
    if layer is model:
        raise LayerError(f"the layer given is the whole model ({type(model).__name__}); give one of its modules "
                         "(e.g. model.layer4[-1]) or a layer name")
    for name, module in model.named_modules():
        if module is layer and name:
            return name
    raise LayerError(f"the layer given, a {type(layer).__name__} module, is not part of the model; give a module "
                     "of the model itself (e.g. model.layer4[-1]) or a layer name (cnnviz.trace_layers lists them)")


def resolve_layer(model: nn.Module, address: str, example: torch.Tensor) -> LayerInfo:
    """Check `address` (a name, or a module object of the model) against the model's modules and
    calls; errors list the closest names."""
    name, call = parse_address(layer_address(model, address))
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
        top = [m for m in modules if "." not in m][:8]  # nothing similar: show the top-level layers
        hint = f"; closest: {', '.join(close)}" if close else (f"; top-level layers: {', '.join(top)}" if top else "")
        raise LayerError(f"unknown layer {name!r}{hint} (run `cnnviz layers --model ...` to list them)")
    infos = [i for i in trace_layers(model, example) if i.name == name]
    if not infos:
        raise LayerError(f"layer {name!r} exists but is not called in the forward pass; choose another")
    if call is None:
        if len(infos) > 1:
            opts = ", ".join(f"{i.address} {_shape_str(i.shape)}" for i in infos[:6])
            raise LayerError(f"layer {name!r} runs {len(infos)} times per forward; say which call: {opts}")
        info = infos[0]
    else:
        if call >= len(infos) or (len(infos) == 1 and call != 0):
            raise LayerError(f"layer {name!r} runs {len(infos)} time(s) per forward; call @{call} does not exist")
        info = infos[call]
    if info.shape is None:
        raise LayerError(f"layer {address!r} does not output a tensor; choose another")
    return info


MAX_PREFIX_TOKENS = 8  # class and distillation tokens, registers: tokens before the patch grid


def map_view(shape: tuple[int, ...] | None) -> tuple[str, tuple[int, int, int], int] | None:
    """How an output of per-image `shape` that is not C x H x W reads as maps: ("hwc", (C, H, W), 0)
    for a channels-last block (H == W < C, the layout of Swin-style stages and NHWC blocks on the
    square inputs cnnviz uses; a C x H x W map never has C == H < W there), ("tokens", (C, h, w), p)
    for a sequence of p prefix tokens followed by a square grid of h x w patch tokens (a vision
    transformer's or a hybrid's blocks); None otherwise."""
    if shape is None:
        return None
    if len(shape) == 3 and shape[0] == shape[1] < shape[2]:
        return "hwc", (shape[2], shape[0], shape[1]), 0
    if len(shape) == 2:
        length, channels = shape
        for prefix in range(0, min(MAX_PREFIX_TOKENS, length - 4) + 1):
            side = int(round((length - prefix) ** 0.5))
            if side >= 2 and side * side == length - prefix:
                return "tokens", (channels, side, side), prefix
    return None


def to_maps(t: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """The layer's output `t` (batched, as the module returned it) as N x C x H x W maps (a view
    where the layout allows; differentiable either way)."""
    if info.view is None:
        return t
    c, h, w = info.shape
    if info.view == "hwc":
        return t.permute(0, 3, 1, 2)
    return t[:, info.prefix:].reshape(t.shape[0], h, w, c).permute(0, 3, 1, 2)


def from_maps(maps: torch.Tensor, t: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """The inverse of `to_maps`: `maps` back in the layer's own layout, with the prefix tokens of
    `t` (the original output) in front."""
    if info.view is None:
        return maps
    n, c, h, w = maps.shape
    if info.view == "hwc":
        return maps.permute(0, 2, 3, 1)
    return torch.cat([t[:, :info.prefix], maps.permute(0, 2, 3, 1).reshape(n, h * w, c)], dim=1)


def require_maps(info: LayerInfo, *, vector_ok: bool = False) -> LayerInfo:
    """`info` when its output is CxHxW feature maps (or, with `vector_ok`, a vector of units); a
    layer laid out otherwise (channels last, or patch tokens: see `map_view`) comes back with its
    maps' shape and the `view` that `capture` and `record` apply, so every engine that asks here
    addresses it as maps; anything else is a one-line LayerError naming the layer, its output and
    the fix. The one place that rule is checked."""
    dims = (1, 3) if vector_ok else (3,)
    if info.view is None and (info.shape is None or len(info.shape) != 3 or map_view(info.shape) is not None):
        found = map_view(info.shape)
        if found is not None:
            view, shape, prefix = found
            return dataclasses.replace(info, shape=shape, view=view, prefix=prefix)
    if info.shape is None or len(info.shape) not in dims:
        want = "CxHxW feature maps or a vector of units" if vector_ok else "CxHxW feature maps"
        raise LayerError(f"layer {info.address!r} outputs {_shape_str(info.shape) if info.shape else 'no tensor'}, "
                         f"not {want}; choose a convolutional layer (see `cnnviz layers`)")
    return info


def _shape_str(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def default_feature_layer(model: nn.Module, example: torch.Tensor) -> LayerInfo:
    """The output of the last convolutional block: the last Conv2d in execution order, followed
    through the shape-preserving modules after it (normalization, activation).

    Refused (LayerError) when that map's spatial layout does not survive to the output, see
    `flattened_after`: in a vision transformer the only convolution is the patch embedding, whose
    map is flattened into tokens that attention mixes; its Grad-CAM map is meaningless (all zero on
    ViT-B/16), so no default is guessed there."""
    chosen = _last_conv_block(model, example)
    lost = flattened_after(model, example, chosen)
    if lost is not None:
        raise LayerError(
            f"{type(model).__name__} has no convolutional feature map whose spatial layout survives to the output: "
            f"the default layer would be {chosen.address!r} ({_shape_str(chosen.shape)}), but by {lost.address!r} "
            f"it has become a sequence of tokens ({_shape_str(lost.shape)}) that no map can show; name a layer with --layer (see "
            "`cnnviz layers`) or use a convolutional network")
    return chosen


def flattened_after(model: nn.Module, example: torch.Tensor, layer: LayerInfo) -> LayerInfo | None:
    """The first layer after `layer` (a C x H x W map) whose output is a sequence of tokens (L x D,
    two axes per image: the map flattened, as a vision transformer's patch embedding is), met before
    the network pools the map to a vector; None when the map's layout reaches the pooling (or the
    output) intact, as in a CNN."""
    if layer.shape is None or len(layer.shape) != 3:
        return None
    infos = trace_layers(model, example)
    for info in infos[layer.order + 1:]:
        if info.shape is None or info.shape == layer.shape:
            continue
        if len(info.shape) == 1 or (len(info.shape) == 3 and info.shape[1] * info.shape[2] == 1):
            return None  # pooled (or flattened into one vector): the map reached the classifier as a map
        if len(info.shape) == 2:
            return info
    return None


def _last_conv_block(model: nn.Module, example: torch.Tensor) -> LayerInfo:
    infos = trace_layers(model, example)
    last_conv = None
    for i, info in enumerate(infos):
        if info.is_conv:
            last_conv = i
    if last_conv is None:
        spatial = [i for i in infos if i.shape is not None and len(i.shape) == 3]
        if not spatial:
            raise LayerError("the model has no layer with a spatial (CxHxW) output; name one with --layer")
        return spatial[-1]
    # the last map at the last convolution's resolution before the network pools or flattens it:
    # the block (or stage) output, past its normalization and activation, and past the channel
    # concatenation of an Inception or DenseNet block (more channels, same H x W). A block working
    # channels last in between (ConvNeXt: norm and MLP on N x H x W x C) has as many values or more
    # and does not end the search; pooling (fewer values) or a vector or token sequence does.
    chosen = infos[last_conv]
    hw = chosen.shape[1:]
    for info in infos[last_conv + 1:]:
        if info.shape is None:
            continue
        if len(info.shape) != 3:
            break
        if info.shape[1:] == hw:
            chosen = info
        elif math.prod(info.shape) < math.prod(chosen.shape):
            break
    return chosen


class Capture:
    """Collects what a hook saw during forward passes: `values` holds one entry per forward."""

    def __init__(self) -> None:
        self.values: list = []


@contextlib.contextmanager
def capture(model: nn.Module, layer: LayerInfo,
            reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Capture]:
    """Record the output of `layer` (a LayerInfo from `resolve_layer`) at each forward pass.

    `reduce` maps the output to what is kept (called inside the hook, before any later in-place
    operation can change the tensor); by default a detached copy is kept.
    """
    module = dict(model.named_modules())[layer.name]
    want = layer.call or 0
    cap = Capture()
    state = {"calls": 0}

    def reset(mod, inp):
        state["calls"] = 0

    def hook(mod, inp, out):
        k = state["calls"]
        state["calls"] = k + 1
        if k == want:
            t = to_maps(_tensor_of(out), layer)
            cap.values.append(reduce(t) if reduce is not None else t.detach().clone())

    handles = [model.register_forward_pre_hook(reset), module.register_forward_hook(hook)]
    with _hooks(handles):
        yield cap


class StopForward(Exception):
    """Raised inside a forward pass by `record(..., stop=True)` once every recorded layer has run;
    the caller catches it (nothing above those layers is computed)."""


@contextlib.contextmanager
def record(model: nn.Module, layers: list[LayerInfo], stop: bool = False) -> Iterator[dict]:
    """Record the outputs of `layers` (LayerInfos from `resolve_layer`), with their autograd graph,
    into the yielded dict (address -> tensor), anew at each forward pass. The network continues with
    a copy of each recorded output, so that an in-place operation after the layer cannot change what
    was recorded. With `stop`, the forward pass raises `StopForward` once the last of them has run."""
    modules = dict(model.named_modules())
    store: dict = {}
    calls: dict = {}
    wanted: dict = {}
    for info in layers:
        wanted.setdefault(info.name, {})[info.call or 0] = info

    def reset(mod, inp):
        calls.clear()
        store.clear()

    def make_hook(name):
        def hook(mod, inp, out):
            k = calls.get(name, 0)
            calls[name] = k + 1
            info = wanted[name].get(k)
            if info is None:
                return None
            if info.view is not None:  # recorded as maps; the network goes on from them (gradients reach them)
                t = _tensor_of(out)
                maps = to_maps(t, info).clone()
                store[info.address] = maps
                if stop and len(store) == len(layers):
                    raise StopForward
                back = from_maps(maps, t, info)
                return back if isinstance(out, torch.Tensor) else (back, *out[1:])
            store[info.address] = _tensor_of(out)
            if stop and len(store) == len(layers):
                raise StopForward
            return out.clone() if isinstance(out, torch.Tensor) else None
        return hook

    handles = [model.register_forward_pre_hook(reset)]
    with _hooks(handles):
        for name in wanted:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield store


def format_layers(infos: list[LayerInfo]) -> str:
    """A table of layers: address, type, output shape."""
    w = max([len(i.address) for i in infos] + [5])
    t = max([len(i.type) for i in infos] + [4])
    lines = [f"{'layer':<{w}}  {'type':<{t}}  output"]
    for i in infos:
        lines.append(f"{i.address:<{w}}  {i.type:<{t}}  {_shape_str(i.shape)}")
    return "\n".join(lines)


# layer names for people: cnnviz.names (no torch needed), importable from here too
from .names import describe_layer, is_activation_type, layer_name, readable_name  # noqa: E402,F401
