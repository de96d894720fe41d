"""Analyses declare themselves where they are defined (cnnviz.analyses): a toy engine in one module
outside the package, installed as pip would (a .dist-info with a `cnnviz.analyses` entry point),
gets its command in `cnnviz`, its figure, a saved result and `cnnviz render`, with nothing in cnnviz
naming it; results.py imports no engine; a broken plug-in only warns."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from cnnviz import analyses
from cnnviz.results import Result, load_result

from helpers import install_plugin, sample_image

TOY = textwrap.dedent('''
    """A toy analysis: the mean brightness of each row of the photo."""
    import dataclasses
    from typing import ClassVar

    import click
    import numpy as np

    from cnnviz.results import Result


    @dataclasses.dataclass
    class RowsResult(Result):
        kind: ClassVar[str] = "toy_rows"
        renderer: ClassVar = "cnnviz_toy_rows:draw"
        rows: np.ndarray = None


    def rows(image) -> RowsResult:
        from cnnviz.images import load_image

        pixels = np.asarray(load_image(image), dtype=np.float32)
        return RowsResult(params={"image_size": list(pixels.shape[:2])}, provenance={},
                          rows=pixels.mean(axis=(1, 2)).astype(np.float32))


    def draw(result, *, width, layout, **options):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(width, width / 3), layout="constrained")
        ax.plot(result.rows)
        ax.set_xlabel("row")
        ax.set_ylabel("mean brightness")
        return fig


    def register(cli):
        from cnnviz_cli.output import check, figure_options, write

        @cli.command("toy-rows")
        @click.argument("image", type=click.Path())
        @click.option("--out", required=True, type=click.Path())
        @click.option("--save", default=None, type=click.Path())
        @figure_options
        def toy_rows(image, out, save):
            """Mean brightness of each row of IMAGE."""
            check(out, save)
            write(rows(image), out, save)
''')


def _install(site, module: str, body: str, entry: str):
    install_plugin(site, module, body, analyses.ENTRY_POINT_GROUP, entry)


def _cli(args, site, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cnnviz_cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


@pytest.fixture
def fresh_plugins(monkeypatch):
    monkeypatch.setattr(analyses, "_plugins", None)
    yield
    analyses._plugins = None


def test_a_toy_engine_in_one_outside_module_runs_through_the_cli_and_render(tmp_path, monkeypatch, fresh_plugins):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "cnnviz_toy_rows", TOY, "rows = cnnviz_toy_rows")
    photo = sample_image(0)

    res = _cli(["--help"], site)
    assert res.returncode == 0 and "toy-rows" in res.stdout, res.stdout + res.stderr
    fig, saved = tmp_path / "rows.png", tmp_path / "rows.npz"
    res = _cli(["toy-rows", str(photo), "--out", str(fig), "--save", str(saved)], site)
    assert res.returncode == 0, res.stderr
    assert fig.is_file() and saved.is_file() and saved.with_suffix(".json").is_file()
    assert json.loads(saved.with_suffix(".json").read_text())["kind"] == "toy_rows"

    narrow = tmp_path / "narrow.png"
    res = _cli(["render", str(saved), "--out", str(narrow), "--width", "3.5"], site)
    assert res.returncode == 0, res.stderr
    wide_px, narrow_px = Image.open(fig).size[0], Image.open(narrow).size[0]
    assert abs(narrow_px / wide_px - 0.5) < 0.02, "the saved result redraws at the width asked"

    # in this process: the unknown kind is found through the entry point, and holds what it should
    monkeypatch.syspath_prepend(str(site))
    loaded = load_result(saved)
    assert type(loaded).__name__ == "RowsResult" and isinstance(loaded, Result)
    truth = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(loaded.rows, truth, rtol=1e-5)
    assert "toy_rows" in analyses.kinds()


def test_a_broken_plugin_warns_in_one_line_and_the_built_in_commands_still_work(tmp_path, fresh_plugins):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "cnnviz_broken", "raise RuntimeError('half-installed')\n", "broken = cnnviz_broken")
    res = _cli(["rf", "--model", "alexnet"], site)
    assert res.returncode == 0, res.stderr
    assert "plug-in 'broken'" in res.stderr and "half-installed" in res.stderr
    assert "Traceback" not in res.stderr


def test_results_import_no_engine_and_every_built_in_kind_is_found_lazily():
    code = ("import sys, cnnviz.results as r; "
            "print(sorted(m for m in sys.modules if m.startswith('cnnviz.engines') or m.startswith('cnnviz.render')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    kinds = set(analyses.kinds())
    assert {"occlusion", "gradients", "compare", "sanity", "featvis", "filters", "activations", "receptive_field",
            "patches", "topk", "invariance"} <= kinds
    for kind in kinds:  # every declared renderer resolves to a function
        cls = analyses.result_type(kind)
        assert cls.renderer is None or callable(analyses.renderer(cls)), kind
