"""The shape of the code: no import circles, no module over 500 lines, every family documented,
and the public API (`cnnviz.<name>`) generated from the engines' declarations.

The import graph is read from the source (every `import`, also inside functions), so a lazy
import that closes a circle counts too: a circle is a layering mistake whether or not Python
happens to survive it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"cnnviz": ROOT / "cnnviz", "cnnviz_cli": ROOT / "cli"}
MAX_LINES = 500


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [pkg, *f.relative_to(folder).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return found


def _nearest(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods=None) -> dict[str, set[str]]:
    """module -> the modules of cnnviz/cnnviz_cli it imports. `from P import x` is an edge to the
    submodule P.x when x is one, else to P."""
    mods = mods or modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {_nearest(a.name, mods) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else _nearest(target, mods))
        deps.discard(None)
        deps.discard(name)
        graph[name] = deps
    return graph


def circles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_planted_circle_and_a_lazy_one(tmp_path):
    # a planted package: a -> b at the top, b -> a inside a function; c is clean
    pkg = tmp_path / "cnnviz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\n")
    mods = {f"cnnviz.{p.stem}" if p.stem != "__init__" else "cnnviz": (p, p.stem == "__init__")
            for p in pkg.glob("*.py")}
    assert circles(import_graph(mods)) == [["cnnviz.a", "cnnviz.b"]]


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p, _ in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


FAMILIES = ["attribution", "occlusion", "receptive_field", "units", "featvis", "experiments", "concepts", "audit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_a_package_that_says_what_is_in_it(family):
    init = ROOT / "cnnviz" / "engines" / family / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc) > 80, f"{init} needs a docstring saying what is in the family"
    # every module of the family is named in its docstring
    for f in init.parent.glob("*.py"):
        if f.name != "__init__.py" and family not in ("featvis", "audit"):
            assert f.stem in doc, f"{f.name} is not described in {init}"


def test_engines_never_import_the_renderers_or_the_command_line():
    graph = import_graph()
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith("cnnviz.engines")
                 for d in deps if d.startswith(("cnnviz.render", "cnnviz_cli")))
    assert not bad, bad


# --------------------------------------------------------------------------------------------------
# the public API comes from the engines' declarations

def test_import_cnnviz_imports_no_engine_and_no_renderer():
    code = ("import sys, cnnviz; dir(cnnviz); cnnviz.__all__; "
            "print(sorted(m for m in sys.modules if m.startswith(('cnnviz.engines', 'cnnviz.render', 'matplotlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_result_kind_is_made_by_a_function_of_the_top_level_api():
    import inspect

    import cnnviz
    from cnnviz.analyses import kinds, result_type

    returns = {}
    for name in cnnviz.__all__:
        f = getattr(cnnviz, name)
        if callable(f) and not isinstance(f, type):
            returns[name] = str(inspect.signature(f).return_annotation)
    for kind in kinds():
        cls = result_type(kind).__name__
        assert any(cls in r for r in returns.values()), f"no cnnviz.<function> returns a {cls} ({kind!r})"


def test_every_declared_name_is_reachable_and_listed():
    import cnnviz

    declared = cnnviz._api()
    assert {"occlusion", "attribute", "gradcam", "lrp_epsilon", "scorecam", "rise", "compare", "audit", "probe",
            "invariance", "simplify", "neighbours", "scoremap", "featvis", "wrap"} <= set(declared)
    for name, module in declared.items():
        obj = getattr(cnnviz, name)
        assert name in cnnviz.__all__ and name in dir(cnnviz)
        assert obj.__name__.rpartition(".")[2] == name and (getattr(obj, "__module__", None) or obj.__name__) \
            .startswith(module), (name, module)
    with pytest.raises(AttributeError, match="no attribute 'gradcamm'"):
        cnnviz.gradcamm  # noqa: B018


def test_the_method_functions_are_the_method_table():
    from cnnviz.engines.attribution import api, methods

    assert set(api.__api__) == {api.python_name(m) for m in methods.names()} | {"compare", "smoothgrad"}
    from cnnviz_cli.attribution.compare import DEFAULT_METHODS

    assert tuple(DEFAULT_METHODS.split(",")) == api.DEFAULT_COMPARE


def test_a_method_function_equals_attribute_with_that_method():
    import numpy as np
    import torchvision
    from helpers import random_model, sample_image

    import cnnviz

    lm, photo = random_model(torchvision.models.resnet18, 5, 64, 72), sample_image(0)
    a = cnnviz.saliency(lm, photo)
    b = cnnviz.attribute(lm, photo, "saliency")
    assert a.params["method"] == "saliency" and np.array_equal(a.map, b.map)


def test_old_import_paths_still_work_and_name_the_new_one():
    code = ("import warnings; warnings.simplefilter('error'); "
            "from cnnviz.engines.gradients import attribute")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "cnnviz.engines.gradients moved to cnnviz.engines.attribution.gradients" in res.stderr
    code = ("import warnings; warnings.simplefilter('ignore'); import cnnviz.rules as old; "
            "import cnnviz.engines.attribution.rules as new; from cnnviz.engines.receptive_field import "
            "effective_receptive_field; from cnnviz.engines.occlusion import occlusion; print(old is new)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "True", res.stderr


def test_a_result_kind_imports_only_the_engine_that_declares_it():
    """Loading a saved result of a kind declared in an engine module imports that module (and what it
    imports), not every engine: the whole set once pulled in torchvision's torch._dynamo, seconds
    before any drawing."""
    code = ("import sys; from cnnviz.analyses import result_type; result_type('topk'); "
            "print(sorted(m for m in sys.modules if m.startswith('cnnviz.engines.') and m.count('.') >= 3 "
            "or m == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["cnnviz.engines.experiments.datasets", "cnnviz.engines.units.topk"], out


def test_redrawing_a_saved_featvis_result_needs_no_torch(tmp_path):
    from test_result_files import _make

    _make("featvis").save(tmp_path / "f.npz")
    code = (f"import sys; from cnnviz.results import load_result; load_result({str(tmp_path / 'f.npz')!r})"
            f".render({str(tmp_path / 'f.png')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert out.stdout.strip() == "False" and (tmp_path / "f.png").stat().st_size > 1000, out.stderr


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try)):
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            names |= {(a.asname or a.name) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))
                      for a in n.names}
            names |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names


def test_every_relative_import_names_an_existing_module():
    """A relative import inside a function runs only when called: one left at the wrong depth after a
    move (`from ..layers` in cnnviz/render/attribution/) fails first at a user's call."""
    mods = modules()
    bad = []
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if target not in mods:
                bad.append(f"{where} from {'.' * node.level}{node.module or ''}: no such module")
                continue
            defined = _top_level_names(mods[target][0])
            bad += [f"{where} {a.name} not in {target}" for a in node.names
                    if f"{target}.{a.name}" not in mods and a.name not in defined and a.name != "*"]
    assert not bad, bad
