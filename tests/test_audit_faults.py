"""`cnnviz audit` at scale: killed with -9 at random moments it resumes to the uninterrupted result,
its state does not grow with the data set, under torchrun two processes give the single-process
result, and `cnnviz render audit.npz --out DIR/` rewrites the report from the saved numbers.

A random-weight ResNet-18 (seeded) at 64 px keeps every run small; 8 or 24 sample photos."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import SAMPLE, sample_rows

SIZE = dict(crop=(64, 64), resize=72)
CHUNK = 2  # images per chunk (a progress write after each)


def tiny_model():
    import torch

    from cnnviz import load_model

    torch.manual_seed(0)  # the same random weights in every process
    lm = load_model("resnet18", weights="none")
    lm.preprocessing = dataclasses.replace(lm.preprocessing, **SIZE)
    return lm


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def write_data(folder: Path, count: int) -> Path:
    """A CSV of the first `count` sample photos and their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = sample_rows()[:count]
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for r in rows:
            w.writerow([str(SAMPLE / "images" / r["file"]), r["class_name"]])
    return path


def same_result(a, b) -> None:
    """Every array equal, and every parameter but the timings and where it resumed."""
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(getattr(b, name), arr, err_msg=name)
    skip = {"seconds", "resumed_from_chunk", "world_size"}
    assert {k: v for k, v in a.params.items() if k not in skip} == {k: v for k, v in b.params.items() if k not in skip}


# --------------------------------------------------------------------------------------------------
# Killed with -9 at random moments, three times, then resumed

LAUNCH = textwrap.dedent(f"""
    import dataclasses, sys, torch
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_audit_faults import tiny_model
    import cnnviz_cli.main as climain
    import cnnviz.engines.audit.engine as engine
    import inspect; inspect.unwrap(engine.audit).__kwdefaults__["chunk"] = {CHUNK}  # the command has no option for it: many small chunks here
    lm = tiny_model()
    climain._load = lambda spec, structure_only=False: lm
    climain.main()
""")
ARGS = ["--methods", "gradcam", "--steps", "2", "--sanity-images", "0", "--show", "3", "--layer", "layer3",
        "--num-units", "2", "-k", "2", "-q"]


def audit_process(data: Path, out: Path, *extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CNNVIZ_TEST_PAUSE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")  # every run: the same arithmetic
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "audit", str(data), "--out", str(out), *ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    from cnnviz.results import load_result

    data = write_data(tmp_path / "data", 8)
    start = time.monotonic()
    ref = audit_process(data, tmp_path / "reference")
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-2000:]
    reference = load_result(tmp_path / "reference" / "audit.npz")
    took = time.monotonic() - start

    rng = random.Random(int(os.environ.get("CNNVIZ_FAULT_SEED", "0")) or None)
    # A kill lands at a random moment after the first progress was written. A resumed run may end
    # before its kill (little work left): it then exits 0 with the report written, and the sequence
    # is over (a further --resume would rightly be refused: nothing to resume). A sequence in which
    # no kill landed mid-run proves nothing about resuming, so it is drawn again in a fresh folder.
    for attempt in range(4):
        report = tmp_path / f"report{attempt}"
        progress = tmp_path / f".report{attempt}.audit-progress.npz"
        chunks_seen, kills, finished = [], 0, False
        for _ in range(3):
            run = audit_process(data, report, "--resume")
            while not progress.exists() and run.poll() is None:  # it has written progress
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.6 * took))
            run.kill()
            _, err = run.communicate(timeout=60)
            assert run.returncode == -signal.SIGKILL or run.returncode == 0, err[-2000:]
            assert progress.exists() or (report / "audit.npz").exists(), "finished work was lost"
            if progress.exists():
                with np.load(progress) as p:
                    chunks_seen.append(int(p["done"]))
            if run.returncode == 0 or not progress.exists():
                # exit 0, or killed after the report was written and its progress file removed (the
                # moment between that removal and the exit): either way the audit is complete
                finished = True
                break
            kills += 1
        if not finished:
            run = audit_process(data, report, "--resume")
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err[-2000:]
        if kills and chunks_seen and max(chunks_seen) >= 1:
            break
    else:
        pytest.fail("no kill landed between two progress writes in 4 sequences: the audit ran too fast to test")
    same_result(reference, load_result(report / "audit.npz"))
    assert json.loads((report / "audit.json").read_text())["params"]["top1"] == reference.params["top1"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.startswith(".") for n in left), left  # no progress file, no temporary


# --------------------------------------------------------------------------------------------------
# Memory does not grow with the data set

