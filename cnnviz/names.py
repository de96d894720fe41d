"""Layer names for people: a layer by what it is and where it sits ("head, ReLU6 after the last
conv", "block 10 (MBConv), output", "layer4 block 1, ReLU (2nd call)") from its address and type.
Pure string work, no torch: figures redrawn from saved results name their layers without it.
The address itself (`_blocks.10`, `_swish@1`) stays in a result's params."""

from __future__ import annotations

import re

_ACTIVATION_END = re.compile(r"(relu|swish|silu|gelu|sigmoid|tanh|mish|elu|softplus|softsign|activation)\d*$")


def is_activation_type(kind: str | None) -> bool:
    """Whether a module's type name (`LayerInfo.type`, its class name) is an activation function:
    a class of torch.nn's activation module, or a name like Swish, MemoryEfficientSwish, QuickGELU."""
    if not kind:
        return False
    kind = str(kind)
    from torch.nn.modules import activation

    if kind in getattr(activation, "__all__", ()) and kind not in ("MultiheadAttention", "Softmax", "Softmin",
                                                                    "Softmax2d", "LogSoftmax"):
        return True
    return bool(_ACTIVATION_END.search(kind.lower()))


# Module names that say where they sit in the common CNN families, as a reader says them. Keys are
# top-level names with leading underscores dropped; `underscored` entries apply only to a name the
# model spelt with its underscore (EfficientNet's `_bn1` is the head's batch norm, ResNet's `bn1` the stem's).
_TOP_LEVEL = {
    "conv_stem": "stem conv", "conv1": "stem conv", "stem": "stem", "bn0": "stem, batch norm",
    "maxpool": "stem, max pooling", "conv_head": "head conv (the last conv)",
    "avg_pooling": "global average pooling", "avgpool": "global average pooling",
    "global_pool": "global average pooling", "dropout": "dropout before the classifier",
    "fc": "classifier (fc)", "classifier": "classifier", "head": "classifier head",
}
_UNDERSCORED_TOP = {"bn1": "head, batch norm", "bn2": "head, batch norm"}
_PLAIN_TOP = {"bn1": "stem, batch norm", "bn2": "head, batch norm", "relu": "stem", "act1": "stem", "act2": "head"}
# Parts inside a block: EfficientNet's (lukemelas / EfficientNet-Lite) and ResNet's module names
_INNER = {"expand_conv": "expand conv", "depthwise_conv": "depthwise conv", "project_conv": "project conv",
          "se_reduce": "squeeze-excitation reduce", "se_expand": "squeeze-excitation expand",
          "_bn0": "batch norm after the expand conv", "_bn1": "batch norm after the depthwise conv",
          "_bn2": "batch norm after the project conv",
          "static_padding": "padding", "downsample": "shortcut", "conv_pw": "pointwise conv", "conv_dw": "depthwise conv",
          "conv_pwl": "project conv"}
# EfficientNet's `_swish` inside an MBConv block runs after the expand conv (1st call) and after the
# depthwise conv (2nd call; the only call in a block without expansion); at the top level after
# the stem conv (1st call) and the head conv (2nd)
_AFTER_IN_BLOCK = {"swish": {0: "after the expand conv", 1: "after the depthwise conv",
                             None: "after the depthwise conv"}}
_AFTER_AT_TOP = {"swish": {0: "stem, {kind} after the first conv", 1: "head, {kind} after the last conv"}}


def _nth(k: int) -> str:
    k += 1
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix} call"


def _words(part: str) -> str:
    bare = part.lstrip("_") or part
    return _INNER.get(part, _INNER.get(bare, bare.replace("_", " ")))


def _container(part: str, index: str) -> str:
    """`blocks` 10 -> "block 10", `layer4` 1 -> "layer4 block 1", `features` 3 -> "features 3"."""
    bare = part.lstrip("_") or part
    if bare in ("blocks", "block"):
        return f"block {index}"
    if bare in ("stages", "stage"):
        return f"stage {index}"
    if re.fullmatch(r"layer\d+", bare):
        return f"{bare} block {index}"
    return f"{_words(part)} {index}"


def _block_type(kind: str | None) -> str | None:
    """A block's class name as a reader says it: MBConvBlock -> MBConv, BasicBlock, Bottleneck."""
    if not kind or kind in ("Sequential", "ModuleList"):
        return None
    return kind[:-5] if kind.endswith("Block") and len(kind) > 5 and kind != "BasicBlock" else kind


