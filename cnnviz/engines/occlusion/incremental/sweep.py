"""The incremental occlusion pass over a traced graph (Nakandala et al., SIGMOD 2019, Sec. 3-4).

`IncrementalGraph(model, x, layer)` traces the model with torch.fx (a copy is never needed: the
trace only reads the model) and runs the unoccluded image once, keeping every node's output. Then
`run(ys, xs, window, fill)` computes a batch of occluded positions: the input is a Patch (the
occluder's window), each node applies its rule (`ops.rule`) to the patches of its inputs and
produces its own patch, until a node whose rule is not local or whose region covers its whole
map; from there on nodes run on whole maps (each position's map materialized as the cached map
with its patch pasted), as the model itself would. It returns the logits and the followed
layer's channel total per position, and counts what it computed (multiply-accumulates, fraction
of each layer recomputed) for the result's params.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import fx

from ....errors import ModelError
from . import ops
from .regions import Patch, Source, box, gather, hwc, materialize, regather, slide


class Full:
    """A value computed for the whole batch as the model computes it (not a patch)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Tracer(fx.Tracer):
    """A tracer that notes the node holding the output of call `call` of module `name`."""

    def __init__(self, name: str, call: int | None):
        super().__init__()
        self.want, self.want_call, self.counts, self.found = name, call, {}, None

    def call_module(self, m, forward, args, kwargs):
        out = super().call_module(m, forward, args, kwargs)
        try:
            name = self.path_of_module(m)
        except NameError:
            return out
        k = self.counts.get(name, 0)
        self.counts[name] = k + 1
        if name == self.want and (self.want_call is None or k == self.want_call):
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            self.found = first.node if isinstance(first, fx.Proxy) else None
        return out


def trace(model: torch.nn.Module, layer_name: str, layer_call: int | None) -> tuple[fx.GraphModule, fx.Node]:
    """The model's fx graph and the node of the followed layer; ModelError (one line) when the
    model cannot be traced symbolically."""
    tracer = _Tracer(layer_name, layer_call)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow, unsupported Python, ...
        msg = " ".join(str(e).split())[:160]
        raise ModelError(f"{type(model).__name__} cannot be traced with torch.fx ({type(e).__name__}: {msg})") from None
    if tracer.found is None:
        raise ModelError(f"layer {layer_name!r} has no single output in the traced graph of {type(model).__name__}")
    return fx.GraphModule(tracer.root, graph), tracer.found


class _Recorder(fx.Interpreter):
    """Runs the graph once and keeps every node's output (a copy, so an in-place layer later in
    the graph cannot change what was kept)."""

    def __init__(self, gm):
        super().__init__(gm)
        self.kept: dict[fx.Node, object] = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.kept[n] = out.clone() if isinstance(out, torch.Tensor) and n.op != "get_attr" else out
        return out