@pytest.mark.slow
def test_state_and_peak_memory_do_not_grow_with_the_number_of_images(tiny, tmp_path):
    """8 against 24 images: the progress state differs only by its per-image numbers (a few dozen
    bytes per image): what the audit keeps between chunks does not grow with the data."""
    import cnnviz

    sizes, peaks = {}, {}
    for n in (8, 24):
        data = write_data(tmp_path / f"d{n}", n)
        ckpt = tmp_path / f"p{n}.npz"
        tracemalloc.start()
        try:
            cnnviz.audit(tiny, data, "gradcam", steps=2, show=2, wrong=0, sanity_images=0, chunk=4, progress=False,
                         checkpoint=ckpt, finish=lambda r, ckpt=ckpt, n=n: sizes.__setitem__(n, _state_bytes(ckpt)))
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    from cnnviz.engines.audit.state import PER_IMAGE

    fixed8 = {k: v for k, v in sizes[8].items() if k not in PER_IMAGE + ("seconds",)}  # (a text of timings)
    fixed24 = {k: v for k, v in sizes[24].items() if k not in PER_IMAGE + ("seconds",)}
    assert fixed8 == fixed24  # sums, examples, top images: the same size
    per_image = sum(sizes[24][k] - sizes[8][k] for k in PER_IMAGE) / 16
    # the reliance sections keep each image's map at 32 x 32 (float16, one method here), its
    # projected penultimate features (float16, at most 128) and 4 colour numbers: stated, not grown
    from cnnviz.engines.audit.reliance import FEATURE_DIMS, STRATEGY_SIZE, penultimate

    width = dict(tiny.model.named_modules())[penultimate(tiny.model)].in_features
    kept = 1 * STRATEGY_SIZE ** 2 * 2 + min(width, FEATURE_DIMS) * 2 + 4 * 4
    assert per_image - kept < 128, (per_image, kept)
    assert per_image < 2 * 1024 + 2 * FEATURE_DIMS + 16 + 128  # one method: about 2.4 kB per image at most
    # The traced peak (~45 MB either way) is reported, not asserted: inside the full test suite it
    # moved by ~120 kB between the two runs for reasons unrelated to the audit (other tests' caches),
    # too close to the 16 maps (262 kB) that keeping every image's map would add to tell them apart.
    print("traced peak, 8 vs 24 images:", peaks)


def _state_bytes(path: Path) -> dict:
    with np.load(path) as d:
        return {k: d[k].nbytes for k in d.files}


# --------------------------------------------------------------------------------------------------
# torchrun: two processes on CPU (gloo) give the single-process result

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_command_under_torchrun_two_processes_gloo_equals_single(tiny, tmp_path):
    """`cnnviz audit` under torchrun, 2 processes on CPU (gloo), 8 images in chunks of 2: rank 0 audits
    chunks 0 and 2, rank 1 chunks 1 and 3; the report rank 0 writes holds what one process computes
    at the same thread count: per-image numbers, sums, the first examples, the misclassified ones,
    the units' top images, the boxes, the sanity check."""
    import torch

    import cnnviz
    from cnnviz.results import load_result

    data = write_data(tmp_path / "data", 8)
    files = [str(SAMPLE / "images" / r["file"]) for r in sample_rows()[:8]]
    boxes = {files[1]: [[0, 0, 200, 200]], files[6]: [[100, 100, 300, 300]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCH)
    torchrun = Path(sys.executable).with_name("torchrun")
    threads = torch.get_num_threads()
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(launcher), "audit", str(data), "--out", str(tmp_path / "report"), "--methods", "gradcam,saliency",
           "--steps", "2", "--show", "3", "--sanity-images", "1", "--layer", "layer3", "--num-units", "3", "-k", "3",
           "--boxes", str(tmp_path / "boxes.json"), "--device", "cpu", "-q"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reference = cnnviz.audit(tiny, str(data), "gradcam,saliency", steps=2, show=3, sanity_images=1, chunk=CHUNK,
                             layer="layer3", units=3, k=3, boxes=str(tmp_path / "boxes.json"), device="cpu",
                             progress=False)  # while the two processes start
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("wrote ") == 1  # rank 0 writes the report
    merged = load_result(tmp_path / "report" / "audit.npz")
    assert merged.params["world_size"] == 2 and reference.params["world_size"] == 1
    same_result(reference, merged)
    assert len(reference.wrong_index) >= 2 and len(reference.shown_index) == 3
    assert np.isfinite(reference.pointing_hit[[1, 6]]).all() and len(reference.sanity_files) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.json", "data", "launch.py", "report"]


# --------------------------------------------------------------------------------------------------
# The report again from the saved numbers

@pytest.mark.slow
def test_render_rewrites_the_html_report_from_audit_npz(tiny, tmp_path):
    import cnnviz
    from cnnviz_cli.main import cli

    data = write_data(tmp_path / "data", 4)
    r = cnnviz.audit(tiny, data, "gradcam", steps=2, show=2, wrong=1, sanity_images=0, progress=False)
    r.write_html(tmp_path / "report")
    out = CliRunner().invoke(cli, ["render", str(tmp_path / "report" / "audit.npz"), "--out",
                                   str(tmp_path / "report2") + "/"])
    assert out.exit_code == 0, out.output
    one, two = tmp_path / "report", tmp_path / "report2"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "figures").iterdir()) == sorted(p.name for p in (one / "figures").iterdir())
    # the same page: only the creation time in the provenance may differ (it is the saved one: none)
    assert (two / "index.html").read_text() == (one / "index.html").read_text()
    for f in (one / "figures").iterdir():
        assert (two / "figures" / f.name).stat().st_size > 1000
    same_result(cnnviz.load_result(one / "audit.npz"), cnnviz.load_result(two / "audit.npz"))
    # a folder that is not empty, and a result that is not an audit: one line, nothing written
    again = CliRunner().invoke(cli, ["render", str(one / "audit.npz"), "--out", str(two)])
    assert again.exit_code == 1 and "not empty" in again.output and len(again.output.strip().splitlines()) == 1
    other = cnnviz.attribute(tiny, SAMPLE / "images" / sample_rows()[0]["file"], "gradcam")
    other.save(tmp_path / "g.npz")
    bad = CliRunner().invoke(cli, ["render", str(tmp_path / "g.npz"), "--out", str(tmp_path / "r3")])
    assert bad.exit_code == 1 and "audit" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "r3").exists() and not list(tmp_path.glob(".r3*"))