def readable_name(address: str, kind: str | None = None) -> str:
    """A layer address as a reader says it: where the layer is (block index, stem, head) and what
    it is (its type for an activation, the module's role otherwise), never cut. Examples, with the
    module's type `kind` (`LayerInfo.type`) where it matters:
    `_blocks.10` (MBConvBlock) -> "block 10 (MBConv), output";
    `_blocks.6._depthwise_conv` -> "block 6, depthwise conv";
    `_blocks.6._swish@1` (ReLU6) -> "block 6, ReLU6 after the depthwise conv";
    `_swish@1` (ReLU6; EfficientNet-Lite keeps the name `_swish` for its ReLU6) -> "head, ReLU6 after
    the last conv"; `_conv_head` -> "head conv (the last conv)";
    `layer4.1.relu@1` (ReLU) -> "layer4 block 1, ReLU (2nd call)"; `layer4.1` (BasicBlock) -> "layer4
    block 1 (BasicBlock), output"; `features.10` (ReLU) -> "features 10, ReLU".
    Pass the address itself to --layer; this is only for reading (figures keep the address in
    their caption or params)."""
    name, sep, call_text = str(address).partition("@")
    call = int(call_text) if sep and call_text.isdigit() else None
    parts = name.split(".") if name else []
    where: list[str] = []
    i = 0
    while i < len(parts):  # the indexed containers: "_blocks.10", "layer4.1", "features.1.0.block.0"
        if parts[i].isdigit():
            where[-1:] = [f"{where[-1]}.{parts[i]}" if where else parts[i]]
            i += 1
        elif i + 1 < len(parts) and parts[i + 1].isdigit():
            where.append(_container(parts[i], parts[i + 1]))
            i += 2
        else:
            break
    rest = parts[i:]
    act = is_activation_type(kind)
    nth = _nth(call) if call is not None else ""
    if not rest:  # a whole block (or an indexed layer of a Sequential)
        if not where:
            return str(address)
        if act or (kind and not _block_type(kind)):
            what = str(kind) if kind else ""
        elif kind and any(w in kind for w in ("Block", "Bottleneck", "Stage", "Sequential", "Residual", "Inverted")):
            head = where[-1]
            where = where[:-1] + [f"{head} ({_block_type(kind)})"]
            what = "output"
        else:
            what = _words(kind) if kind else ""
        text = ", ".join(x for x in [*where, what] if x)
        return f"{text} ({nth})" if nth else text
    own = (rest[-1].lstrip("_") or rest[-1]).lower()
    if act:
        inside = [_words(p) for p in rest[:-1]]
        if not where and not inside:  # a top-level activation: the stem's, or the head's
            pattern = next((v for k, v in _AFTER_AT_TOP.items() if k in own), None)
            if pattern and call in pattern:
                return pattern[call].format(kind=kind)
            place = _PLAIN_TOP.get(own) if not rest[-1].startswith("_") else None
            if place:
                return f"{place}, {kind}" + (f" ({nth})" if nth else "")
            return f"{kind} ({nth})" if nth else str(kind)
        after = next((v for k, v in _AFTER_IN_BLOCK.items() if k in own), {}).get(call) if where and not inside else None
        what = f"{kind} {after}" if after else (f"{kind} ({nth})" if nth else str(kind))
        return ", ".join([*where, *inside, what])
    if not where and len(rest) == 1:
        bare = rest[0].lstrip("_") or rest[0]
        table = _UNDERSCORED_TOP if rest[0].startswith("_") else _PLAIN_TOP
        text = table.get(bare) or _TOP_LEVEL.get(bare) or bare.replace("_", " ")
        return f"{text} ({nth})" if nth else text
    inside: list[str] = []
    if not where:  # a part of a top-level module: "stem conv, padding"
        bare = rest[0].lstrip("_") or rest[0]
        inside.append((_UNDERSCORED_TOP if rest[0].startswith("_") else _PLAIN_TOP).get(bare) or _TOP_LEVEL.get(bare)
                      or _words(rest[0]))
        rest = rest[1:]
    for p in rest:  # an index inside the block goes with the name before it: "shortcut 0"
        if p.isdigit() and inside:
            inside[-1] = f"{inside[-1]} {p}"
        else:
            inside.append(_words(p))
    text = ", ".join(x for x in [*where, *inside] if x)
    return f"{text} ({nth})" if nth else text


def describe_layer(info) -> str:
    """`readable_name` of a traced layer (a `cnnviz.layers.LayerInfo`), with its type."""
    return readable_name(info.address, info.type)


def layer_name(address: str, kind: str | None = None) -> str:
    """A layer as figures list it: by what it is and where (`readable_name`): Lite0's `_swish@1` is
    "head, ReLU6 after the last conv", `_blocks.10` "block 10 (MBConv), output"."""
    return readable_name(address, kind)