def _may_write(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether a pointwise node may overwrite its input (inplace=True, a method ending in _)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return bool(node.kwargs.get("inplace")) or any(a is True for a in node.args[1:])


def _display(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


class IncrementalGraph:
    def __init__(self, model: torch.nn.Module, x: torch.Tensor, layer_name: str, layer_call: int | None,
                 layout=torch.channels_last, tau: float = 1.0):
        self.tau = float(tau)
        self.truncated: dict[str, int] = {}  # layer -> batches whose changed region was cut to tau of the map
        self.gm, self.followed = trace(model, layer_name, layer_call)
        self.gm.eval()
        self.layout = layout
        rec = _Recorder(self.gm)
        self.logits = rec.run(x)
        self.base = rec.kept
        nodes = list(self.gm.graph.nodes)
        self.dependent: set[fx.Node] = set()
        for n in nodes:
            if n.op == "placeholder" or any(a in self.dependent for a in n.all_input_nodes):
                self.dependent.add(n)
        if len([n for n in nodes if n.op == "placeholder"]) != 1:
            raise ModelError(f"{type(model).__name__} takes several inputs; incremental occlusion needs one image input")
        self.rules = {n: ops.rule(n, self.gm, self.base, self.dependent) for n in nodes
                      if n in self.dependent and n.op not in ("placeholder", "output")}
        self.unknown: list[str] = []  # operations not understood that a changed region reached
        order = {n: i for i, n in enumerate(nodes)}
        self.last_use = {}
        for n in nodes:
            for a in n.all_input_nodes:
                self.last_use[a] = max(self.last_use.get(a, -1), order[n])
        self.nodes = nodes
        self.macs_full = 0
        self.counted = {}  # node -> multiply-accumulates per position on the whole map
        for n, r in self.rules.items():
            m = r.macs * self._pixels(n) if isinstance(r, ops.Window) else ops.linear_macs(n, self.gm, self.base)
            if m:
                self.counted[n] = m
                self.macs_full += m
        self._padded: dict[tuple, Source] = {}
        self.stats_macs = 0.0
        self.stats_items = 0
        self.fraction: dict[str, float] = {}  # layer -> summed fraction recomputed, over items
        self.went_whole: dict[str, str] = {}  # node -> why it ran on whole maps (first batch)

    def _sole_owner(self, node) -> bool:
        """Whether `node` may overwrite its input's patch: no other node can read that tensor (the
        chain of nodes that pass the same tensor on, back to the one that made it, each has one
        user, and none is the input image or the followed layer, whose total is read first)."""
        n = next(a for a in node.all_input_nodes if a in self.dependent)
        while True:
            if len(n.users) != 1 or n.op == "placeholder":
                return False
            r = self.rules.get(n)
            if not isinstance(r, (ops.Pointwise, ops.Shift)):
                return True
            n = next(a for a in n.all_input_nodes if a in self.dependent)

    def _pixels(self, n) -> int:
        v = self.base[n]
        return int(v.shape[-2] * v.shape[-1]) if isinstance(v, torch.Tensor) and v.ndim == 4 else 1

    def _source(self, p: Patch, pads: tuple[int, int, int, int], value: float) -> Source:
        """The base map of `p` padded (top, bottom, left, right) with `value`, as HxWxC (cached)."""
        key = (id(p.base), pads, value)
        src = self._padded.get(key)
        if src is None:
            t, b, l, r = pads
            base = torch.nn.functional.pad(p.base, (l, r, t, b), value=value) if any(pads) else p.base
            src = self._padded[key] = Source(hwc(base))
        return src

    # -- the rules on patches ---------------------------------------------------------------------
    def _window(self, node, r: ops.Window, p: Patch) -> Patch:
        out_base = self.base[node]
        (mh, mw), (nh, nw) = out_base.shape[2:], p.map_size
        lo_y, hi_y = slide(p.lo_y, p.hi_y, r.k[0], r.s[0], r.d[0], r.p[0], mh)
        lo_x, hi_x = slide(p.lo_x, p.hi_x, r.k[1], r.s[1], r.d[1], r.p[1], mw)
        if self.tau < 1.0:
            lo_y, hi_y, cut_y = self._threshold(lo_y, hi_y, mh)
            lo_x, hi_x, cut_x = self._threshold(lo_x, hi_x, mw)
            if cut_y or cut_x:
                self.truncated[_display(node)] = self.truncated.get(_display(node), 0) + 1
        y, h = box(lo_y, hi_y, mh)
        x, w = box(lo_x, hi_x, mw)
        reach = ((r.k[0] - 1) * r.d[0], (r.k[1] - 1) * r.d[1])
        bottom = max(0, (mh - 1) * r.s[0] + reach[0] + 1 - r.p[0] - nh)
        right = max(0, (mw - 1) * r.s[1] + reach[1] + 1 - r.p[1] - nw)
        src = self._source(p, (r.p[0], bottom, r.p[1], right), r.fill)
        lh, lw = (h - 1) * r.s[0] + reach[0] + 1, (w - 1) * r.s[1] + reach[1] + 1
        win = gather(src, p, (r.p[0], r.p[1]), y * r.s[0], x * r.s[1], lh, lw)
        data = r.fn(win)
        return Patch(out_base, data, y, x, lo_y, hi_y, lo_x, hi_x)

    def _threshold(self, lo, hi, m):
        """Projective-field thresholding (Nakandala et al. 2019, Sec. 4.1): a changed interval
        longer than tau of the map is cut to its central ceil(tau * m) rows (approximate: what
        lies outside is read from the unoccluded map)."""
        cap = max(1, math.ceil(self.tau * m))
        long = (hi - lo) > cap
        if not bool(long.any()):
            return lo, hi, False
        start = torch.div(lo + hi - cap, 2, rounding_mode="floor").clamp(0, m - cap)
        return torch.where(long, start, lo), torch.where(long, start + cap, hi), True

    def _combine(self, node, r: ops.Combine, vals: list) -> Patch | None:
        patches = [v for v in vals if isinstance(v, Patch)]
        mh, mw = self.base[node].shape[2:]
        if any(p.map_size != (mh, mw) for p in patches):
            return None
        lo_y = torch.stack([p.lo_y for p in patches]).amin(0)
        hi_y = torch.stack([p.hi_y for p in patches]).amax(0)
        lo_x = torch.stack([p.lo_x for p in patches]).amin(0)
        hi_x = torch.stack([p.hi_x for p in patches]).amax(0)
        y, h = box(lo_y, hi_y, mh)
        x, w = box(lo_x, hi_x, mw)
        parts = [regather(v, self._source(v, (0, 0, 0, 0), 0.0), y, x, h, w) if isinstance(v, Patch) else v
                 for v in vals]
        return Patch(self.base[node], self._call(node, parts), y, x, lo_y, hi_y, lo_x, hi_x)

    def _call(self, node, values):
        """Run `node` on the arguments in `values` (the dependent ones replaced, in order)."""
        it = iter(values)

        def sub(a):
            return next(it) if a in self.dependent else self.base[a]

        if isinstance(self.rules.get(node), ops.Combine) and self.rules[node].cat:
            it = iter(values)
            parts = node.args[0] if node.args else node.kwargs["tensors"]
            args = ([next(it) for _ in parts], *fx.node.map_arg(node.args[1:], lambda a: self.base[a]))
            kwargs = {k: v for k, v in fx.node.map_arg(node.kwargs, lambda a: self.base[a]).items() if k != "tensors"}
        else:
            args, kwargs = fx.node.map_arg(node.args, sub), fx.node.map_arg(node.kwargs, sub)
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _whole_value(self, v):
        if isinstance(v, Patch):
            return materialize(v, self._source(v, (0, 0, 0, 0), 0.0)).contiguous(memory_format=self.layout)
        return v.value if isinstance(v, Full) else v

    def _step(self, node, env, items: int):
        vals = [env[a] for a in node.all_input_nodes if a in self.dependent]
        args_in_order = self._dependent_args(node, env)
        r = self.rules[node]
        patches = [v for v in vals if isinstance(v, Patch)]
        out = None
        if patches and not any(isinstance(v, Full) for v in vals):
            if isinstance(r, ops.Pointwise) and len(args_in_order) == 1:
                p = args_in_order[0]
                data = p.data.clone() if _may_write(node, self.gm) and not self._sole_owner(node) else p.data
                out = p.with_data(self._call(node, [data]), self.base[node])
            elif isinstance(r, ops.Window) and len(args_in_order) == 1:
                out = self._window(node, r, args_in_order[0])
            elif isinstance(r, ops.Shift):
                p = args_in_order[0]
                out = Patch(self.base[node], p.data, p.y + r.top, p.x + r.left, p.lo_y + r.top, p.hi_y + r.top,
                            p.lo_x + r.left, p.hi_x + r.left)
            elif isinstance(r, ops.Combine):
                out = self._combine(node, r, args_in_order)
            elif isinstance(r, ops.Shape):
                p = patches[0]
                meta = torch.empty((p.data.shape[0], *p.base.shape[1:]), device="meta")
                return Full(self._call(node, [meta]))
        if isinstance(out, Patch):
            self._count(node, out.size, items)
            if not out.covers_map:
                return out
            return Full(out.data.contiguous(memory_format=self.layout))
        if patches and _display(node) not in self.went_whole:
            self.went_whole[_display(node)] = r.reason if isinstance(r, ops.Whole) else "mixed with a whole map"
            if isinstance(r, ops.Whole) and not r.known:
                self.unknown.append(f"{_display(node)}: {r.reason}")
        result = self._call(node, [self._whole_value(v) for v in args_in_order])
        self._count(node, None, items)
        return Full(result)

    def _dependent_args(self, node, env) -> list:
        """The dependent arguments of `node` in the order `_call` substitutes them."""
        seen = []
        fx.node.map_arg((node.args, node.kwargs), lambda a: seen.append(env[a]) if a in self.dependent else None)
        return seen

    def _count(self, node, size, items: int):
        macs = self.counted.get(node)
        if not macs:
            return
        frac = 1.0 if size is None else size[0] * size[1] / self._pixels(node)
        self.stats_macs += macs * frac * items
        key = _display(node)
        self.fraction[key] = self.fraction.get(key, 0.0) + frac * items

    # -- one batch ----------------------------------------------------------------------------------
    def run(self, ys: torch.Tensor, xs: torch.Tensor, window: tuple[int, int], fill: torch.Tensor, items: int,
            channel: int):
        """Logits (B x classes) and the followed layer's channel total (B) for occluders at
        (ys[b], xs[b]); `items` of the B are real positions (the rest pad the batch)."""
        x0 = self.base[self.nodes[0]]
        b = ys.numel()
        dev = x0.device
        ys, xs = ys.to(dev, torch.long), xs.to(dev, torch.long)
        data = fill.to(dev, x0.dtype).reshape(1, -1, 1, 1).expand(b, -1, *window).contiguous(
            memory_format=torch.channels_last)
        env = {self.nodes[0]: Patch(x0, data, ys, xs, ys, ys + window[0], xs, xs + window[1])}
        total = None
        self.stats_items += items
        for i, node in enumerate(self.nodes[1:], 1):
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda a: env[a] if a in self.dependent else self.base[a])
                logits = self._whole_value(out[0] if isinstance(out, (tuple, list)) else out)
                break
            if node not in self.dependent:
                continue
            env[node] = self._step(node, env, items)
            if node is self.followed:
                total = self._total(env[node], channel)
            for a in node.all_input_nodes:
                if self.last_use.get(a) == i and a is not self.nodes[0]:
                    env.pop(a, None)
        return logits, total

    def _total(self, v, c: int) -> torch.Tensor:
        if isinstance(v, Full):
            return v.value[:, c].double().flatten(1).sum(1).float()
        h, w = v.size
        base = v.base[0, c].double()
        integral = torch.nn.functional.pad(base.cumsum(0).cumsum(1), (1, 0, 1, 0))
        y, x = v.y, v.x
        region = integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]
        return (base.sum() + v.data[:, c].double().flatten(1).sum(1) - region).float()

    @contextlib.contextmanager
    def uncounted(self):
        """Runs inside leave the counts `record` reports (multiply-accumulates, fraction of each
        layer recomputed, layers cut by tau) as they were; yields a dict whose "macs" is set, on
        exit, to the multiply-accumulates those runs computed."""
        kept = (self.stats_macs, self.stats_items, dict(self.fraction), dict(self.truncated))
        spent = {"macs": 0.0}
        try:
            yield spent
        finally:
            spent["macs"] = self.stats_macs - kept[0]
            self.stats_macs, self.stats_items, self.fraction, self.truncated = kept

    def cache_bytes(self) -> tuple[int, int]:
        """Memory held for the sweep: every node's kept unoccluded output (the input image's
        too; not the weights), and the padded copies of them that windows read from (with room
        for one batch of patches)."""
        kept = sum(v.numel() * v.element_size() for n, v in self.base.items()
                   if isinstance(v, torch.Tensor) and n.op != "get_attr")
        padded = sum(s.buf.numel() * s.buf.element_size() for s in self._padded.values())
        return int(kept), int(padded)

    def record(self) -> dict:
        n = max(1, self.stats_items)
        return {"macs_full": int(self.macs_full), "macs_incremental": int(round(self.stats_macs / n)),
                "macs_ratio": round(self.macs_full / max(1.0, self.stats_macs / n), 3),
                "recomputed_fraction": {k: round(v / n, 4) for k, v in self.fraction.items()},
                "cache_mb": {k: round(v / 2**20, 2) for k, v in zip(("kept", "padded"), self.cache_bytes())},
                "whole_from": dict(list(self.went_whole.items())[:8]), "not_understood": self.unknown[:8],
                **({"tau": self.tau, "tau_truncated_layers": sorted(self.truncated)} if self.tau < 1.0 else {})}

