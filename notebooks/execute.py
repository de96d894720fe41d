"""Run the notebooks top to bottom and store them with their outputs, so that they read (on GitHub,
in a viewer) with their figures before anyone runs them.

    python notebooks/execute.py                 # every notebook, written back in place
    python notebooks/execute.py 02_backprop     # only those named
    python notebooks/execute.py --check         # run in test mode, write nothing (what the tests do)

Notebooks with slow optimizations (04) read their amount of work from CNNVIZ_NOTEBOOK_MODE: the
stored outputs are made in "full" mode (the README figures' settings); --mode changes it.

The kernel runs this very interpreter (a kernel spec written into a temporary folder), in the
notebooks/ folder, with figures drawn inline; files the notebooks write go to a temporary folder.
Stored outputs carry no run-dependent noise: execution counts are renumbered 1, 2, ... and the
kernel's timing metadata is dropped, so re-running changes the file only where an output changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL = "cnnviz-notebook-python"
CELL_TIMEOUT = 900  # seconds per cell


def notebooks(names=()) -> list[Path]:
    found = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if names:
        found = [p for p in found if p.stem in names or p.name in names]
    return found


def kernel_manager(tmp: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (cnnviz)",
            "language": "python", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    ksm = KernelSpecManager(kernel_dirs=[str(tmp / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def cleared(nb):
    """A copy of the notebook without outputs (the run starts from the sources only)."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def execute(path: Path, tmp: Path, mode: str = "test"):
    """The notebook at `path`, run from its sources in `tmp`'s environment; returns the notebook."""
    import nbclient
    import nbformat

    nb = cleared(nbformat.read(path, as_version=4))
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TMPDIR": str(tmp),
           "CNNVIZ_NOTEBOOK_MODE": mode, "CNNVIZ_QUICK": "1" if mode == "test" else "0",
           "CNNVIZ_CACHE_DIR": str(tmp / "cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    km = kernel_manager(tmp)
    try:
        client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, allow_errors=False,
                                         resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()
    finally:
        if km.has_kernel:  # a kernel manager passed in is not the client's to shut down
            km.shutdown_kernel(now=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _smaller_png(png_b64: str) -> str:
    """The same picture as a base64 PNG, re-encoded losslessly (zlib at its best, a palette where it
    has at most 256 colours): figures stay PNG, as sharp as drawn (a JPEG blurs the text)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    raw = base64.b64decode(png_b64)
    im = Image.open(io.BytesIO(raw))
    im.load()
    if im.mode == "RGB" and im.getcolors(256) is not None:
        pal = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        if np.array_equal(np.asarray(pal.convert("RGB")), np.asarray(im)):  # exact: every colour kept
            im = pal
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() < len(raw) else png_b64


def tidy(nb):
    """Execution counts 1, 2, ... and no timing metadata: stored outputs change only when they do.
    Figures are stored as PNG (lossless: JPEG blurs 7 pt text), re-encoded as small as that allows."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if cell.execution_count is not None:
            count += 1
            cell.execution_count = count
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = count
        for out in cell.outputs:
            png = out.get("data", {}).get("image/png")
            if png:
                out["data"]["image/png"] = _smaller_png(png)
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to run (stem or file name); default all")
    ap.add_argument("--mode", choices=["test", "quick", "full"], default="full",
                    help="amount of work of the slow notebooks [%(default)s]")
    ap.add_argument("--check", action="store_true", help="run them in test mode and write nothing")
    args = ap.parse_args(argv)
    import nbformat

    paths = notebooks(args.names)
    if not paths:
        print(f"no notebook named {' '.join(args.names)} in {NOTEBOOKS}", file=sys.stderr)
        return 1
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            nb = tidy(execute(path, Path(tmp), "test" if args.check else args.mode))
        if not args.check:
            nbformat.write(nb, path)
        print(f"{path.name}: ran{'' if args.check else ', stored with its outputs'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
