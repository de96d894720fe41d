"""The checks of `attribute`'s options that need no model (the CLI runs them before loading one),
and the backward rules given per layer (`rules=`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ...batching import check_batch_size
from ...errors import ParameterError
from . import methods as M
from .ig import check_baseline
from .methods import SMOOTH_MODES
from .rules import RULE_OBJECTS, Rule


def resolve_rules(rules) -> dict[str, Rule]:
    """{layer prefix: Rule} from {prefix: rule name or Rule}; names: gradient, guided, deconv and
    the LRP methods (lrp-epsilon, lrp-zplus, lrp-alphabeta, lrp-alpha1beta0)."""
    from .lrp import METHODS as LRP_RULES, lrp_rule

    if not isinstance(rules, Mapping) or not rules:
        raise ParameterError(f"rules={rules!r}: give a dict {{layer prefix: rule}}, e.g. "
                             "{'features': 'guided', '': 'gradient'}")
    out = {}
    for key, value in rules.items():
        if not isinstance(key, str):
            raise ParameterError(f"rules key {key!r} must be a layer name (a str; '' for every layer)")
        if isinstance(value, Rule):
            out[key] = value
        elif value in RULE_OBJECTS:
            out[key] = RULE_OBJECTS[value]
        elif value in LRP_RULES:
            out[key] = lrp_rule(value)
        else:
            raise ParameterError(f"rules[{key!r}] = {value!r} is not a rule; use one of "
                                 f"{', '.join([*RULE_OBJECTS, *LRP_RULES])} or a cnnviz.engines.attribution.rules.Rule")
    return out


def _check_rule_keys(model, rules: dict) -> None:
    names = [n for n, _ in model.named_modules()]
    for key in rules:
        if key and not any(n == key or n.startswith(key + ".") for n in names):
            near = sorted({n.split(".")[0] for n in names if n})[:8]
            raise ParameterError(f"rules key {key!r} names no layer of the model; use a module name (see "
                                 f"`cnnviz layers`; top level: {', '.join(near)}) or '' for every layer")


def _and(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

def check_options(method: str, *, target=None, layer: str | None = None, unit=None, smooth: int = 0,
                  noise: float | None = None, seed: int | None = None, smooth_mode: str | None = None,
                  ig_steps: int | None = None, baseline: str | None = None, batch_size: int | None = None,
                  ig_internal_batch: int | None = None, rules=None, masks: int | None = None,
                  max_channels: int | None = None) -> None:
    """Refuse, with one line naming the option and the fix, every option `method` would not use
    and every impossible value; needs no model (the CLI calls it before loading one). Layer names
    and channels are checked against the model by `attribute`, before anything is computed.
    What a method takes comes from its entry in the registry (`cnnviz.engines.attribution.methods`)."""
    if method not in M.REGISTRY:
        raise ParameterError(f"unknown method {method!r}; one of {', '.join(M.REGISTRY)}")
    m = M.get(method)
    if unit is not None and not m.units:
        raise ParameterError(f"--unit works with {_and(M.names(units=True))}, not {method}; "
                             "give a class --target instead")
    if unit is not None and target is not None:
        raise ParameterError(f"--target {target!r} and --unit {unit!r} exclude each other: a unit is projected "
                             "instead of a class; drop one")
    if layer is not None and unit is None and not m.needs_layer:
        raise ParameterError(f"--layer {layer!r} is used by {method} only with --unit (the unit's layer); "
                             "add --unit C or drop --layer")
    if not isinstance(smooth, (int, np.integer)) or isinstance(smooth, bool) or smooth < 0:
        raise ParameterError(f"smooth={smooth!r}: SmoothGrad takes a whole number of noisy copies (0: off)")
    if smooth and not m.smoothable:
        raise ParameterError(f"--samples {smooth}: SmoothGrad works with {_and(M.names(smoothable=True))}, "
                             f"not {method}; drop --samples")
    for name, value in (("--noise", noise), ("--seed", seed), ("--smooth", smooth_mode)):
        if value is not None and not smooth:
            raise ParameterError(f"{name} {value!r} is used only by SmoothGrad; add --samples N or drop {name}")
    if noise is not None and not 0 < noise < 1:
        raise ParameterError(f"noise {noise!r} must be between 0 and 1 (a fraction of the input's range)")
    if smooth_mode is not None and smooth_mode not in SMOOTH_MODES:
        raise ParameterError(f"unknown SmoothGrad mode {smooth_mode!r}; one of {', '.join(SMOOTH_MODES)}")
    if smooth_mode == "mean-abs" and m.signed:
        raise ParameterError(f"--smooth mean-abs would drop the sign of {method}'s map; use --smooth mean")
    for name, value in (("ig_steps", ig_steps), ("baseline", baseline), ("ig_internal_batch", ig_internal_batch)):
        if value is not None and method != "ig":
            raise ParameterError(f"{name}={value!r} is used only by ig, not {method}; drop it")
    if ig_steps is not None and (isinstance(ig_steps, bool) or not isinstance(ig_steps, (int, np.integer))
                                 or ig_steps < 1):
        raise ParameterError(f"ig_steps {ig_steps!r} must be a positive whole number")
    check_baseline(baseline)
    check_batch_size(ig_internal_batch, "the internal batch (scaled copies per pass)")
    if batch_size is not None and method == "ig":
        raise ParameterError(f"batch_size={batch_size!r}: ig runs one image at a time and batches its scaled copies; "
                             "use ig_internal_batch (--internal-batch) instead")
    check_batch_size(batch_size)
    from .cams import check_masks, check_max_channels

    if masks is not None:
        if method != "rise":
            raise ParameterError(f"masks={masks!r} (--masks) is used only by rise, not {method}; drop it")
        check_masks(masks)
    if max_channels is not None:
        if method != "scorecam":
            raise ParameterError(f"max_channels={max_channels!r} (--max-channels) is used only by scorecam, not "
                                 f"{method}; drop it")
        check_max_channels(max_channels)
    if rules is not None:
        if "rules" not in m.options:
            takes = [n for n, x in M.REGISTRY.items() if "rules" in x.options]
            raise ParameterError(f"rules= chooses backward rules per layer for {_and(takes)}, not {method}; "
                                 "drop rules")
        resolve_rules(rules)
