"""What each node of a traced graph does to a changed region: the rule per operation.

`rule(node, ...)` returns one of
  Pointwise()            the output at a pixel depends on the input at that pixel only (activations,
                         eval batch norm, dropout in eval, an affine map per channel);
  Window(...)            a sliding window over the map (convolution, max/average pooling), with
                         its kernel, stride, dilation, padding before the map, the padding value
                         and the function that computes it on an unpadded window;
  Shift(top, left)       constant padding: the changed region moves, values stay;
  Combine()              elementwise with several maps (residual add, multiply) or torch.cat along
                         channels: the operands are brought to one box first;
  Shape()                size/shape/dim of a map: answered for the whole batch, no computation;
  Whole(reason, known)   not local: computed on whole maps from here on (`known`: an operation
                         understood to mix all positions, as global pooling, flatten or linear;
                         otherwise an operation this module does not know, which the caller warns of).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn


@dataclass(frozen=True)
class Pointwise:
    pass


@dataclass(frozen=True)
class Window:
    k: tuple[int, int]
    s: tuple[int, int]
    d: tuple[int, int]
    p: tuple[int, int]  # padding before the map (top, left)
    fill: float  # the padding value
    fn: Callable[[torch.Tensor], torch.Tensor]  # the layer on an unpadded window
    macs: int  # multiply-accumulates per output pixel (0 for pooling)
    kind: str


@dataclass(frozen=True)
class Shift:
    top: int
    left: int


@dataclass(frozen=True)
class Combine:
    cat: bool


@dataclass(frozen=True)
class Shape:
    pass


@dataclass(frozen=True)
class Whole:
    reason: str
    known: bool


POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU,
                     nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.PReLU)
POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid,
                       torch.tanh, F.tanh, F.hardtanh, F.leaky_relu, F.gelu, F.elu, F.dropout, torch.clamp,
                       F.mish, torch.nn.functional.dropout2d}
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "contiguous", "float", "half",
                     "hardswish"}
BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                    torch.div}
BINARY_METHODS = {"add", "sub", "mul", "div"}
SHAPE_METHODS = {"size", "dim", "ndimension"}
NONLOCAL_MODULES = (nn.Linear, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax,
                    nn.MultiheadAttention)
NONLOCAL_FUNCTIONS = {torch.flatten, F.linear, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean,
                      torch.softmax, F.softmax, torch.sum, torch.matmul, torch.bmm, operator.matmul}
NONLOCAL_METHODS = {"view", "reshape", "flatten", "mean", "sum", "squeeze", "permute", "transpose", "softmax",
                    "matmul", "amax", "max"}


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _bind(args, kwargs, names, defaults) -> dict:
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


def _spatial_constant(v) -> bool:
    """A value that broadcasts over the map (a scalar, a per-channel tensor)."""
    return not isinstance(v, torch.Tensor) or v.ndim < 2 or tuple(v.shape[-2:]) == (1, 1)


def _same_padding(k, d) -> tuple[int, int]:
    return tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))


def _conv(w, b, stride, padding, dilation, groups, out_shape) -> Window | Whole:
    k = tuple(int(v) for v in w.shape[2:])
    if len(k) != 2:
        return Whole("not a 2-D convolution", True)
    s, d = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "same" and s != (1, 1):
            return Whole("'same' padding with a stride", False)
        p = (0, 0) if padding == "valid" else _same_padding(k, d)
    else:
        p = _pair(padding)
    groups = int(groups)
    per_pixel = int(w.shape[0]) * int(w.shape[1]) * k[0] * k[1]

    def fn(t, w=w, b=b, s=s, d=d, g=groups):
        return F.conv2d(t, w, b, s, 0, d, g)

    return Window(k, s, d, p, 0.0, fn, per_pixel, "conv")


def _max_pool(kernel, stride, padding, dilation, ceil_mode, return_indices) -> Window | Whole:
    if return_indices:
        return Whole("max pooling that returns indices", False)
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, ()) and stride != [] else k
    d, p = _pair(dilation), _pair(padding)

    def fn(t, k=k, s=s, d=d):
        return F.max_pool2d(t, k, s, 0, d)

    return Window(k, s, d, p, float("-inf"), fn, 0, "max_pool")


def _avg_pool(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, in_hw, out_hw):
    k = _pair(kernel)
    s = _pair(stride) if stride not in (None, ()) and stride != [] else k
    p = _pair(padding)
    floor_out = tuple((n + 2 * pi - ki) // si + 1 for n, pi, ki, si in zip(in_hw, p, k, s))
    if ceil_mode and floor_out != tuple(out_hw):
        return Whole("average pooling with ceil_mode that adds a partial window", False)
    if any(p) and not count_include_pad and divisor_override is None:
        return Whole("average pooling with padding not counted", False)

    def fn(t, k=k, s=s, dv=divisor_override):
        return F.avg_pool2d(t, k, s, 0, False, True, dv)

    return Window(k, s, (1, 1), p, 0.0, fn, 0, "avg_pool")


def _adaptive_avg(in_hw, out_hw) -> Any:
    if tuple(in_hw) == tuple(out_hw):
        return Pointwise()
    if out_hw == (1, 1):
        return Whole("global average pooling", True)
    if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
        k = tuple(i // o for i, o in zip(in_hw, out_hw))
        return _avg_pool(k, k, 0, False, True, None, in_hw, out_hw)
    return Whole("adaptive pooling to a size that does not divide the map", True)


def _hw(v) -> tuple[int, int] | None:
    return (int(v.shape[-2]), int(v.shape[-1])) if isinstance(v, torch.Tensor) and v.ndim == 4 else None


def rule(node: fx.Node, gm: fx.GraphModule, base: dict, dependent: set) -> Any:
    """The rule for `node` (see the module docstring). `base`: every node's unoccluded value;
    `dependent`: the nodes whose value depends on the input image."""
    def val(a):
        return fx.node.map_arg(a, lambda n: base[n])

    args, kwargs = val(node.args), val(node.kwargs)
    dep_args = [a for a in node.all_input_nodes if a in dependent]
    out = base[node]
    out_hw = _hw(out)
    first = node.args[0] if node.args else None
    first_hw = _hw(base[first]) if isinstance(first, fx.Node) else None
    t = node.target
    if node.op == "call_module":
        m = gm.get_submodule(t)
        name = type(m).__name__
        if isinstance(m, nn.BatchNorm2d):
            ok = not m.training and m.running_mean is not None
            return Pointwise() if ok else Whole("batch norm with batch statistics", False)
        if isinstance(m, POINTWISE_MODULES):
            return Pointwise() if len(dep_args) == 1 else Whole(name, False)
        if out_hw is None or first_hw is None or len(dep_args) != 1 or len(node.args) != 1:
            known = isinstance(m, NONLOCAL_MODULES)
            return Whole(f"{name} ({t})", known)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                return Whole(f"convolution with {m.padding_mode} padding ({t})", False)
            return _conv(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, out.shape)
        if isinstance(m, nn.MaxPool2d):
            return _max_pool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
        if isinstance(m, nn.AvgPool2d):
            return _avg_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                             m.divisor_override, first_hw, out_hw)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return _adaptive_avg(first_hw, out_hw)
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
            left, right, top, bottom = m.padding
            return Shift(top, left) if min(left, right, top, bottom) >= 0 else Whole("cropping", False)
        return Whole(f"{name} ({t})", isinstance(m, NONLOCAL_MODULES))
    if node.op == "call_method":
        if t in SHAPE_METHODS:
            return Shape()
        if t in POINTWISE_METHODS and len(dep_args) == 1 and node.args[0] in dependent \
                and all(_spatial_constant(a) for a in list(args[1:]) + list(kwargs.values())):
            return Pointwise()
        if t in BINARY_METHODS and out_hw is not None and all(_spatial_constant(a) or n in dependent for a, n in
                                                              zip(args, node.args)):
            return Combine(False)
        return Whole(f"method .{t}()", t in NONLOCAL_METHODS)
    if node.op == "call_function":
        fname = getattr(t, "__name__", str(t))
        if t is getattr and len(node.args) == 2 and node.args[1] == "shape":
            return Shape()
        if t in POINTWISE_FUNCTIONS and len(dep_args) == 1 and first in dependent \
                and all(_spatial_constant(a) for a in list(args[1:]) + list(kwargs.values())):
            return Pointwise()
        if out_hw is None:
            return Whole(f"{fname}", t in NONLOCAL_FUNCTIONS or t is operator.getitem)
        if t in BINARY_FUNCTIONS:
            operands = list(zip(args, node.args))
            if all(isinstance(n, fx.Node) and n in dependent and _hw(a) == out_hw or _spatial_constant(a)
                   for a, n in operands):
                return Combine(False)
            return Whole(f"{fname} with a map that does not change", False)
        if t in (torch.cat, torch.concat):
            dim = _bind(node.args, node.kwargs, ["tensors", "dim"], {"dim": 0})["dim"]
            parts = node.args[0] if node.args else node.kwargs.get("tensors")
            if dim in (1, -3) and out.ndim == 4 and all(isinstance(n, fx.Node) and n in dependent for n in parts):
                return Combine(True)
            return Whole("concatenation not along channels", False)
        if first_hw is None or len(dep_args) != 1 or first not in dependent:
            return Whole(fname, t in NONLOCAL_FUNCTIONS)
        if t in (F.conv2d, torch.conv2d):
            a = _bind(args, kwargs, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            if isinstance(a["weight"], torch.Tensor) and not isinstance(a["bias"], fx.Node):
                return _conv(a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"], out.shape)
        if t in (F.max_pool2d, torch.max_pool2d):
            a = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                     "return_indices"],
                      {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
            return _max_pool(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"],
                             a["return_indices"])
        if t in (F.avg_pool2d, torch._C._nn.avg_pool2d):
            a = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                     "divisor_override"],
                      {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                       "divisor_override": None})
            return _avg_pool(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                             a["divisor_override"], first_hw, out_hw)
        if t is F.adaptive_avg_pool2d:
            return _adaptive_avg(first_hw, out_hw)
        if t is F.pad:
            a = _bind(args, kwargs, ["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
            pad = list(a["pad"])
            if a["mode"] == "constant" and len(pad) == 4 and min(pad) >= 0:
                return Shift(pad[2], pad[0])
            return Whole("padding that is not constant on the two map axes", False)
        return Whole(fname, t in NONLOCAL_FUNCTIONS)
    return Whole(f"{node.op} {t}", False)


def linear_macs(node: fx.Node, gm: fx.GraphModule, base: dict) -> int:
    """Multiply-accumulates of a linear layer for one image (0 for anything else)."""
    w = None
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear):
        w = gm.get_submodule(node.target).weight
    elif node.op == "call_function" and node.target is F.linear:
        w = fx.node.map_arg(node.args[1] if len(node.args) > 1 else node.kwargs["weight"], lambda n: base[n])
    if not isinstance(w, torch.Tensor):
        return 0
    return int(base[node].numel() // base[node].shape[-1]) * int(w.shape[0]) * int(w.shape[1])
