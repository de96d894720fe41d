"""What a non-editable install ships: pyproject.toml lists its packages one by one, so a new
subpackage left off the list works in the editable checkout the tests run in and is missing from
the wheel a user installs (as cnnviz.engines.occlusion.incremental once was: `--mode incremental` would have
failed with ModuleNotFoundError)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_in_the_tree_is_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    dirs = {name: ROOT / path for name, path in conf.get("package-dir", {}).items()}
    dirs.setdefault("cnnviz", ROOT / "cnnviz")
    found = set()
    for top, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((top, *rel)))
    assert found, "no packages found: the test is looking in the wrong place"
    assert "cnnviz.engines.occlusion.incremental" in found
    assert found <= listed, f"packages missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed <= found, f"listed in pyproject.toml but not in the tree: {sorted(listed - found)}"
    modules = {p.parent for p in ROOT.joinpath("cnnviz").rglob("*.py") if "__pycache__" not in p.parts}
    assert all((m / "__init__.py").is_file() for m in modules), "a folder of modules without __init__.py"


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """Data read at run time (the ImageNet class names) must be listed as package data, or an installed
    cnnviz has no class names."""
    import fnmatch

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = conf.get("package-data", {})
    files = [p for p in ROOT.joinpath("cnnviz").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
             and "__pycache__" not in p.parts]
    assert any(p.name == "imagenet_classes.txt" for p in files)
    for p in files:
        package = ".".join(p.parent.relative_to(ROOT).parts)
        assert any(fnmatch.fnmatch(p.name, pat) for pat in data.get(package, [])), \
            f"{p.relative_to(ROOT)} is not in pyproject.toml [tool.setuptools.package-data] {package!r}"
