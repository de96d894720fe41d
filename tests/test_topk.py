"""Top-k activating images: exact against brute force, resumable, distributed, robust to bad files."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnviz.engines.units.topk import CheckpointError, TopkResult, scan
from cnnviz.errors import CnnvizError
from cnnviz.models import load_model
from cnnviz.results import load_result

from helpers import SAMPLE, assert_untouched, layer_outputs, snapshot

LAYER, UNITS, K, BS = "_blocks.6", "0:16", 4, 6
SIZE = dict(crop=(112, 112), resize=128)  # small inputs keep the scans fast on 2 cores


@pytest.fixture(scope="module", autouse=True)
def _threads(threads_as_without_xdist):
    """The scans' bitwise equality across batch sizes below holds at torch's default thread count
    (2 on CI), not at one thread: under xdist this module keeps the default."""


@pytest.fixture(scope="module")
def lm():
    m = load_model("efficientnet_lite0")
    m.preprocessing = dataclasses.replace(m.preprocessing, **SIZE)
    return m


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("topk_images")
    photos = sorted((SAMPLE / "images").glob("*.jpg"))[:24]
    for i, p in enumerate(photos):  # two class folders
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copy(p, sub / p.name)
    return d


@pytest.fixture(scope="module")
def reference(lm, folder):
    return scan(lm, folder, LAYER, units=UNITS, k=K, batch_size=BS, device="cpu", progress=False)


def same(a: TopkResult, b: TopkResult):
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.image_index, b.image_index)
    np.testing.assert_array_equal(a.position, b.position)
    np.testing.assert_array_equal(a.units, b.units)
    np.testing.assert_array_equal(a.files, b.files)
    np.testing.assert_array_equal(a.skipped, b.skipped)


def test_matches_brute_force(lm, folder, reference):
    r = reference
    files = [folder / f for f in r.files]
    assert len(files) == 24 and r.values.shape == (16, K) and r.position.shape == (16, K, 2)
    a = torch.stack(layer_outputs(lm, files, LAYER))[:, :16].numpy()  # N x U x H x W, from a plain forward hook
    n, u, hh, ww = a.shape
    flat = a.reshape(n, u, -1)
    best = flat.max(2)  # N x U
    arg = flat.argmax(2)
    for unit in range(u):
        order = sorted(range(n), key=lambda i: (-best[i, unit], i))[:K]
        assert list(r.image_index[unit]) == order
        np.testing.assert_allclose(r.values[unit], best[order, unit], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(r.position[unit], [[arg[i, unit] // ww, arg[i, unit] % ww] for i in order])
        assert np.all(np.diff(r.values[unit]) <= 0)


def test_model_untouched_and_saves(lm, folder, tmp_path):
    x = lm.prepare(next(folder.rglob("*.jpg")))[1]
    before = snapshot(lm.model, x)
    r = scan(lm, folder, LAYER, units=[3, 5], k=2, batch_size=12, device="cpu", progress=False)
    assert_untouched(lm.model, x, before)
    r.save(tmp_path / "r.npz")
    back = load_result(tmp_path / "r.npz")
    assert isinstance(back, TopkResult) and back.params["layer"] == LAYER
    same(r, back)


def test_resume_after_kill_gives_identical_result(lm, folder, reference, tmp_path):
    ckpt = tmp_path / "r.npz.partial"

    def kill_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(lm, folder, LAYER, units=UNITS, k=K, batch_size=BS, device="cpu", checkpoint=ckpt, checkpoint_every=1,
             progress=False, on_batch=kill_after_two)
    assert ckpt.exists()
    # a checkpoint from other arguments is refused in one line
    with pytest.raises(CheckpointError, match="other arguments") as e:
        scan(lm, folder, LAYER, units=UNITS, k=K + 1, batch_size=BS, device="cpu", checkpoint=ckpt, progress=False)
    assert "\n" not in str(e.value)
    seen = []
    r = scan(lm, folder, LAYER, units=UNITS, k=K, batch_size=BS, device="cpu", checkpoint=ckpt, checkpoint_every=1,
             progress=False, on_batch=lambda d, t: seen.append(d))
    assert r.params["resumed_from_batch"] == 2 and seen == [3, 4]
    same(r, reference)
    assert not ckpt.exists()


def test_state_size_does_not_grow_with_data(lm, folder, tmp_path):
    sizes = []
    for n in (6, 24):
        sub = tmp_path / f"n{n}"
        sub.mkdir()
        for p in sorted(folder.rglob("*.jpg"))[:n]:
            shutil.copy(p, sub / p.name)
        ckpt = tmp_path / f"c{n}.partial"
        stop = {"size": None}

        def grab(done, total, ckpt=ckpt, stop=stop):
            stop["size"] = ckpt.stat().st_size
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            scan(lm, sub, LAYER, units=UNITS, k=K, batch_size=BS, device="cpu", checkpoint=ckpt, checkpoint_every=1,
                 progress=False, on_batch=grab)
        sizes.append(stop["size"])
    assert sizes[0] == sizes[1]


def test_bad_files_skipped_and_reported(lm, folder, tmp_path):
    d = tmp_path / "mixed"
    shutil.copytree(folder, d)
    good = sorted(d.rglob("*.jpg"))[0].read_bytes()
    (d / "a" / "half.jpg").write_bytes(good[: len(good) // 3])
    (d / "notes.jpg").write_text("not a JPEG\n" * 10)
    (d / "empty.png").write_bytes(b"")
    (d / "readme.txt").write_text("hello")
    r = scan(lm, d, LAYER, units="0:4", k=3, batch_size=8, device="cpu", progress=False)
    assert set(r.skipped) >= {"notes.jpg", "empty.png"}
    assert len(r.params["skipped_reasons"]) == len(r.skipped)
    assert r.params["ignored"] == ["readme.txt"]
    bad = {i for i, f in enumerate(r.files) if f in set(r.skipped)}
    assert not bad & set(r.image_index.ravel().tolist())


def test_csv_source(lm, folder, reference, tmp_path):
    csv = tmp_path / "list.csv"
    rel = [os.path.relpath(folder / f, tmp_path) for f in reference.files]
    csv.write_text("file,label\n" + "".join(f"{f},0\n" for f in rel))
    r = scan(lm, csv, LAYER, units=UNITS, k=K, batch_size=BS, device="cpu", progress=False)
    np.testing.assert_array_equal(r.values, reference.values)
    np.testing.assert_array_equal(r.image_index, reference.image_index)


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(units="5:2"), "empty or negative"), (dict(units="a:b"), "not understood"), (dict(k=0), "positive"),
    (dict(units="0:999"), "out of range"), (dict(layer="nope"), "unknown layer")])
def test_bad_arguments_one_line(lm, folder, kwargs, phrase):
    args = dict(layer=LAYER, units="0:4", k=2)
    args.update(kwargs)
    with pytest.raises(CnnvizError, match=phrase) as e:
        scan(lm, folder, args.pop("layer"), device="cpu", progress=False, **args)
    assert "\n" not in str(e.value)


def test_empty_folder_is_an_error(lm, tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(CnnvizError, match="no images found") as e:
        scan(lm, tmp_path / "e", LAYER, device="cpu")
    assert "\n" not in str(e.value)


def test_cli(folder, tmp_path):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, phrase in [(["--units", "5:2"], "empty or negative"), (["--units", "a:b"], "not understood"),
                         (["-k", "0"], "positive")]:
        res = runner.invoke(cli, ["topk", str(folder), "--layer", LAYER, *args])
        assert res.exit_code == 1 and phrase in res.output and res.output.count("\n") == 1, res.output
    res = runner.invoke(cli, ["topk", str(empty), "--layer", LAYER])
    assert res.exit_code == 1 and "no images found" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_gloo_equal_single(folder, reference, tmp_path):
    script = tmp_path / "dist_scan.py"
    out = tmp_path / "dist.npz"
    script.write_text(textwrap.dedent(f"""
        import dataclasses, os, torch
        torch.set_num_threads({torch.get_num_threads()})  # same threads as the reference: same conv arithmetic
        from cnnviz.models import load_model
        from cnnviz.engines.units.topk import scan
        lm = load_model("efficientnet_lite0")
        lm.preprocessing = dataclasses.replace(lm.preprocessing, crop={SIZE['crop']!r}, resize={SIZE['resize']!r})
        r = scan(lm, {str(folder)!r}, {LAYER!r}, units={UNITS!r}, k={K}, batch_size={BS}, device="cpu",
                 progress=False, checkpoint={str(tmp_path / 'd.partial')!r}, checkpoint_every=1)
        assert r.params["world_size"] == 2
        if int(os.environ["RANK"]) == 0:
            r.save({str(out)!r})
    """))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same(load_result(out), reference)
    assert not list(tmp_path.glob("d.partial*"))


# --------------------------------------------------------------------------------------------------
# Batch size chosen by measuring (cnnviz.batching)

def test_measured_batch_size_is_recorded_and_gives_exactly_the_fixed_size_result(lm, folder, reference, monkeypatch):
    from cnnviz import batching

    monkeypatch.setattr(batching, "machine_load", lambda device: (False, 0.1))  # a busy machine starts at 16
    auto = scan(lm, folder, LAYER, units=UNITS, k=K, device="cpu", progress=False)
    p = auto.params
    assert p["batch_size_auto"] is True and p["batch_size"] >= 4 and p["batch_trials"], p
    assert str(p["batch_first"]) in p["batch_trials"]  # the first size tried (4, or 16 for a weight-heavy model)
    same(auto, reference)  # batch 6 (padded to 8): bitwise the same values, images, positions
    other = scan(lm, folder, LAYER, units=UNITS, k=K, batch_size=5, device="cpu", progress=False)
    same(other, reference)
    assert other.params["batch_size"] == 5 and other.params["batch_size_auto"] is False


def test_a_resumable_scan_keeps_one_fixed_batch_size_and_says_why(lm, folder, reference, tmp_path):
    r = scan(lm, folder, LAYER, units=UNITS, k=K, device="cpu", progress=False, checkpoint=tmp_path / "p.partial")
    assert r.params["batch_size"] == 32 and r.params["batch_size_auto"] is False
    assert "resumable" in r.params["batch_fixed_for"]
    same(r, reference)
