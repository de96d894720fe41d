"""The installed `cnnviz` executable as a process: Ctrl-C during start-up, `--version` without
torch, a torchvision download that cannot happen, a factory module named like an installed
package in the working directory, an output folder that cannot be written.

Each test starts the real entry point (the console script beside this Python) in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import SAMPLE, sample_image

CNNVIZ = Path(sys.executable).with_name("cnnviz")
pytestmark = pytest.mark.skipif(not CNNVIZ.is_file(), reason=f"no installed cnnviz entry point at {CNNVIZ}")
needs_sample = pytest.mark.skipif(not (SAMPLE / "images").is_dir(), reason=f"ImageNet sample not found at {SAMPLE}")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "CNNVIZ_DEBUG"}
    env.update(MPLBACKEND="Agg", **extra)
    return env


def _run(args, cwd, timeout=120, **env):
    t0 = time.perf_counter()
    res = subprocess.run([str(CNNVIZ), *map(str, args)], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                         timeout=timeout)
    return res, time.perf_counter() - t0


def _one_error_line(res) -> str:
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "internal error" not in lines[0], res.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------
# A. Ctrl-C at start-up

@pytest.fixture(scope="module")
def python_start_up() -> float:
    """Seconds this machine's Python takes to start (site and .pth files included) before the
    first line of any program runs: a signal before then is Python's own business (it reports
    `Fatal Python error: init_import_site`), not cnnviz's. The slowest of three runs, plus a fifth."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=_env(), check=True)
        times.append(time.perf_counter() - t0)
    # plus the entry script's own first import (the editable install's finder locating cnnviz_cli), which
    # comes before cnnviz's first line can set a handler: a signal landing there was seen in CI at 0.0 s
    return 1.2 * max(times) + 0.03


