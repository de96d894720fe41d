"""The README's Python examples can be pasted in order: every name a block uses is a builtin or
defined by that block or an earlier one (the featvis example once used `lm` before the README
defined it), and every `cnnviz.X` it calls exists."""

import ast
import builtins
import re
from pathlib import Path

import cnnviz

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _defined(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def test_readme_python_blocks_define_what_they_use():
    blocks = _blocks()
    assert len(blocks) >= 3
    known = set(dir(builtins))
    for i, code in enumerate(blocks):
        tree = ast.parse(code)
        known |= _defined(tree)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        missing = used - known
        assert not missing, f"README python block {i + 1} uses {sorted(missing)} before defining them:\n{code}"


def test_readme_calls_only_cnnviz_names_that_exist():
    for code in _blocks():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cnnviz":
                assert hasattr(cnnviz, node.attr), f"README uses cnnviz.{node.attr}, which does not exist"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnviz"):
                mod = __import__(node.module, fromlist=["_"])
                for a in node.names:
                    assert hasattr(mod, a.name), f"README imports {a.name} from {node.module}, which has no such name"


def test_every_markdown_table_is_one_block():
    """A blank line inside a table ends it: the rows after it render as raw text (the command table
    once lost its last seven rows that way)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i in range(2, len(lines)):
        if lines[i].startswith("|") and not lines[i - 1].strip() and lines[i - 2].startswith("|"):
            raise AssertionError(f"README.md line {i + 1}: a table row after a blank line that split its table")
