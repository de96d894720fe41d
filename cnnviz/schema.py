"""What a saved result must hold before it is drawn: a small schema per result kind.

A result's sidecar (JSON) and arrays (npz) can be edited, truncated or forged by hand. Loading
checks them against the kind's declared schema so that `cnnviz render` says, in one line, which
field is wrong instead of failing somewhere inside matplotlib.

A schema has two parts, declared on each Result class:
- `param_schema`: params key -> a check (`INT`, `NUMBER`, `TEXT`, `PAIR`, `FLOATS(3)`, ...). The
  keys listed are those the renderer reads unconditionally; optional ones may be wrapped in
  `optional(...)` (absent or null is fine, a wrong type is not).
- `array_schema`: array name -> `Arr(kinds, dims)`: dtype kinds as NumPy spells them ("f" float,
  "iu" integer, "U" text, "b" bool) and the shape as a tuple whose entries are whole numbers
  (fixed), names (the same name must be the same size in every array of the result) or None (any).
  A tuple of shapes allows several ranks. Arrays not listed are not checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ResultError


@dataclass(frozen=True)
class Check:
    """A check of one JSON value: `test(value)` is True when the value is acceptable."""

    test: Callable[[Any], bool]
    expect: str
    optional: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


INT = Check(_is_int, "a whole number")
NUMBER = Check(_is_num, "a finite number")
TEXT = Check(lambda v: isinstance(v, str), "text")
BOOL = Check(lambda v: isinstance(v, bool), "true or false")
PAIR = Check(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
             "a list of two positive whole numbers")
TEXTS = Check(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of texts")
DICT = Check(lambda v: isinstance(v, dict), "an object")


def FLOATS(n: int) -> Check:  # noqa: N802 (reads like the other constants)
    return Check(lambda v: isinstance(v, list) and len(v) == n and all(_is_num(x) for x in v),
                 f"a list of {n} numbers")


def optional(check: Check) -> Check:
    return Check(check.test, check.expect, optional=True)


@dataclass(frozen=True)
class Arr:
    """An array's dtype kinds and allowed shape(s)."""

    kinds: str
    shape: tuple | list[tuple]

    def shapes(self) -> list[tuple]:
        return list(self.shape) if isinstance(self.shape, list) else [self.shape]


def _describe(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) if shape else "a scalar"


def _kinds_text(kinds: str) -> str:
    words = {"f": "float", "i": "integer", "u": "integer", "U": "text", "b": "bool", "S": "bytes", "O": "object"}
    return " or ".join(dict.fromkeys(words[k] for k in kinds))


def check_meta(meta: Any, where: str) -> None:
    """The parts every sidecar has: a JSON object with a text `kind` and object `params`/`provenance`."""
    if not isinstance(meta, dict):
        raise ResultError(f"{where}: the sidecar must be a JSON object, found {type(meta).__name__}; save the result "
                          "again with --save")
    if not isinstance(meta.get("kind"), str):
        raise ResultError(f"{where}: field 'kind' must be text naming the result kind, found {meta.get('kind')!r}")
    for key in ("params", "provenance"):
        if key in meta and not isinstance(meta[key], dict):
            raise ResultError(f"{where}: field {key!r} must be a JSON object, found {_short(meta[key])}")
    if "params" not in meta:
        raise ResultError(f"{where}: field 'params' is missing; save the result again with --save")


def check_params(params: dict, schema: dict[str, Check], where: str, kind: str) -> None:
    for key, check in schema.items():
        if key not in params or params[key] is None:
            if check.optional:
                continue
            raise ResultError(f"{where}: params.{key} is missing (a {kind} result needs it: {check.expect})")
        if not check.test(params[key]):
            raise ResultError(f"{where}: params.{key} must be {check.expect}, found {_short(params[key])}")


def check_arrays(arrays: dict[str, np.ndarray], schema: dict[str, Arr], where: str, kind: str) -> None:
    sizes: dict[str, tuple[int, str]] = {}
    for name, spec in schema.items():
        a = arrays.get(name)
        if a is None:
            continue  # missing arrays are reported by the loader
        if a.dtype.kind not in spec.kinds:
            raise ResultError(f"{where}: array {name!r} must hold {_kinds_text(spec.kinds)} values, found {a.dtype}")
        fits = [s for s in spec.shapes() if len(s) == a.ndim and all(isinstance(d, str) or d is None or d == n
                                                                      for d, n in zip(s, a.shape))]
        if not fits:
            want = " or ".join(_describe(s) for s in spec.shapes())
            raise ResultError(f"{where}: array {name!r} has shape {_describe(a.shape)}, a {kind} result needs {want}")
        for d, n in zip(fits[0], a.shape):
            if isinstance(d, str):
                seen = sizes.setdefault(d, (n, name))
                if seen[0] != n:
                    raise ResultError(f"{where}: array {name!r} has {n} along {d}, but {seen[1]!r} has {seen[0]}; "
                                      "the arrays do not belong together")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