@pytest.mark.slow
@needs_sample
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.4, 0.8, 1.5])
def test_ctrl_c_during_start_up_prints_aborted_and_exits_130(delay, tmp_path, python_start_up):
    """SIGINT `delay` s after Python has started, while the command imports click, cnnviz, torch,
    or loads the model: one `Aborted.` line and status 130, as a Ctrl-C later on, never a
    traceback. (On this machine Python itself starts in about 0.03-0.1 s.)"""
    proc = subprocess.Popen([str(CNNVIZ), "occlusion", str(sample_image(0)), "--out", str(tmp_path / "fig.png"),
                             "--quiet"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(python_start_up + delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 60 s after Ctrl-C at {delay} s")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == ["Aborted."], err
    assert proc.returncode == 130
    assert list(tmp_path.iterdir()) == []  # no figure, no temp file


def test_ctrl_c_where_python_cannot_raise_it_still_aborts(tmp_path):
    """A Ctrl-C that lands in a weakref callback (as in importlib's module-lock callbacks while torch
    imports, seen once in CI at 1.5 s) is "Exception ignored ... Traceback" for Python, and the
    program runs on. The command must still end as `Aborted.`, status 130, nothing written.
    Made deterministic here: the model factory drops an object whose weakref callback raises."""
    (tmp_path / "lockcb.py").write_text(
        "import time, weakref\n"
        "class _Lock: pass\n"
        "def _cb(ref):\n"
        "    raise KeyboardInterrupt\n"
        "def build():\n"
        "    lock = _Lock(); ref = weakref.ref(lock, _cb)\n"
        "    del lock\n"
        "    for _ in range(10000000): pass\n"
        "    raise RuntimeError('the Ctrl-C was lost')\n")
    res, _ = _run(["layers", "--model", "./lockcb.py:build"], cwd=tmp_path)
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == ["Aborted."], res.stderr
    assert res.returncode == 130
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["lockcb.py"]


def test_version_does_not_import_torch():
    """`--version` (and every command's start) must not pay for importing torch: the version
    comes from the package metadata; the CLI module imports no part of cnnviz."""
    res = subprocess.run([sys.executable, "-c", "import signal, sys; import cnnviz_cli.main; "
                          "print(sorted(m for m in ('torch', 'cnnviz', 'numpy') if m in sys.modules)); "
                          "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    # and importing it leaves Python's Ctrl-C handling as it was (its start-up handler is undone)
    assert res.stdout.split() == ["[]", "True"]
    import cnnviz

    res, _ = _run(["--version"], cwd=Path.cwd())
    assert res.returncode == 0 and res.stdout.strip() == f"cnnviz, version {cnnviz.__version__}"


# --------------------------------------------------------------------------------------------------
# B, C. a torchvision download that cannot happen

@needs_sample
def test_missing_torchvision_weights_fail_fast_without_downloading(tmp_path):
    """No cached resnet18 weights and no way to the server (here: a proxy on a closed local port,
    so that the test is the same on a machine with network): one error line naming the cache path,
    no `Downloading: ...` line, no directory left in TORCH_HOME, in a few seconds."""
    with socket_closed_port() as port:
        home = tmp_path / "torch_home"
        home.mkdir()
        res, seconds = _run(["predict", sample_image(0), "--model", "resnet18"], cwd=tmp_path, timeout=120,
                            TORCH_HOME=str(home), HTTPS_PROXY=f"http://127.0.0.1:{port}",
                            https_proxy=f"http://127.0.0.1:{port}", NO_PROXY="", no_proxy="")
    line = _one_error_line(res)
    assert "Downloading" not in res.stdout + res.stderr
    from torchvision.models import ResNet18_Weights

    from cnnviz.sources.torchvision import torchvision_cache_path

    expected = home / "hub" / "checkpoints" / torchvision_cache_path(ResNet18_Weights.IMAGENET1K_V1).name
    assert repr(str(expected)) in line and "--weights-file" in line
    assert list(home.iterdir()) == [], "a failed download left directories in TORCH_HOME"
    assert seconds < 30, f"took {seconds:.1f} s"  # importing torch + torchvision takes most of it


class socket_closed_port:
    """A local TCP port with nothing listening on it (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------------
# D. a factory never comes from the working directory by accident

_TRAP = '''
import pathlib
pathlib.Path(__file__).with_name("ran.txt").write_text("this file ran")
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
'''


def test_module_factory_does_not_run_a_file_of_the_working_directory(tmp_path):
    (tmp_path / "captum.py").write_text(_TRAP)
    res, _ = _run(["layers", "--model", "captum:build"], cwd=tmp_path)
    line = _one_error_line(res)
    assert not (tmp_path / "ran.txt").exists(), "a captum.py of the working directory was executed"
    assert "./captum.py:build" in line  # how to run it on purpose
    # named as a file, it runs (and is the user's decision)
    res, _ = _run(["layers", "--model", "./captum.py:build"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ran.txt").is_file() and "Conv2d" in res.stdout


def test_help_of_model_says_a_factory_is_code_that_runs():
    res, _ = _run(["layers", "--help"], cwd=Path.cwd())
    text = " ".join(res.stdout.split())
    assert "path/to/file.py:factory" in text and "code that runs" in text and "not searched" in text


# --------------------------------------------------------------------------------------------------
# E. an output folder that cannot be written

def _check_read_only_message(res, ro: Path) -> None:
    line = _one_error_line(res)
    assert repr(str(ro)) in line and "not writable" in line
    assert "--out" in line and f"chmod u+w {ro}" in line
    assert list(ro.iterdir()) == []


@needs_sample
def test_read_only_output_folder_names_the_fix(tmp_path):
    """A real read-only folder: needs a user without root's override of permissions."""
    if os.geteuid() == 0:
        pytest.skip("running as root: every folder is writable (see the next test)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res, _ = _run(["occlusion", sample_image(0), "--out", ro / "fig.png"], cwd=tmp_path)
        _check_read_only_message(res, ro)
    finally:
        ro.chmod(0o755)


@needs_sample
def test_read_only_output_folder_message_as_root(tmp_path, monkeypatch):
    """Root writes anywhere, so the permission check itself is made to answer `not writable`
    for one folder (what it answers for a user on a read-only folder); the message is under test."""
    from click.testing import CliRunner

    import cnnviz.files as files
    from cnnviz_cli.main import cli

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(files.os, "access",
                        lambda path, mode, **kw: False if Path(path) == ro and mode & os.W_OK else
                        real_access(path, mode, **kw))
    res = CliRunner().invoke(cli, ["occlusion", str(sample_image(0)), "--out", str(ro / "fig.png")])
    res.returncode = res.exit_code
    _check_read_only_message(res, ro)
