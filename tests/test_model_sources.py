"""Model sources as plug-ins: a package that declares an entry point in `cnnviz.model_sources`
(here a real distribution's metadata on sys.path, found by importlib.metadata as pip's would be)
adds model names to `load_model` and the CLI; `register_source` does the same from a program; a
broken plug-in is reported and does not stop the built-in sources."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cnnviz
from cnnviz import sources
from cnnviz.errors import ModelError
from cnnviz.models import load_model

from helpers import install_plugin, sample_image

PLUGIN = textwrap.dedent('''
    import torch
    from cnnviz.models import LoadedModel, Preprocessing
    from cnnviz.sources import ModelSource

    def _load(name, weights, weights_file, trust):
        torch.manual_seed(int(name.split(":")[1]))
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
        return LoadedModel(model, name, "toy weights", Preprocessing(crop=(32, 32), resize=36), ["ant", "bee", "cow"])

    SOURCE = ModelSource("toy zoo", claims=lambda name: name.startswith("toy:"), load=_load,
                         listing=lambda: [{"name": "toy:SEED", "source": "toy zoo", "weights": "seeded",
                                           "available": True, "default": False}])
''')


def _install(folder, module: str, body: str, entry: str):
    install_plugin(folder, module, body, "cnnviz.model_sources", entry)


@pytest.fixture
def fresh_sources(monkeypatch):
    monkeypatch.setattr(sources, "_from_entry_points", None)
    monkeypatch.setattr(sources, "_added", [])
    yield
    sources._from_entry_points = None


def test_an_entry_point_adds_a_source_to_python_and_to_the_cli(tmp_path, monkeypatch, fresh_sources):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "cnnviz_toy_zoo", PLUGIN, "toys = cnnviz_toy_zoo:SOURCE")
    monkeypatch.syspath_prepend(str(site))
    lm = load_model("toy:3")
    assert lm.name == "toy:3" and lm.categories == ["ant", "bee", "cow"] and lm.weights == "toy weights"
    assert any(r["name"] == "toy:SEED" for r in cnnviz.available_models())
    assert load_model("efficientnet_lite0", weights="none").name == "efficientnet_lite0", "built-ins still answer"

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "cnnviz_cli.main"]
    res = subprocess.run(cli + ["models"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "toy:SEED" in res.stdout and "toy zoo" in res.stdout, res.stderr
    res = subprocess.run(cli + ["predict", str(sample_image(0)), "--model", "toy:3", "--top", "2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert any(name in res.stdout for name in ("ant", "bee", "cow"))


def test_a_broken_plugin_is_reported_and_the_built_ins_still_work(tmp_path, monkeypatch, fresh_sources):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "cnnviz_broken_zoo", "raise RuntimeError('no toys today')\n", "broken = cnnviz_broken_zoo:SOURCE")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(UserWarning, match="'broken'.*RuntimeError: no toys today"):
        lm = load_model("efficientnet_lite0", weights="none")
    assert lm.name == "efficientnet_lite0"


def test_a_registered_source_is_asked_first(fresh_sources):
    calls = []

    def load(name, weights, weights_file, trust):
        calls.append((name, weights))
        return cnnviz.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), ["no", "yes"],
                           input_size=8, name=name)

    sources.register_source(sources.ModelSource("mine", claims=lambda n: n == "alexnet", load=load))
    lm = load_model("alexnet", weights="none")  # the registered source takes the torchvision name
    assert calls == [("alexnet", "none")] and lm.categories == ["no", "yes"]
    with pytest.raises(TypeError, match="ModelSource"):
        sources.register_source(lambda name: None)


BROKEN = {
    "claims": 'SOURCE = ModelSource("bad claims", claims=lambda n: 1 / 0, load=lambda *a: None)\n',
    "listing": 'SOURCE = ModelSource("bad listing", claims=lambda n: False, load=lambda *a: None,\n'
               '                     listing=lambda: [][3])\n',
    "rows": 'SOURCE = ModelSource("bad rows", claims=lambda n: False, load=lambda *a: None,\n'
            '                     listing=lambda: [{"name": "half"}, "not a row"])\n',
    "load": 'SOURCE = ModelSource("bad load", claims=lambda n: n == "bad:1", load=lambda *a: None)\n',
    "raises": 'SOURCE = ModelSource("bad raise", claims=lambda n: n == "bad:1", load=lambda *a: {}["x"])\n',
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_plugin_that_misbehaves_is_a_one_line_warning_or_error_and_the_built_ins_work(tmp_path, monkeypatch,
                                                                                      fresh_sources, kind):
    site = tmp_path / "site"
    site.mkdir()
    _install(site, f"cnnviz_bad_{kind}", "from cnnviz.sources import ModelSource\n" + BROKEN[kind],
             f"bad = cnnviz_bad_{kind}:SOURCE")
    monkeypatch.syspath_prepend(str(site))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "cnnviz_cli.main"]
    if kind in ("load", "raises"):
        with pytest.raises(ModelError, match="bad"):
            load_model("bad:1")
        res = subprocess.run(cli + ["predict", str(sample_image(0)), "--model", "bad:1"], capture_output=True,
                             text=True, env=env, timeout=300)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "internal error" not in res.stderr and "bad" in res.stderr
        return
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_model("efficientnet_lite0", weights="none").name == "efficientnet_lite0"
        rows = cnnviz.available_models()
    assert any(r["name"] == "efficientnet_lite0" for r in rows) and all("source" in r for r in rows)
    assert any("bad" in str(w.message) and "skipped" in str(w.message) for w in caught), [str(w.message) for w in caught]
    cmd = ["models"] if kind != "claims" else ["predict", str(sample_image(0)), "--model", "efficientnet_lite0"]
    res = subprocess.run(cli + cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and ("efficientnet_lite0" in res.stdout or kind == "claims"), res.stderr
    warned = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(warned) == 1 and warned[0].startswith("Warning: cnnviz model source 'bad"), res.stderr
