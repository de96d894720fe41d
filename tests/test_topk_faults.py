"""Fault tests for the data set scan (`cnnviz topk`): kills at any moment (kill -9, SIGTERM) lose
no finished work and leave no temporaries; every --units form a user types fails in one line; the
global random state is left alone; a data set of which no image can be read is an error (topk and
rf --images); outputs that cannot be written fail before any work; what "exact under torchrun"
means at another thread count.

The kill tests run the real command in subprocesses (1 thread each, so every run computes alike)
and compare with an uninterrupted run; CNNVIZ_TEST_PAUSE (see topk.fault_pause) holds a process
at a chosen moment so that the kill lands there every time.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cnnviz.engines.units.topk import scan
from cnnviz.errors import ImageError, OutputError
from cnnviz.models import load_model
from cnnviz.results import load_result

from helpers import SAMPLE, assert_empty, one_line_error

SIZE = dict(crop=(112, 112), resize=128)
PHOTOS = sorted((SAMPLE / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def lite0():
    m = load_model("efficientnet_lite0")
    m.preprocessing = dataclasses.replace(m.preprocessing, **SIZE)
    return m


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for p in PHOTOS[:24]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture
def cached_model(monkeypatch, lite0):
    """The CLI's default model is this module's small-input copy. (conftest's fixture patches
    cnnviz_cli.main._load, which the commands registered from their own modules, topk and rf,
    bound at import; the loader they call looks up cnnviz.models.load_model each time.)"""
    import cnnviz.models

    real = cnnviz.models.load_model

    def load(name="efficientnet_lite0", weights=None, weights_file=None, **kw):
        if name == "efficientnet_lite0" and weights is None and weights_file is None:
            return lite0
        return real(name, weights=weights, weights_file=weights_file, **kw)

    monkeypatch.setattr(cnnviz.models, "load_model", load)


def unreadable_files(d: Path) -> Path:
    """A folder of files that all look like images and none of which is: empty, text, a truncated
    JPEG, random bytes."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file, not a JPEG\n" * 20)
    data = PHOTOS[0].read_bytes()
    (d / "half.jpg").write_bytes(data[: len(data) // 3])
    (d / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return d


def run_cli(args):
    from cnnviz_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# B. every --units form a user would type

@pytest.mark.parametrize("units, fragment", [
    ("-3", "-3"), ("-3:5", "-3:5"), ("5:2", "5:2"), ("3:3", "3:3"), ("3:-1", "3:-1"), ("a:b:c", "a:b:c"),
    ("1:2:3", "1:2:3"), ("", "empty"), (",", "','"), ("1,,2", "1,,2"), ("junk", "junk"), ("3.5", "3.5"),
    ("0x3", "0x3"),
    # these need the layer's channel count (the model loads first)
    ("0:999", "0:999"), ("99", "99"), ("0:99999999999", "0:99999999999"), ("1,1", "twice"), ("40:", "40:")])
def test_units_forms_fail_in_one_line(cached_model, folder, units, fragment):
    res = run_cli(["topk", folder, "--layer", "_blocks.0", "--units", units, "-q"])  # _blocks.0: 16 channels
    one_line_error(res, fragment)


def test_open_range_units(cached_model, folder, tmp_path):
    """`--units 12:` is a form the help promises: the units from 12 to the layer's last channel."""
    d = tmp_path / "few"
    d.mkdir()
    for p in sorted(folder.iterdir())[:3]:
        shutil.copy(p, d / p.name)
    res = run_cli(["topk", d, "--layer", "_blocks.0", "--units", "12:", "-k", "2", "--save", tmp_path / "r.npz",
                   "-q"])
    assert res.exit_code == 0, res.output
    assert load_result(tmp_path / "r.npz").units.tolist() == [12, 13, 14, 15]


# --------------------------------------------------------------------------------------------------
# D. the global random state

def test_global_random_state_untouched(lite0, folder):
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    scan(lite0, folder, "_blocks.0", units="0:2", k=2, batch_size=12, device="cpu", progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


# --------------------------------------------------------------------------------------------------
# E. a scan that reads no image

def test_scan_reading_no_image_is_an_error(lite0, tmp_path):
    data = unreadable_files(tmp_path / "bad")
    ckpt = tmp_path / "out" / "r.npz.partial"
    ckpt.parent.mkdir()
    with pytest.raises(ImageError, match="no image could be read") as e:
        scan(lite0, data, "_blocks.0", units="0:2", k=2, batch_size=1, device="cpu", progress=False,
             checkpoint=ckpt, checkpoint_every=1)
    msg = str(e.value)
    assert "\n" not in msg and "all 4 file(s)" in msg and "and 1 more" in msg
    assert "empty" in msg  # the first reasons are listed: empty.jpg comes first
    assert_empty(ckpt.parent)  # progress was written during the scan and removed


def test_cli_reading_no_image_writes_nothing(cached_model, tmp_path):
    data = unreadable_files(tmp_path / "bad")
    out = tmp_path / "out"
    out.mkdir()
    res = run_cli(["topk", data, "--layer", "_blocks.0", "--units", "0:2", "-b", "1", "--checkpoint-every", "1",
                   "--save", out / "r.npz", "--figure", out / "f.png", "-q"])
    one_line_error(res, "no image could be read", "all 4 file(s)", "is empty")
    assert_empty(out)


def test_cli_some_unreadable_files_still_scan(cached_model, folder, tmp_path):
    data = unreadable_files(tmp_path / "mixed")
    for p in sorted(folder.iterdir())[:3]:
        shutil.copy(p, data / p.name)
    res = run_cli(["topk", data, "--layer", "_blocks.0", "--units", "0:2", "-k", "2", "--save", tmp_path / "r.npz",
                   "-q"])
    assert res.exit_code == 0, res.output
    assert "3 of 7 images scanned" in res.stdout and "skipped 4 unreadable file(s)" in res.stdout
    r = load_result(tmp_path / "r.npz")
    assert sorted(r.skipped) == ["empty.jpg", "half.jpg", "noise.png", "notes.jpg"]


def test_rf_images_reading_no_image_is_an_error(cached_model, tmp_path):
    data = unreadable_files(tmp_path / "bad")
    res = run_cli(["rf", "--layer", "_blocks.0", "--images", data, "--measure", "effective"])
    one_line_error(res, "no image could be read", "all 4 file(s)")


def test_rf_images_skips_unreadable_files(cached_model, folder, tmp_path):
    data = unreadable_files(tmp_path / "mixed")
    for p in sorted(folder.iterdir())[:2]:
        shutil.copy(p, data / p.name)
    res = run_cli(["rf", "--layer", "_blocks.0", "--images", data, "--measure", "effective"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("skipped:") == 4 and "2 image(s)" in res.stdout


# --------------------------------------------------------------------------------------------------
# F. outputs that cannot be written fail before any work

@pytest.fixture
def no_model(monkeypatch):
    """Loading the model counts as starting the work: these runs must stop before it."""
    import cnnviz.models

    def load(*a, **kw):
        raise AssertionError("the model was loaded: the work started before the output check")

    monkeypatch.setattr(cnnviz.models, "load_model", load)


@pytest.mark.parametrize("blocker, fragment", [("r.json", "sidecar"), ("r.npz.partial", "r.npz.partial")])
def test_unwritable_outputs_fail_before_work(no_model, folder, tmp_path, blocker, fragment):
    out = tmp_path / "out"
    (out / blocker).mkdir(parents=True)
    res = run_cli(["topk", folder, "--layer", "_blocks.0", "--save", out / "r.npz", "-q"])
    one_line_error(res, fragment, "directory")
    assert sorted(p.name for p in out.iterdir()) == [blocker] and not any((out / blocker).iterdir())


def test_read_only_output_directory_fails_before_work(no_model, folder, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only directory is still writable")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        res = run_cli(["topk", folder, "--layer", "_blocks.0", "--save", out / "r.npz", "-q"])
        one_line_error(res, "not writable")
    finally:
        out.chmod(0o755)
    assert_empty(out)


def test_scan_checks_progress_path_before_work(lite0, folder, tmp_path):
    (tmp_path / "p.partial").mkdir()
    start = time.perf_counter()
    with pytest.raises(OutputError, match="is a directory"):
        scan(lite0, folder, "_blocks.0", units="0:2", checkpoint=tmp_path / "p.partial", device="cpu", progress=False,
             on_batch=lambda d, t: pytest.fail("a batch ran before the progress path was checked"))
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------------------------------
# A. kills at any moment, in real processes

def test_stale_temporaries_of_the_targets_are_removed_on_start(cached_model, folder, tmp_path):
    """What a kill -9 inside a write leaves (atomic_path's `.STEM.XXXXXXXX.SUFFIX`, made here with
    the same tempfile call) goes when the next run that writes the same files starts; other files
    that merely look alike stay."""
    import tempfile

    out = tmp_path / "out"
    out.mkdir()
    stale = [Path(tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=out)[1])
             for prefix, suffix in ((".r.", ".npz"), (".r.", ".json"), (".r.npz.", ".partial"), (".f.", ".png"))]
    keep = [out / ".r.mine.npz", out / ".r.abcdefghi.npz", out / ".rr.abcdefgh.npz", out / ".f.abcdefgh.pdf",
            out / "r.abcdefgh.npz"]
    for f in keep:
        f.write_text("not a temporary of this run")
    d = tmp_path / "few"
    d.mkdir()
    for p in sorted(folder.iterdir())[:2]:
        shutil.copy(p, d / p.name)
    res = run_cli(["topk", d, "--layer", "_blocks.0", "--units", "0:2", "-k", "1", "--save", out / "r.npz",
                   "--figure", out / "f.png", "--no-project", "-q"])
    assert res.exit_code == 0, res.output
    assert not any(f.exists() for f in stale)
    assert sorted(p.name for p in out.iterdir()) == sorted(["r.npz", "r.json", "f.png", *(f.name for f in keep)])


TOPK = ["--layer", "_blocks.4", "--units", "0:8", "-k", "3", "-b", "4", "--checkpoint-every", "1", "-q"]
NUM_BATCHES = 6  # 24 images, 4 per batch


class Run:
    """`cnnviz topk` in a subprocess (1 thread, as every run here: the same arithmetic), its stderr
    read line by line in a thread so that a test can wait for a line."""

    def __init__(self, folder: Path, out: Path, *extra, pause: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "CNNVIZ_TEST_PAUSE"}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
        if pause:
            env["CNNVIZ_TEST_PAUSE"] = pause
        cmd = [sys.executable, "-c", "from cnnviz_cli.main import main; main()", "topk", str(folder), *TOPK,
               "--save", str(out / "r.npz"), *map(str, extra)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, phrase: str, timeout: float = 120):
        end = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            if line is None:
                pytest.fail(f"the process ended before {phrase!r}: {''.join(self.err)[-2000:]}")
            if phrase in line:
                return

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        out = self.proc.stdout.read()  # stderr belongs to the reader thread
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=timeout)
        return self.proc.returncode, out, "".join(self.err)


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def complete(out: Path, reference, *extra, more: tuple[str, ...] = ()) -> str:
    """Run to the end; the result must equal the uninterrupted one and nothing else be left."""
    rc, stdout, err = Run(reference["folder"], out, *extra).finish()
    assert rc == 0, err[-2000:]
    r = load_result(out / "r.npz")
    for name in ("values", "image_index", "position", "units", "files", "skipped"):
        np.testing.assert_array_equal(getattr(r, name), reference[name], err_msg=name)
    assert sorted(p.name for p in out.iterdir()) == sorted(["r.json", "r.npz", *more])
    return stdout


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    start = time.perf_counter()
    rc, _, err = Run(folder, out).finish()
    assert rc == 0, err[-2000:]
    r = load_result(out / "r.npz")
    return {"folder": folder, "seconds": time.perf_counter() - start,
            **{n: getattr(r, n) for n in ("values", "image_index", "position", "units", "files", "skipped")}}


@pytest.mark.slow
def test_kill9_between_scan_and_save_keeps_progress(reference, tmp_path):
    run = Run(reference["folder"], tmp_path, pause="finish:120")
    run.wait_for("test pause: finish")
    run.proc.kill()
    run.finish()
    assert (tmp_path / "r.npz.partial").exists(), "the scan's progress was dropped before the result was written"
    assert not (tmp_path / "r.npz").exists()
    stdout = complete(tmp_path, reference)
    assert f"resumed at batch {NUM_BATCHES}" in stdout


@pytest.mark.slow
def test_kill9_during_progress_write_leaves_no_temporary(reference, tmp_path):
    run = Run(reference["folder"], tmp_path, pause="progress-write:120")
    run.wait_for("test pause: progress-write")
    run.proc.kill()
    run.finish()
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".r.npz.") and left[0].endswith(".partial"), left
    complete(tmp_path, reference)  # which also says: no temporary is left


@pytest.mark.slow
def test_kill9_at_random_moments(reference, tmp_path):
    """Three kill -9 at random moments after the scan started (during batches, progress writes, the
    save or after it), then a run to the end: never is the finished work lost (the result or the
    progress file exists), and the end result is the uninterrupted one."""
    rng = random.Random(int(os.environ.get("CNNVIZ_FAULT_SEED", "0")) or None)
    for _ in range(3):
        run = Run(reference["folder"], tmp_path)
        while not (tmp_path / "r.npz.partial").exists() and run.proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 1.5))  # the scan itself takes about a second here
        run.proc.kill()
        run.finish()
        assert (tmp_path / "r.npz").exists() or (tmp_path / "r.npz.partial").exists()
    complete(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_during_scan_aborts_cleanly_and_resumes(reference, tmp_path):
    run = Run(reference["folder"], tmp_path, pause="progress-write:120")
    run.wait_for("test pause: progress-write")  # the first progress write, mid-scan
    run.proc.send_signal(signal.SIGTERM)
    rc, _, err = run.finish()
    assert rc == 130 and "Aborted." in err and "Traceback" not in err, err[-2000:]
    assert temporaries(tmp_path) == [] and not (tmp_path / "r.npz").exists()
    complete(tmp_path, reference)


@pytest.mark.slow
def test_sigterm_during_figure_write(reference, tmp_path):
    run = Run(reference["folder"], tmp_path, "--figure", tmp_path / "f.png", "--no-project")
    seen = None
    while seen is None and run.proc.poll() is None:
        seen = next((p for p in tmp_path.glob(".f.*.png")), None)
        time.sleep(0.001)
    assert seen is not None, "the figure was written before the test saw its temporary"
    run.proc.send_signal(signal.SIGTERM)
    rc, _, err = run.finish()
    assert rc == 130 and "Aborted." in err, err[-2000:]
    assert temporaries(tmp_path) == [] and not (tmp_path / "f.png").exists()
    assert (tmp_path / "r.npz.partial").exists()  # progress stays until the figure is written too
    stdout = complete(tmp_path, reference, "--figure", tmp_path / "f.png", "--no-project", more=("f.png",))
    assert f"resumed at batch {NUM_BATCHES}" in stdout


# --------------------------------------------------------------------------------------------------
# C. what "exact under torchrun" means at another thread count

@pytest.mark.slow
def test_torchrun_at_other_thread_count_same_ranking_values_to_rounding(lite0, folder, tmp_path):
    """2 processes of 1 thread against 1 process of 2 threads: the README and the module docstring
    promise identical results only at equal thread counts; otherwise the values agree to float
    rounding and the rankings agree wherever two values are not that close."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = scan(lite0, folder, "_blocks.6", units="0:16", k=4, batch_size=6, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "dist_scan.py"
    out = tmp_path / "dist.npz"
    script.write_text(textwrap.dedent(f"""
        import dataclasses, os, torch
        torch.set_num_threads(1)
        from cnnviz.models import load_model
        from cnnviz.engines.units.topk import scan
        lm = load_model("efficientnet_lite0")
        lm.preprocessing = dataclasses.replace(lm.preprocessing, crop={SIZE['crop']!r}, resize={SIZE['resize']!r})
        r = scan(lm, {str(folder)!r}, "_blocks.6", units="0:16", k=4, batch_size=6, device="cpu", progress=False)
        assert r.params["world_size"] == 2
        if int(os.environ["RANK"]) == 0:
            r.save({str(out)!r})
    """))
    from test_topk import _free_port

    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(script)]
    proc = subprocess.run(cmd, env={**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = load_result(out)
    np.testing.assert_allclose(d.values, ref.values, rtol=1e-5, atol=1e-6)
    # rankings: identical except between neighbours whose values are within rounding of each other
    close = np.zeros_like(ref.values, dtype=bool)
    near = np.isclose(ref.values[:, 1:], ref.values[:, :-1], rtol=1e-5, atol=1e-6)
    close[:, 1:] |= near
    close[:, :-1] |= near
    assert np.array_equal(d.image_index[~close], ref.image_index[~close])
    assert np.array_equal(d.position[~close], ref.position[~close])
    differ = int((d.values != ref.values).sum())
    print(f"values differing (within rounding): {differ} of {d.values.size}; "
          f"max relative {np.max(np.abs(d.values - ref.values) / np.abs(ref.values)):.2e}")
