"""Every notebook in notebooks/ runs top to bottom, headless, without an error, and the occlusion
figure appears as an image.

The kernel is started from a kernel spec written into a temporary folder, pointing at this very
interpreter (sys.executable). The test then depends neither on a user-level `python3` spec (which
may belong to another Python) nor on `python -m ipykernel install` having been run: a fresh venv
with `pip install -e .[test]` is enough.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "cnnviz-test-python"
CELL_TIMEOUT = 300  # seconds per cell; a 2-core CPU runs each occlusion cell in well under a minute


def _notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _kernel_manager(tmp: Path) -> KernelManager:
    spec_dir = tmp / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (cnnviz tests)",
            "language": "python", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def test_there_are_notebooks():
    assert _notebooks(), f"no notebooks in {NOTEBOOKS}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    stored = [c for c in nb.cells if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not stored, f"{path.name} is stored with outputs; clear them before committing"

    # Keep the notebook's figures out of any window, and its files out of the repository.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("CNNVIZ_QUICK", "1")  # notebooks that optimize images use few steps and small sizes
    client = nbclient.NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT, allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the notebook's working directory
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell raised an error:\n{e}")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs: {[e.get('ename') for e in errors]}"
    images = [c for c in nb.cells if c.cell_type == "code"
              if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert images, f"{path.name}: no cell produced a PNG image"
    if "occlusion" in path.stem:
        # The cell whose last line is the result shows the occlusion figure through _repr_png_.
        shown = [c for c in images if "result" in c.source.strip().splitlines()[-1]]
        assert shown, f"{path.name}: the occlusion figure was not displayed"
    # No repository files were written by the notebook (it writes only under a temporary folder).
    assert not list(NOTEBOOKS.glob("*.npz")) and not list(NOTEBOOKS.glob("*.pdf"))
