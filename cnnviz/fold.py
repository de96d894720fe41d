"""A faster copy of a model for inference: eval-mode batch norm and symmetric padding folded into
the convolutions. The user's model is never changed.

A profile of EfficientNet-Lite0 occlusion on the CPU spends 41 % of the time in convolutions and
53 % in batch norm, ReLU6 and the model's explicit "same" padding. In eval mode a batch norm after a
convolution is an affine map per channel, so it can be merged into the convolution's weights and
bias (W' = W g/s, b' = (b - mu) g/s + beta with s = sqrt(var + eps)); an explicit zero padding that
is symmetric (as EfficientNet-Lite's before its stride-1 convolutions) can become the convolution's
own padding. Module addresses stay as they were: a folded batch norm becomes an `nn.Identity` at
the same name, whose output is then exactly what the batch norm's was (the folded convolution's
output), so an engine recording a layer by address still sees the same thing. The one address whose
meaning would change, a convolution followed before its batch norm (or a padding module), is named
in `keep` and left unfolded.

Which convolution feeds which batch norm is found by running one example through the copy (the
batch norm's input must be the very tensor the convolution returned), and the folded copy is then
checked against the original on that example; if they disagree (a convolution output used
elsewhere too, say), the original model is used unfolded.

Cost. The pairs and the check depend on how the modules are wired, not on the image's size, so
both trial passes run on a small centre crop of the example (`TRIAL_SIZE` px a side; the full
example where the model refuses the crop or a kept layer is checked). The copy is not a deep copy:
every module is copied shallowly with its own dicts of parameters, buffers, submodules and hooks
(hooks added to the copy never reach the model), and every parameter and buffer that folding does
not change is the model's own storage, wrapped without copying (read only: the copy is for
inference, and nothing of cnnviz writes to its weights). Only the folded convolutions get new
weights. On EfficientNet-Lite0 (2 shared CPU cores) the first fold took 49 ms, 0.30 of a repeated
one-image LRP-ε call (162 ms; `python benchmarks/fold.py --first-call`), where a deep copy alone
took 61 ms and each full-size trial pass 39 ms (about 155 ms in all before).

The copy and the verdict are remembered per model (weakly: they go with it), for the same input
shape, layers kept and module structure (the modules, their types and their forward hooks); a later
call only brings the copy's numbers up to date: a shared tensor the model has since replaced is
shared anew (one changed in place is the copy's already), and the folded convolutions are folded
again from the model's current tensors (a change through `.data` leaves no trace to test for), so
weights changed in the meantime are always used.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from .layers import LayerInfo, capture, eval_mode

TOLERANCE = 1e-4  # relative, of the largest output, for the check of the folded copy
TRIAL_SIZE = 64  # px a side of the trial passes' centre crop of the example (pairs and check)


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def _symmetric(pad: nn.ZeroPad2d) -> tuple[int, int] | None:
    left, right, top, bottom = pad.padding
    return (top, left) if left == right and top == bottom else None


def _pads_inside(m: nn.Module) -> bool:
    """A conv that pads inside itself with a `static_padding` child (EfficientNet-Lite's)."""
    return isinstance(m, nn.Conv2d) and isinstance(getattr(m, "static_padding", None), nn.ZeroPad2d)


def _foldable(m: nn.Module) -> bool:
    """A module `_pairs` could pair: a batch norm, a zero padding, or a conv padding inside itself."""
    return isinstance(m, (nn.BatchNorm2d, nn.ZeroPad2d)) or _pads_inside(m)


def _pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], list[tuple[str, str | None]],
                                                            object]:
    """(conv, batch norm) pairs where the norm's input is the conv's own output, and (conv, pad)
    pairs where a symmetric ZeroPad2d feeds the conv (pad None: the conv pads inside itself with
    a `static_padding` child, as EfficientNet-Lite's Conv2dStaticSamePadding); each module called
    exactly once; and the model's output on `example`."""
    calls: dict[str, int] = {}
    produced: dict[int, tuple[str, str]] = {}  # id(output) -> (kind, name)
    keep_alive = []
    bn_pairs, pad_pairs = [], []
    handles = []

    def post(name, kind):
        def hook(mod, inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (kind, name)
                keep_alive.append(out)
        return hook

    def pre(name, kind):
        def hook(mod, inp):
            src = produced.get(id(inp[0])) if inp and isinstance(inp[0], torch.Tensor) else None
            if kind == "bn" and src and src[0] == "conv":
                bn_pairs.append((src[1], name))
            if kind == "conv" and src and src[0] == "pad":
                pad_pairs.append((name, src[1]))
        return hook

    for name, m in model.named_modules():
        kind = ("conv" if isinstance(m, nn.Conv2d) else "bn" if isinstance(m, nn.BatchNorm2d)
                else "pad" if isinstance(m, nn.ZeroPad2d) else None)
        if not name or kind is None:
            continue
        handles += [m.register_forward_pre_hook(pre(name, kind)), m.register_forward_hook(post(name, kind))]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for h in handles:
            h.remove()
    once = {n for n, c in calls.items() if c == 1}
    modules = dict(model.named_modules())
    bn_pairs = [(c, b) for c, b in bn_pairs if c in once and b in once]
    pad_pairs = [(c, p) for c, p in pad_pairs if c in once and p in once]
    for name in once:
        if _pads_inside(modules[name]):
            pad_pairs.append((name, None))
    return bn_pairs, pad_pairs, output


def _plain_conv(conv: nn.Conv2d, padding: tuple[int, int]) -> nn.Conv2d:
    """A plain nn.Conv2d with `conv`'s weights and the given own padding."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=tuple(conv.stride),
                    padding=padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    out.weight = conv.weight
    out.bias = conv.bias
    return out.eval()


def _frozen(t: torch.Tensor | None, memo: dict) -> nn.Parameter | None:
    """The model's parameter as the copy's: the same storage, no gradient (one per tensor: tied
    weights stay tied)."""
    if t is None:
        return None
    if id(t) not in memo:
        memo[id(t)] = nn.Parameter(t.detach(), requires_grad=False)
    return memo[id(t)]


_CONTAINERS = (dict, set, list, __import__("collections").OrderedDict)


def _light_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the model's own storage (see the
    module's docstring): each module copied shallowly, with its own submodules, parameter, buffer
    and hook containers (every dict, set or list among its attributes copied one level deep)."""
    done: dict[int, nn.Module] = {}
    params: dict[int, nn.Parameter] = {}

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        new = object.__new__(type(m))  # what copy.copy does for a module, without its __reduce_ex__ detour
        done[id(m)] = new
        new.__dict__.update({k: (v.copy() if type(v) in _CONTAINERS else copy.copy(v) if isinstance(v, (dict, set, list))
                                 else v) for k, v in m.__dict__.items()})
        new._parameters = {k: _frozen(p, params) for k, p in m._parameters.items()}
        new._modules = {k: (None if c is None else clone(c)) for k, c in m._modules.items()}
        return new

    return clone(model)


def _trial(example: torch.Tensor) -> torch.Tensor:
    """A centre crop of `example`, TRIAL_SIZE px a side at most, for the trial passes."""
    h, w = example.shape[-2:]
    th, tw = min(h, TRIAL_SIZE), min(w, TRIAL_SIZE)
    top, left = (h - th) // 2, (w - tw) // 2
    return example[..., top:top + th, left:left + tw]


def _copy_and_fold(model: nn.Module, example: torch.Tensor, keep: set[str]) -> tuple:
    """The folded copy, what was folded, the (conv, bn) pairs folded, and the model's own output on
    `example` (the pairs are found on the model itself, in eval mode, hooks removed afterwards; its
    output is the reference the copy is checked against)."""
    with eval_mode(model):
        bn_pairs, pad_pairs, reference = _pairs(model, example)
    model_copy = _light_copy(model).eval()
    modules = dict(model_copy.named_modules())
    folded_bn = folded_pad = 0
    done = []
    for conv_name, bn_name in bn_pairs:
        bn = modules[bn_name]
        if conv_name in keep or bn.running_mean is None or bn.running_var is None:
            continue
        _fold_bn(modules[conv_name], bn)
        parent, child = _parent(model_copy, bn_name)
        setattr(parent, child, nn.Identity())
        folded_bn += 1
        done.append((conv_name, bn_name))
    for conv_name, pad_name in pad_pairs:
        conv = modules[conv_name]
        pad = conv.static_padding if pad_name is None else modules[pad_name]
        sym = _symmetric(pad)
        inner = f"{conv_name}.static_padding" if pad_name is None else pad_name
        if (sym is None or inner in keep or tuple(conv.padding) != (0, 0) or conv.padding_mode != "zeros"
                or (pad_name is None and conv_name in keep)):
            continue
        parent, child = _parent(model_copy, conv_name)
        if pad_name is None:
            setattr(parent, child, _plain_conv(conv, sym))
        else:
            conv.padding = sym
            p_parent, p_child = _parent(model_copy, pad_name)
            setattr(p_parent, p_child, nn.Identity())
        folded_pad += 1
    return model_copy, {"folded_batch_norms": folded_bn, "folded_paddings": folded_pad}, done, reference


def _folded_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of `conv` with `bn` folded into it (W' = W g/s, b' = (b - mu) g/s + beta),
    computed in float64 and returned in the convolution's dtype."""
    scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_var, dtype=torch.float64)
    inv = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * inv.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv)
    b = (b - bn.running_mean.double()) * inv + shift
    return w.to(conv.weight.dtype), b.to(conv.weight.dtype)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    w, b = _folded_bn(conv, bn)
    conv.weight = nn.Parameter(w, requires_grad=False)
    conv.bias = nn.Parameter(b, requires_grad=False)


