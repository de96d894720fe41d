"""An explicit, layer-by-layer Zeiler-Fergus deconvnet for sequential convolutional stacks.

`cnnviz.engines.attribution.gradients.input_signal(..., "deconv", ...)` gets the deconvnet projection from
autograd with the deconvnet rectifier rule. This module computes the same projection a second,
independent way, as Zeiler & Fergus (2014, Sec. 2.1) describe it: a forward pass that records the
pooling switches, then a pass down the stack in which each layer is inverted by hand, with no
autograd anywhere:

- rectification: ReLU applied to the signal coming down, `relu(signal)`;
- unpooling: each value goes back to the position of the maximum recorded by the switches of the
  forward pass; where overlapping pooling windows (AlexNet's 3x3 stride 2) share one maximum, the
  values they send back are summed (the transpose of the pooling's selection, as for the filters);
- filtering: the transposed filters, `conv_transpose2d` with the conv's own weights, stride,
  padding, dilation and groups; the bias is not added going down.

Used by the tests as a reference for the general engine; it handles `nn.Sequential` stacks of
Conv2d, ReLU, MaxPool2d and Dropout/Identity (the `features` of torchvision's AlexNet and VGG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ParameterError
from .gradients import Unit

_IDENTITY = (nn.Dropout, nn.Dropout2d, nn.Identity)


def features_of(model: nn.Module) -> nn.Sequential:
    """The `features` stack (an `nn.Sequential`) of torchvision's AlexNet or VGG, or of a
    `LoadedModel` wrapping one."""
    model = getattr(model, "model", model)
    stack = getattr(model, "features", None)
    if not isinstance(stack, nn.Sequential):
        raise ParameterError(f"{type(model).__name__} has no `features` nn.Sequential stack; the explicit "
                             "deconvnet works on AlexNet/VGG-style models, use input_signal(..., 'deconv') for others")
    return stack


def _check(stack: nn.Sequential, index: int) -> None:
    if not isinstance(stack, nn.Sequential):
        raise ParameterError(f"expected an nn.Sequential stack, got {type(stack).__name__}")
    if not 0 <= index < len(stack):
        raise ParameterError(f"layer index {index} is out of range: the stack has modules 0..{len(stack) - 1}")
    for i in range(index + 1):
        m = stack[i]
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ParameterError(f"module {i} (Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r}) "
                                     "cannot be inverted by the explicit deconvnet: only numeric zero padding is supported")
        elif not isinstance(m, (nn.ReLU, nn.MaxPool2d) + _IDENTITY):
            raise ParameterError(f"module {i} ({type(m).__name__}) cannot be inverted by the explicit deconvnet: "
                                 "it supports Conv2d, ReLU, MaxPool2d and Dropout/Identity only")


def _seed(act: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Only the unit's activation(s) kept, at their own value; every other activation zero."""
    n, c, h, w = act.shape
    if not 0 <= unit.channel < c:
        raise ParameterError(f"unit channel {unit.channel} is out of range: the layer has channels 0..{c - 1}")
    top = torch.zeros_like(act)
    ch = act[:, unit.channel]
    if unit.where == "map":
        top[:, unit.channel] = ch
    elif unit.where == "max":
        flat = ch.reshape(n, -1)
        k = flat.argmax(1)
        rows = torch.arange(n)
        top[rows, unit.channel, k // w, k % w] = flat[rows, k]
    else:
        y, x = unit.where
        if not (0 <= y < h and 0 <= x < w):
            raise ParameterError(f"unit position ({y}, {x}) is outside the layer's {h}x{w} map")
        top[:, unit.channel, y, x] = ch[:, y, x]
    return top


def _unpool(signal: torch.Tensor, switches: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Send each value back to its switch position; values sharing a position are summed."""
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, size[-2] * size[-1])
    out.scatter_add_(2, switches.reshape(n, c, -1), signal.reshape(n, c, -1))
    return out.view(n, c, size[-2], size[-1])


def _deconv(signal: torch.Tensor, conv: nn.Conv2d, size: torch.Size) -> torch.Tensor:
    """Transposed filters, with the output padding that gives back the conv's input size."""
    pad = []
    for d in range(2):
        full = ((signal.shape[2 + d] - 1) * conv.stride[d] - 2 * conv.padding[d]
                + conv.dilation[d] * (conv.kernel_size[d] - 1) + 1)
        pad.append(size[2 + d] - full)
    return F.conv_transpose2d(signal, conv.weight, stride=conv.stride, padding=conv.padding,
                              output_padding=tuple(pad), groups=conv.groups, dilation=conv.dilation)


def project_sequential(stack: nn.Sequential, x: torch.Tensor, index: int, unit: Unit) -> torch.Tensor:
    """Project `unit` of the output of `stack[index]` down to the input, Zeiler-Fergus style.

    stack: an `nn.Sequential` whose modules 0..index are Conv2d (zero padding), ReLU (in place or
      not), MaxPool2d (any kernel, stride, padding, dilation, ceil_mode) or Dropout/Identity (taken
      as the identity, as in eval mode); any other module raises a one-line ParameterError.
    x: the input, N x C x H x W (N x 3 x H x W for an image model).
    index: the module whose output holds the unit.
    unit: `Unit(channel, where)`: where "max" keeps the channel's strongest activation of each
      image, "map" the whole feature map, (y, x) one position.

    Returns the reconstruction N x C x H x W (same shape as `x`): the signal made of that unit's
    activation alone (every other activation of the layer zeroed), sent down through rectification,
    unpooling with the switches of this forward pass, and the transposed filters. The model and `x`
    are left unchanged; autograd is not used.
    """
    _check(stack, index)
    if x.ndim != 4:
        raise ParameterError(f"expected an N x C x H x W input, got shape {tuple(x.shape)}")
    with torch.no_grad():
        h = x.detach()
        tape = []  # (module, input size, switches) for each module going up
        for i in range(index + 1):
            m = stack[i]
            size, switches = h.shape, None
            if isinstance(m, nn.Conv2d):
                h = m(h)
            elif isinstance(m, nn.ReLU):
                h = F.relu(h)  # never in place: the input of the stack must stay as it was
            elif isinstance(m, nn.MaxPool2d):
                h, switches = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation,
                                           ceil_mode=m.ceil_mode, return_indices=True)
            tape.append((m, size, switches))
        if h.ndim != 4:
            raise ParameterError(f"module {index} outputs shape {tuple(h.shape)}, not a feature map")
        signal = _seed(h, unit)
        for m, size, switches in reversed(tape):
            if isinstance(m, nn.ReLU):
                signal = F.relu(signal)
            elif isinstance(m, nn.MaxPool2d):
                signal = _unpool(signal, switches, size)
            elif isinstance(m, nn.Conv2d):
                signal = _deconv(signal, m, size)
    return signal
