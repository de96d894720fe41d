"""Theoretical receptive fields: for every layer output, per axis (height, width), the RF size r,
the effective stride S and the effective padding P, such that unit i covers input rows
i*S - P ... i*S - P + r - 1 (the same for columns).

They are found by running the real forward pass once (no weights needed) under a
`TorchFunctionMode` that carries (r, S, P) per axis alongside every tensor derived from the input,
through the operations themselves, not the module types: functional padding and pooling, dilation,
asymmetric `F.pad`, ResNet additions and Inception concatenations (the union of the branches'
regions) are all seen. An operation that would mix spatial positions in a way not modelled here
raises an error naming it, rather than giving a wrong answer.

A tensor that broadcasts over space (an SE block's 1x1 channel scale) contributes its region as a
constant to every unit; the union is then reported as the smallest region of the form above that
covers it for unit 0 (exact there, a superset further right/down).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ...bare import takes_model
from ...errors import ModelError
from ...layers import eval_mode, module_calls
from ... import schema as S
from ...results import Result, provenance

__api__ = ("receptive_field", "receptive_fields")  # cnnviz.<name> (a literal: see cnnviz/__init__)


@dataclass(frozen=True)
class Axis:
    """One axis of a receptive field: unit i covers input [i*stride - pad, i*stride - pad + size - 1]."""

    size: int
    stride: int
    pad: int

    def interval(self, i: int) -> tuple[int, int]:
        lo = i * self.stride - self.pad
        return lo, lo + self.size - 1


IDENTITY = Axis(1, 1, 0)


@dataclass(frozen=True)
class _Meta:
    axes: tuple[Axis, Axis]  # (height, width)
    dims: tuple[int, int]  # negative indices of the height and width dims in the tensor

    def with_axes(self, h: Axis, w: Axis) -> "_Meta":
        return _Meta((h, w), self.dims)


@dataclass(frozen=True)
class RFInfo:
    """The receptive field of one layer output (`rf`, `stride`, `padding`: (height, width)), or
    None for the three when the output has no spatial axes (a classifier's Linear)."""

    address: str
    name: str
    call: int | None
    type: str
    shape: tuple[int, ...] | None
    rf: tuple[int, int] | None
    stride: tuple[int, int] | None
    padding: tuple[int, int] | None

    def interval(self, i: int, j: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Input rows (first, last) and columns (first, last) that unit (i, j) sees."""
        if self.rf is None:
            raise ModelError(f"layer {self.address!r} has no spatial output, hence no receptive field")
        return (Axis(self.rf[0], self.stride[0], self.padding[0]).interval(i),
                Axis(self.rf[1], self.stride[1], self.padding[1]).interval(j))


class UnsupportedOp(ModelError):
    """An operation on a spatial tensor whose receptive-field geometry is not modelled."""


# Ops that act on every spatial position separately (or only on non-spatial dims).
_POINTWISE = {
    "relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "softplus", "prelu", "rrelu", "threshold", "logsigmoid", "softsign", "tanhshrink",
    "batch_norm", "instance_norm", "group_norm", "local_response_norm", "dropout", "dropout2d", "dropout1d",
    "alpha_dropout", "feature_alpha_dropout", "dropout3d",
    "add", "iadd", "radd", "sub", "isub", "rsub", "mul", "imul", "rmul", "div", "idiv", "truediv", "itruediv",
    "rtruediv", "floordiv", "pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "clamp", "clamp_min", "clamp_max",
    "clip", "maximum", "minimum", "where", "addcmul", "addcdiv", "lerp", "erf", "square", "reciprocal",
    "clone", "contiguous", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
    "requires_grad", "copy", "sign", "softmax", "log_softmax", "normalize", "channel_shuffle", "native_channel_shuffle",
    "stochastic_depth", "masked_fill",
}
# Ops whose result does not depend on the values (so carries no receptive field).
_NO_DEPENDENCE = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
                  "new_full", "new_tensor", "size", "dim", "numel", "shape"}
_CONV = {"conv2d"}
_MAXPOOL = {"max_pool2d", "max_pool2d_with_indices"}
_AVGPOOL = {"avg_pool2d"}
_ADAPTIVE = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_CHANNEL_DIM_OPS = {"cat", "concat", "concatenate", "chunk", "split", "split_with_sizes", "narrow", "unbind",
                    "tensor_split"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_PERMUTE = {"permute", "transpose", "movedim", "swapaxes", "swapdims"}


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.strip("_")


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) in (1, 2) else (int(v[0]), int(v[1]))
    return int(v), int(v)


def _compose(ax: Axis, k: int, s: int, p: int, d: int = 1) -> Axis:
    return Axis(ax.size + (k - 1) * d * ax.stride, ax.stride * s, ax.pad + p * ax.stride)


class _RFMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[int, tuple[torch.Tensor, _Meta]] = {}

    def get(self, t) -> _Meta | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.meta.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def set(self, t: torch.Tensor, m: _Meta | None) -> None:
        if m is None:
            self.meta.pop(id(t), None)
        else:
            self.meta[id(t)] = (t, m)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        inputs = [(t, self.get(t)) for t in leaves if isinstance(t, torch.Tensor)]
        inputs = [(t, m) for t, m in inputs if m is not None]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not inputs or not outs:
            return out
        name = _op_name(func)
        for o in outs:
            if o.is_floating_point() or o.is_complex():
                self.set(o, self._rule(name, args, kwargs, inputs, o))
            else:
                self.set(o, None)  # indices of max pooling, masks
        return out

    # -- the rules -----------------------------------------------------------------------------
    def _rule(self, name, args, kwargs, inputs, out) -> _Meta | None:
        x, m = inputs[0]
        if name in _NO_DEPENDENCE:
            return None
        if name in _CONV:
            return self._conv(args, kwargs, x, m)
        if name in _MAXPOOL or name in _AVGPOOL or name == "lp_pool2d":
            return self._pool(name, args, kwargs, m)
        if name in _ADAPTIVE:
            return self._adaptive(x, out, m)
        if name == "pad":
            return self._pad(args, kwargs, x, m)
        if name == "linear":
            return m if x.ndim >= 3 and -1 not in m.dims else None
        if name in _POINTWISE or name.rstrip("_") in _POINTWISE:
            return self._union(name, inputs, out)
        if name in _CHANNEL_DIM_OPS:
            dim = _arg(args, kwargs, 1 if name in ("cat", "concat", "concatenate") else
                       (1 if name == "unbind" else 2), "dim", 0)
            ref = inputs[0][0]
            nd = ref.ndim
            if isinstance(dim, int) and (dim % nd) - nd in m.dims:
                raise UnsupportedOp(f"receptive field: {name} along a spatial axis (dim {dim}) is not supported")
            if out.ndim != nd:
                return None
            return self._union(name, inputs, out)
        if name in _RESHAPE:
            return self._reshape(x, out, m)
        if name in _PERMUTE:
            return self._permute(name, args, kwargs, x, out, m)
        if name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"):
            return self._reduce(name, args, kwargs, x, out, m)
        if name in ("getitem",):
            return self._getitem(args, x, out, m)
        if name in ("layer_norm",):
            shape = _arg(args, kwargs, 1, "normalized_shape")
            n = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            if any(d >= -n for d in m.dims):
                raise UnsupportedOp("receptive field: layer_norm over spatial axes is not supported")
            return m
        if out.ndim <= 2:
            return None  # a vector per image: no spatial axes left
        raise UnsupportedOp(f"receptive field: operation {name!r} on a spatial tensor is not supported "
                            f"(input shape {tuple(x.shape)}, output {tuple(out.shape)})")

    @staticmethod
    def _spatial(t: torch.Tensor, m: _Meta) -> tuple[int, int]:
        return t.shape[m.dims[0]], t.shape[m.dims[1]]

    def _conv(self, args, kwargs, x, m):
        weight = _arg(args, kwargs, 1, "weight")
        k = tuple(weight.shape[-2:])
        s = _pair(_arg(args, kwargs, 3, "stride", 1))
        d = _pair(_arg(args, kwargs, 5, "dilation", 1))
        pad = _arg(args, kwargs, 4, "padding", 0)
        if isinstance(pad, str):
            if pad == "valid":
                p = (0, 0)
            else:  # 'same': PyTorch pads total d*(k-1), the smaller half before
                p = tuple((d[a] * (k[a] - 1)) // 2 for a in range(2))
        else:
            p = _pair(pad)
        if m.dims != (-2, -1):
            raise UnsupportedOp("receptive field: conv2d on a tensor whose spatial axes are not the last two")
        return m.with_axes(*(_compose(m.axes[a], k[a], s[a], p[a], d[a]) for a in range(2)))

    def _pool(self, name, args, kwargs, m):
        if name == "lp_pool2d":
            k = _pair(_arg(args, kwargs, 2, "kernel_size"))
            s = _pair(_arg(args, kwargs, 3, "stride"), k)
            p, d = (0, 0), (1, 1)
        else:
            k = _pair(_arg(args, kwargs, 1, "kernel_size"))
            s = _pair(_arg(args, kwargs, 2, "stride"), k)
            p = _pair(_arg(args, kwargs, 3, "padding", 0))
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name in _MAXPOOL else (1, 1)
        return m.with_axes(*(_compose(m.axes[a], k[a], s[a], p[a], d[a]) for a in range(2)))

    def _adaptive(self, x, out, m):
        axes = []
        for a in range(2):
            n, o = x.shape[m.dims[a]], out.shape[m.dims[a]]
            if n % o == 0:
                k = n // o
                axes.append(_compose(m.axes[a], k, k, 0))
            elif o == 1:
                axes.append(_compose(m.axes[a], n, n, 0))
            else:
                # windows [floor(i*n/o), ceil((i+1)*n/o)) of varying size and step: not of the form i*S - P
                raise UnsupportedOp(f"receptive field: adaptive pooling from {n} to {o} positions has windows of "
                                    "unequal size; choose an input size for which it divides evenly")
        return m.with_axes(*axes)

    def _pad(self, args, kwargs, x, m):
        pad = list(_arg(args, kwargs, 1, "pad"))
        # pad = (before, after) for dim -1, then dim -2, ...; only 'before' moves the index origin
        shift = {-1 - i: int(pad[2 * i]) for i in range(len(pad) // 2)}
        axes = [Axis(ax.size, ax.stride, ax.pad + shift.get(m.dims[a], 0) * ax.stride) for a, ax in enumerate(m.axes)]
        return m.with_axes(*axes)

    def _union(self, name, inputs, out) -> _Meta:
        dims = inputs[0][1].dims
        nd_out = out.ndim
        shape = (out.shape[dims[0]], out.shape[dims[1]]) if nd_out >= 2 else None
        axes = []
        for a in range(2):
            strides = set()
            pad = None
            reach = None  # max(size - pad)
            for t, m in inputs:
                ax = m.axes[a]
                n = t.shape[m.dims[a]] if t.ndim >= -m.dims[a] else 1
                if shape is not None and n == shape[a]:
                    strides.add(ax.stride)
                elif n != 1:
                    raise UnsupportedOp(f"receptive field: {name} of spatial tensors of sizes {n} and {shape[a]}")
                pad = ax.pad if pad is None else max(pad, ax.pad)
                reach = ax.size - ax.pad if reach is None else max(reach, ax.size - ax.pad)
            if len(strides) > 1 and not (shape is not None and shape[a] == 1):
                raise UnsupportedOp(f"receptive field: {name} of tensors with different effective strides "
                                    f"{sorted(strides)} along one axis")
            stride = max(strides) if strides else max(m.axes[a].stride for _, m in inputs)
            axes.append(Axis(pad + reach, stride, pad))
        return _Meta((axes[0], axes[1]), dims)

    def _reshape(self, x, out, m):
        nd = x.ndim
        hd, wd = m.dims
        if (hd, wd) == (-2, -1) and out.ndim >= 3 and tuple(out.shape[-2:]) == tuple(x.shape[-2:]) \
                and (out.ndim != nd or tuple(out.shape) == tuple(x.shape) or out.shape[0] == x.shape[0]):
            return _Meta(m.axes, (-2, -1))
        if out.ndim <= 2 or out.numel() == 0:
            return None
        if x.shape[hd] == 1 and x.shape[wd] == 1:
            return None  # a 1x1 map reshaped: treated as a vector
        raise UnsupportedOp(f"receptive field: reshape of a spatial tensor {tuple(x.shape)} to {tuple(out.shape)} "
                            "that moves its spatial axes is not supported")

    def _permute(self, name, args, kwargs, x, out, m):
        nd = x.ndim
        if name == "permute":
            order = args[1:] if len(args) > 2 else _arg(args, kwargs, 1, "dims")
            order = [int(o) % nd for o in (order if isinstance(order, (list, tuple)) else [order])]
        else:
            d0 = int(_arg(args, kwargs, 1, "dim0" if name != "movedim" else "source")) % nd
            d1 = int(_arg(args, kwargs, 2, "dim1" if name != "movedim" else "destination")) % nd
            order = list(range(nd))
            if name == "movedim":
                order.pop(d0)
                order.insert(d1, d0)
            else:
                order[d0], order[d1] = order[d1], order[d0]
        pos = {src: dst for dst, src in enumerate(order)}
        dims = tuple(pos[d % nd] - nd for d in m.dims)
        return _Meta(m.axes, dims)

    def _reduce(self, name, args, kwargs, x, out, m):
        dim = _arg(args, kwargs, 1, "dim")
        nd = x.ndim
        if dim is None or (name in ("max", "min") and not isinstance(dim, (int, list, tuple))):
            return None  # a single number
        dims = {d % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        spatial = {d % nd for d in m.dims}
        keep = bool(_arg(args, kwargs, 2, "keepdim", False))
        if not dims & spatial:
            if keep:
                return m
            hd = -sum(1 for d in range(m.dims[0] % nd, nd) if d not in dims)
            wd = -sum(1 for d in range(m.dims[1] % nd, nd) if d not in dims)
            return _Meta(m.axes, (hd, wd))
        if dims >= spatial:
            # global pooling: every output sees all of it
            axes = [_compose(m.axes[a], x.shape[m.dims[a]], x.shape[m.dims[a]], 0) for a in range(2)]
            return _Meta((axes[0], axes[1]), m.dims) if keep else None
        raise UnsupportedOp(f"receptive field: {name} over one spatial axis only is not supported")

    def _getitem(self, args, x, out, m):
        key = args[1] if len(args) > 1 else None
        key = key if isinstance(key, tuple) else (key,)
        if Ellipsis not in key and len(key) <= x.ndim - 2 and m.dims == (-2, -1) and out.ndim >= 2 \
                and tuple(out.shape[-2:]) == tuple(x.shape[-2:]):
            return m
        if out.ndim <= 2 and (Ellipsis not in key and len(key) <= x.ndim - 2):
            return None
        raise UnsupportedOp("receptive field: indexing a spatial tensor along its spatial axes is not supported")


def receptive_fields(model: nn.Module, input_size: tuple[int, int] = (224, 224),
                     channels: int = 3) -> list[RFInfo]:
    """The receptive field of every module output of `model`, in execution order (reused modules
    once per call, addressed `name@k` as in `cnnviz.layers.trace_layers`). Runs one forward pass
    on zeros of `1 x channels x H x W`; the weights are never read for the result."""
    mode = _RFMode()
    h, w = input_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, channels, h, w, device=device, dtype=dtype)
    mode.set(x, _Meta((IDENTITY, IDENTITY), (-2, -1)))

    def run():
        with eval_mode(model), torch.no_grad(), mode:
            model(x)

    infos = []
    for address, name, call, mod, shape, meta in module_calls(model, run, extra=mode.get):
        if meta is None:
            rf = stride = pad = None
        else:
            rf = (meta.axes[0].size, meta.axes[1].size)
            stride = (meta.axes[0].stride, meta.axes[1].stride)
            pad = (meta.axes[0].pad, meta.axes[1].pad)
        infos.append(RFInfo(address, name, call, type(mod).__name__, shape, rf, stride, pad))
    return infos


def format_table(infos: list[RFInfo]) -> str:
    """One row per layer: address, type, RF (h x w), stride, padding."""
    def pair(p):
        return "-" if p is None else (f"{p[0]}" if p[0] == p[1] else f"{p[0]}x{p[1]}")

    def rfs(p):
        return "-" if p is None else f"{p[0]}x{p[1]}"

    w = max([len(i.address) for i in infos] + [5])
    t = max([len(i.type) for i in infos] + [4])
    lines = [f"{'layer':<{w}}  {'type':<{t}}  {'rf (h x w)':>11}  {'stride':>7}  {'padding':>7}"]
    for i in infos:
        lines.append(f"{i.address:<{w}}  {i.type:<{t}}  {rfs(i.rf):>11}  {pair(i.stride):>7}  {pair(i.padding):>7}")
    return "\n".join(lines)


@dataclasses.dataclass
class ReceptiveFieldResult(Result):
    """Theoretical receptive fields of every layer of a model.

    layers, types: str N, layer addresses and module types in execution order.
    rf, stride, padding: int32 N x 2 (height, width); -1 where the layer has no spatial output.
    """

    kind: ClassVar[str] = "receptive_field"
    renderer: ClassVar = "cnnviz.render.receptive_field.sizes:figure"
    array_schema: ClassVar[dict] = {
        "layers": S.Arr("U", ("N",)), "types": S.Arr("U", ("N",)), "rf": S.Arr("iu", ("N", 2)),
        "stride": S.Arr("iu", ("N", 2)), "padding": S.Arr("iu", ("N", 2))}
    layers: np.ndarray = None
    types: np.ndarray = None
    rf: np.ndarray = None
    stride: np.ndarray = None
    padding: np.ndarray = None

    def infos(self) -> list[RFInfo]:
        out = []
        for k, (a, t) in enumerate(zip(self.layers, self.types)):
            spatial = self.rf[k, 0] >= 0
            name, _, call = str(a).partition("@")
            out.append(RFInfo(str(a), name, int(call) if call else None, str(t), None,
                              tuple(int(v) for v in self.rf[k]) if spatial else None,
                              tuple(int(v) for v in self.stride[k]) if spatial else None,
                              tuple(int(v) for v in self.padding[k]) if spatial else None))
        return out


@takes_model
def receptive_field(lm, input_size: tuple[int, int] | None = None) -> ReceptiveFieldResult:
    """Receptive fields of a LoadedModel (`cnnviz.models.load_model(..., weights='none')` is enough)."""
    size = tuple(input_size) if input_size is not None else tuple(lm.input_size)
    infos = receptive_fields(lm.model, size)

    def arr(get):
        return np.array([get(i) if get(i) is not None else (-1, -1) for i in infos], dtype=np.int32).reshape(-1, 2)

    params = {"model": lm.name, "input_size": list(size)}
    return ReceptiveFieldResult(params=params, provenance=provenance(lm.identity(), "cpu"),
                                layers=np.array([i.address for i in infos], dtype=str),
                                types=np.array([i.type for i in infos], dtype=str),
                                rf=arr(lambda i: i.rf), stride=arr(lambda i: i.stride),
                                padding=arr(lambda i: i.padding))