# model -> (key, folded copy or None for the model itself, info, folded (conv, bn) pairs)
_FOLDS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _structure(model: nn.Module, example: torch.Tensor, names: set[str]) -> tuple:
    """What the fold's pairs and verdict depend on besides the numbers: the modules (identity, type,
    forward hooks), the parameters' dtypes and devices, the input's shape, dtype and device, and the
    layers kept."""
    mods = tuple((id(m), type(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in model.modules())
    kinds = {(t.dtype, t.device) for t in model.parameters()}
    return mods, tuple(sorted(map(str, kinds))), tuple(example.shape[1:]), example.dtype, example.device, \
        tuple(sorted(names))


def _refresh(copy_: nn.Module, model: nn.Module, bn_pairs: list[tuple[str, str]]) -> None:
    """Bring the copy's numbers up to date with the model (see the module's docstring): shared
    tensors the model has replaced are shared anew; the folded pairs are folded again."""
    modules = dict(model.named_modules())
    mine = dict(copy_.named_modules())
    convs = {c for c, _ in bn_pairs}
    memo: dict[int, nn.Parameter] = {}
    for name, mod in mine.items():
        src = modules.get(name)
        if src is None or src is mod:
            continue
        for k, t in mod._parameters.items():
            if name in convs and k in ("weight", "bias"):
                continue
            s_t = src._parameters.get(k) if k in src._parameters else getattr(src, k, None)
            if isinstance(s_t, torch.Tensor) and (t is None or t.data_ptr() != s_t.data_ptr() or t.shape != s_t.shape):
                mod._parameters[k] = _frozen(s_t, memo)
        for k, t in mod._buffers.items():
            s_t = src._buffers.get(k)
            if s_t is not None and t is not s_t:
                mod._buffers[k] = s_t
    with torch.no_grad():
        for conv_name, bn_name in bn_pairs:
            w, b = _folded_bn(modules[conv_name], modules[bn_name])
            mine[conv_name].weight.copy_(w)
            mine[conv_name].bias.copy_(b)


def folded(model: nn.Module, example: torch.Tensor, keep: list[LayerInfo] = ()) -> tuple[nn.Module, dict]:
    """A copy of `model` in eval mode with batch norms and symmetric paddings folded into the
    convolutions, for inference only (no gradients), and a dict saying what was folded.

    example: one input (1x3xHxW on the model's device) to find the pairs and check the copy on.
    keep: layers (from `resolve_layer`) an engine records by address; their outputs keep their
    meaning and are checked too. Falls back to `model` itself (with the reason) when nothing can
    be folded or the copy does not match it. The copy and the verdict are remembered for the model
    (see the module's docstring): a later call refreshes the copy's numbers from the model."""
    names = {info.name for info in keep}
    if not any(_foldable(m) for m in model.modules()):  # e.g. VGG, AlexNet: no copy, no trial pass
        return model, {"folded": False, "fold_reason": "nothing to fold"}
    key = _structure(model, example, names)
    known = _FOLDS.get(model)
    if known is not None and known[0] == key:
        _, copy_, info, pairs = known
        if copy_ is None:
            return model, dict(info)
        _refresh(copy_, model, pairs)
        return copy_, dict(info)
    copy_, info, pairs = _fold_afresh(model, example, names, keep)
    _FOLDS[model] = (key, None if copy_ is model else copy_, dict(info), pairs)
    return copy_, info


def _fold_afresh(model, example, names, keep) -> tuple[nn.Module, dict, list]:
    if not keep and example.shape[-1] * example.shape[-2] > TRIAL_SIZE ** 2:
        try:  # the wiring on a small crop (see the module's docstring); the full example if refused
            return _fold_tried(model, _trial(example), names, keep)
        except Exception:  # noqa: BLE001
            pass
    return _fold_tried(model, example, names, keep, catch=True)


def _fold_tried(model, example, names, keep, catch: bool = False) -> tuple[nn.Module, dict, list]:
    try:
        copy_, info, pairs, reference = _copy_and_fold(model, example, names)
    except Exception as e:  # a model that cannot be copied or traced this way: run it as it is
        if not catch:
            raise
        return model, {"folded": False, "fold_reason": f"{type(e).__name__}: {e}"[:200]}, []
    if not info["folded_batch_norms"] and not info["folded_paddings"]:
        return model, {"folded": False, "fold_reason": "nothing to fold"}, []
    if not _agrees(model, copy_, example, list(keep), None if keep else reference):
        return model, {"folded": False, "fold_reason": "folded copy did not match the model"}, []
    return copy_, {"folded": True, **info}, pairs


def _agrees(model: nn.Module, copy_: nn.Module, example: torch.Tensor, keep: list[LayerInfo],
            reference=None) -> bool:
    """Whether the copy computes what the model computes on `example` (its output, and the layers
    in `keep`); reference: the model's output, already computed, when nothing is kept."""
    def run(m):
        with torch.no_grad():
            caps = [capture(m, info) for info in keep]
            values = [c.__enter__() for c in caps]
            try:
                out = m(example)
            finally:
                for c in reversed(caps):
                    c.__exit__(None, None, None)
        return [out] + [v.values[0] if v.values else None for v in values]

    was = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        ref = [reference] if reference is not None else run(model)
        got = run(copy_)
    finally:
        for mod, flag in was:
            mod.training = flag
    for a, b in zip(ref, got):
        if a is None or b is None or not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return False
        scale = float(a.float().abs().max()) or 1.0
        if float((a.float() - b.float()).abs().max()) > TOLERANCE * scale:
            return False
    return True
