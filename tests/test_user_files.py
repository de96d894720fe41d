"""The user's files are sacred: an outside fault test's cases (issue 24), each reproduced with a tiny
factory model (`--model ./net.py:tiny --weights none --labels labels.txt`) as the test found them.

Nothing outside cnnviz's own temporaries is deleted (look-alike folders beside and inside --out,
globs in the name), --resume resumes only recorded progress, an output never replaces an input or
the current directory, a resume with another model's weights is refused, two audits into one
folder do not both run, and a model whose outputs are not finite is said in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import one_line_error, sample_image

NET = textwrap.dedent("""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, nan=False):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(6, 3)
            self.nan = nan

        def forward(self, x):
            y = self.head(self.features(x).mean((2, 3)))
            return y * float("nan") if self.nan else y

    def tiny():
        return Tiny()

    def diverged():
        return Tiny(nan=True)
""")
AUDIT = ["--methods", "gradcam", "--steps", "2", "--sanity-images", "0", "--show", "1", "-q"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder: net.py, labels.txt and data/ with three photos; the current directory."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"p{i}.jpg").symlink_to(sample_image(2 * i))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def cli(*args):
    from cnnviz_cli.main import cli as group

    return CliRunner().invoke(group, [str(a) for a in args])


def audit(data, out, *extra, model="./net.py:tiny"):
    return cli("audit", data, "--out", out, "--model", model, "--weights", "none", "--labels", "labels.txt", *AUDIT,
               *extra)


def tree(folder: Path) -> dict:
    """Every file under `folder` with its content (symlinks as their targets)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
        else:
            out[str(p.relative_to(folder))] = "dir"
    return out


def lookalikes(folder: Path, name: str) -> list[Path]:
    """User folders whose names look like what an audit into `folder/name` leaves behind."""
    made = []
    for n in (f".{name}.old.backup", f".{name}.abcdefgh.partial", f".{name}.abcdefgh.old", ".precious.old.keep",
              ".mydata.x.partial", f".{name}.audit-progress.npz.rank", f"{name}.partial"):
        (folder / n).mkdir()
        (folder / n / "mine.txt").write_text("keep me")
        made.append(folder / n)
    return made


# --------------------------------------------------------------------------------------------------
# 2. nothing but cnnviz's own temporaries is deleted

@pytest.mark.parametrize("name", ["rep", "*", "[r]ep?"])
def test_the_audit_deletes_no_lookalike_folder_beside_or_inside_its_report(user, name):
    from cnnviz.files import make_temp_folder

    d = user / "dir"
    d.mkdir()
    mine = lookalikes(d, name)
    own = make_temp_folder(d / name, "partial")  # what a run killed with -9 leaves: the next run removes it
    (own / "index.html").write_text("half")
    before = tree(d)
    res = audit("data", f"dir/{name}")
    assert res.exit_code == 0, res.output
    assert not own.exists()
    after = tree(d)
    for p in mine:
        assert after[f"{p.name}/mine.txt"] == b"keep me"
    assert {k for k in before if not k.startswith(own.name)} <= set(after)
    # a second run with --force replaces only the report (and inside it nothing of the user's survives by design)
    assert audit("data", f"dir/{name}", "--force").exit_code == 0
    assert all((p / "mine.txt").read_text() == "keep me" for p in mine)
    assert sorted(p.name for p in d.iterdir()) == sorted([name, *(p.name for p in mine)])


def test_render_to_a_folder_with_a_glob_in_its_name_deletes_nothing_else(user):
    assert audit("data", "rep").exit_code == 0
    d = user / "dir"
    d.mkdir()
    mine = lookalikes(d, "*")
    res = cli("render", "rep/audit.npz", "--out", "dir/*/")
    assert res.exit_code == 0, res.output
    assert (d / "*" / "index.html").is_file()
    assert all((p / "mine.txt").read_text() == "keep me" for p in mine)


def test_a_temporary_without_cnnvizs_marker_or_with_anothers_is_not_ours(tmp_path):
    from cnnviz.files import TEMP_MARKER, is_own_temporary, make_temp_folder

    out = tmp_path / "rep"
    own = make_temp_folder(out, "partial")
    assert is_own_temporary(own, out, "partial")
    assert not is_own_temporary(own, tmp_path / "re", "partial") and not is_own_temporary(own, out, "old")
    bare = tmp_path / ".rep.abcdefgh.partial"
    bare.mkdir()
    assert not is_own_temporary(bare, out, "partial")  # the exact name, but no marker
    (bare / TEMP_MARKER).write_text(own.name)  # a marker naming another folder
    assert not is_own_temporary(bare, out, "partial")


# --------------------------------------------------------------------------------------------------
# 3. --resume with nothing to resume

def test_resume_without_progress_refuses_a_folder_that_is_not_empty(user):
    (user / "exist").mkdir()
    (user / "exist" / "mine.txt").write_text("keep me")
    res = audit("data", "exist", "--resume")
    one_line_error(res, "nothing to resume", "--force")
    assert (user / "exist" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in (user / "exist").iterdir()) == ["mine.txt"]


# --------------------------------------------------------------------------------------------------
# 4. an output that is, contains or lies inside an input

@pytest.mark.parametrize("out", ["data", ".", "..", "data/report", "labels.txt", "sub/.."])
def test_force_never_replaces_an_input_or_the_current_directory(user, out):
    (user / "sub").mkdir()
    before = tree(user)
    res = audit("data", out, "--force")
    one_line_error(res)
    assert tree(user) == before


def test_an_output_that_contains_a_csvs_photos_is_refused(user, tmp_path_factory):
    photos = tmp_path_factory.mktemp("elsewhere") / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"q{i}.jpg").symlink_to(sample_image(2 * i))
    (user / "list.csv").write_text(f"file\n{photos / 'q0.jpg'}\n{photos / 'q1.jpg'}\n")
    one_line_error(audit("list.csv", photos.parent, "--force"), "contains the input")
    assert sorted(p.name for p in photos.iterdir()) == ["q0.jpg", "q1.jpg"]


def test_render_into_the_folder_of_its_own_result_is_refused(user):
    assert audit("data", "rep").exit_code == 0
    (user / "rep2").mkdir()
    one_line_error(cli("render", "rep/audit.npz", "--out", "rep/"))
    assert (user / "rep" / "audit.npz").is_file()


# --------------------------------------------------------------------------------------------------
# 5. a resume continues only with the same weights

def test_a_resume_with_another_random_model_is_refused(user):
    from cnnviz.engines.audit import audit as run_audit
    from cnnviz.engines.units.topk import CheckpointError
    from cnnviz.models import load_model

    def model(seed):
        torch.manual_seed(seed)
        return load_model("./net.py:tiny", weights="none", labels="labels.txt")

    one, two = model(1), model(2)
    assert one.identity() == two.identity()  # the premise: the name alone cannot tell them apart
    assert one.fingerprint() != two.fingerprint() and one.fingerprint() == model(1).fingerprint()

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    progress = user / "p.npz"
    with pytest.raises(Stop):
        run_audit(one, "data", ("gradcam",), steps=2, sanity_images=0, chunk=1, device="cpu", progress=False,
                  checkpoint=progress, on_chunk=stop)
    assert progress.is_file()
    with pytest.raises(CheckpointError, match="other arguments"):
        run_audit(two, "data", ("gradcam",), steps=2, sanity_images=0, chunk=1, device="cpu", progress=False,
                  checkpoint=progress, resume=True)
    r = run_audit(one, "data", ("gradcam",), steps=2, sanity_images=0, chunk=1, device="cpu", progress=False,
                  checkpoint=progress, resume=True)
    assert r.params["resumed_from_chunk"] == 1 and not progress.exists()


def test_a_topk_scan_resumes_only_with_the_same_weights(user):
    from cnnviz.engines.units.topk import CheckpointError, scan
    from cnnviz.models import load_model

    torch.manual_seed(1)
    one = load_model("./net.py:tiny", weights="none", labels="labels.txt")
    torch.manual_seed(2)
    two = load_model("./net.py:tiny", weights="none", labels="labels.txt")

    def stop(done, total):
        raise KeyboardInterrupt

    progress = user / "s.npz.partial"
    with pytest.raises(KeyboardInterrupt):
        scan(one, "data", "features.3", k=1, batch_size=1, device="cpu", progress=False, checkpoint=progress,
             checkpoint_every=1, on_batch=stop)
    assert progress.is_file()
    with pytest.raises(CheckpointError):
        scan(two, "data", "features.3", k=1, batch_size=1, device="cpu", progress=False, checkpoint=progress)


# --------------------------------------------------------------------------------------------------
# 6. two audits into one folder

LAUNCH = textwrap.dedent("""
    import sys
    import cnnviz_cli.main as climain
    climain.main()
""")


@pytest.mark.slow
def test_a_second_audit_into_the_same_folder_while_the_first_runs_is_refused(user):
    env = dict(os.environ, CNNVIZ_TEST_PAUSE="finish:20", MPLBACKEND="Agg", PYTHONPATH=str(user) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-c", LAUNCH, "audit", "data", "--out", "rep", "--model", "./net.py:tiny", "--weights",
            "none", "--labels", "labels.txt", *AUDIT]
    first = subprocess.Popen(args, cwd=user, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (user / ".rep.audit-lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        env2 = {k: v for k, v in env.items() if k != "CNNVIZ_TEST_PAUSE"}
        for extra in ([], ["--force"], ["--resume"]):
            second = subprocess.run(args + extra, cwd=user, env=env2, capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "another audit is writing" in lines[0], second.stderr
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert (user / "rep" / "index.html").is_file() and not (user / ".rep.audit-lock").exists()


def test_the_lock_is_exclusive_and_removed_after_use(tmp_path):
    from cnnviz.errors import OutputError
    from cnnviz.files import exclusive_lock

    lock = tmp_path / ".x.lock"
    with exclusive_lock(lock, "busy"):
        with pytest.raises(OutputError, match="busy"):
            with exclusive_lock(lock, "busy"):
                pass
        assert lock.exists()
    assert not lock.exists()
    with exclusive_lock(lock, "busy"):  # free again
        pass


# --------------------------------------------------------------------------------------------------
# 7. a model whose outputs are not finite

def test_a_diverged_model_is_one_line_and_writes_nothing(user):
    before = sorted(p.name for p in user.iterdir())
    res = audit("data", "rep", model="./net.py:diverged")
    one_line_error(res, "not finite")
    assert sorted(p.name for p in user.iterdir()) == before


# --------------------------------------------------------------------------------------------------
# 9. render of an edited audit to a folder: one line naming what is wrong, never an internal error

def _edits(meta: dict, arrays: dict, rng) -> tuple[dict, dict, str]:
    import copy

    import numpy as np

    meta, arrays = copy.deepcopy(meta), dict(arrays)
    what = rng.choice(["drop_param", "retype_param", "drop_array", "reshape_array", "retype_array", "shuffle_index"])
    if what in ("drop_param", "retype_param"):
        key = rng.choice(sorted(meta["params"]))
        if what == "drop_param":
            del meta["params"][key]
        else:
            meta["params"][key] = rng.choice(["text", 3, None, [1, 2], {"x": 1}, 1.5, True])
        return meta, arrays, f"{what} {key}"
    name = rng.choice(sorted(arrays))
    a = arrays[name]
    if what == "drop_array":
        del arrays[name]
    elif what == "reshape_array":
        arrays[name] = a.reshape(-1)[: max(a.size - 1, 0)] if a.size else np.zeros((2, 2), a.dtype)
    elif what == "retype_array":
        arrays[name] = a.astype(rng.choice(["U3", "float32", "int64", "bool"]))
    else:
        arrays[name] = (a.astype(np.int64) + 1000).astype(a.dtype) if a.dtype.kind in "iu" else a
    return meta, arrays, f"{what} {name}"


@pytest.mark.slow
def test_render_to_a_folder_of_forty_edited_audits_is_never_an_internal_error(user):
    import json
    import random

    import numpy as np

    assert audit("data", "rep", "--layer", "features.3", "--num-units", "2", "-k", "2").exit_code == 0
    meta = json.loads((user / "rep" / "audit.json").read_text())
    with np.load(user / "rep" / "audit.npz") as d:
        arrays = {k: d[k] for k in d.files}
    rng = random.Random(24)
    failures = []
    for i in range(40):
        m, a, what = _edits(meta, arrays, rng)
        (user / f"e{i}.json").write_text(json.dumps(m))
        np.savez(user / f"e{i}.npz", **a)
        res = cli("render", f"e{i}.npz", "--out", f"r{i}/")
        if res.exit_code not in (0, 1) or "internal error" in res.output or "Traceback" in res.output:
            failures.append(f"{what}: {res.output.strip()[:200]}")
        if res.exit_code == 1:
            one_line_error(res)
            assert not (user / f"r{i}").exists()
    assert not failures, failures


# --------------------------------------------------------------------------------------------------
# 8. sizes are checked before anything is allocated

def test_a_one_pixel_strip_is_refused_before_it_is_resized(user):
    import resource

    from PIL import Image

    Image.new("RGB", (6000, 1), (120, 30, 200)).save(user / "strip.png")
    assert (user / "strip.png").stat().st_size < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for cmd in (["scoremap", "strip.png", "--out", "s.png"], ["predict", "strip.png"], ["occlusion", "strip.png",
                                                                                        "--out", "o.png"]):
        res = cli(*cmd, "--model", "./net.py:tiny", "--weights", "none", "--labels", "labels.txt")
        one_line_error(res)
    # the peak resident memory grew by far less than the 1.2-7 GB the resizes would take
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB
    assert not (user / "s.png").exists() and not (user / "o.png").exists()


# --------------------------------------------------------------------------------------------------
# 15. an option the chosen mode does not use is refused

def test_tau_outside_the_approximate_mode_is_refused(user):
    import cnnviz
    from cnnviz.errors import ParameterError
    from cnnviz.models import load_model

    for mode in ("full", "incremental"):
        one_line_error(cli("occlusion", "data/p0.jpg", "--mode", mode, "--tau", "0.5", "--out", "o.png", "--model",
                           "./net.py:tiny", "--weights", "none", "--labels", "labels.txt"), "--tau", "approximate")
        with pytest.raises(ParameterError, match="approximate"):
            cnnviz.occlusion(load_model("./net.py:tiny", weights="none", labels="labels.txt"), "data/p0.jpg",
                             mode=mode, tau=0.5)
    assert not (user / "o.png").exists()


# --------------------------------------------------------------------------------------------------
# 11. boxes; and duplicate CSV rows

@pytest.mark.parametrize("box, fragment", [([0, 0, float("nan"), 10], "finite"), ([0, 0, 1e300, 10], "finite"),
                                           ([50, 50, 10, 10], "inverted"), ([0, 0, 0, 10], "inverted"),
                                           ([0, 0, True, 10], "numbers"), ("0,0,5,5", "numbers")])
def test_bad_boxes_are_one_line_before_the_model_runs(user, box, fragment):
    import json

    (user / "boxes.json").write_text(json.dumps({"p0.jpg": [box]}))  # NaN is written as JSON's NaN
    res = audit("data", "rep", "--boxes", "boxes.json")
    one_line_error(res, fragment)
    assert not (user / "rep").exists()


def test_boxes_for_files_not_in_the_data_are_said(user):
    import json

    (user / "boxes.json").write_text(json.dumps({"p0.jpg": [[10, 10, 100, 100]], "elsewhere.jpg": [[0, 0, 5, 5]]}))
    res = audit("data", "rep", "--boxes", "boxes.json")
    assert res.exit_code == 0, res.output
    assert "1 --boxes entry names a file not in the data, ignored (first: 'elsewhere.jpg')" in res.output
    assert json.loads((user / "rep" / "audit.json").read_text())["params"]["boxes_unmatched"] == ["elsewhere.jpg"]


def test_a_csv_that_lists_a_photo_twice_is_refused(user):
    (user / "list.csv").write_text("file,label\ndata/p0.jpg,a\ndata/p1.jpg,b\n./data/p0.jpg,a\n")
    one_line_error(audit("list.csv", "rep"), "twice", "rows 2 and 4")


# --------------------------------------------------------------------------------------------------
# 10. an edited progress file is checked like a result

@pytest.mark.parametrize("edit", ["done=-5", "done=999", "shape", "dtype", "seconds", "skipped", "drop", "shown"])
def test_an_edited_audit_progress_file_is_one_line(user, edit):
    import numpy as np

    from cnnviz.engines.audit import audit as run_audit
    from cnnviz.engines.units.topk import CheckpointError
    from cnnviz.models import load_model

    torch.manual_seed(0)
    lm = load_model("./net.py:tiny", weights="none", labels="labels.txt")
    progress = user / ".rep.audit-progress.npz"
    kw = dict(steps=2, sanity_images=0, device="cpu", progress=False, checkpoint=progress)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the CLI's chunk is 8 images: one chunk of 3 would finish
        run_audit(lm, "data", ("gradcam",), chunk=1, on_chunk=stop, **kw)
    with np.load(progress) as d:
        state = {k: d[k] for k in d.files}
    if edit.startswith("done="):
        state["done"] = np.int64(int(edit[5:]))
    elif edit == "shape":
        state["centre_share"] = state["centre_share"][:2]
    elif edit == "dtype":
        state["top5"] = state["top5"].astype(np.float32)
    elif edit == "seconds":
        state["seconds"] = np.array("{not json")
    elif edit == "skipped":
        state["skipped"] = np.array('[["nowhere.jpg", "x"]]')
    elif edit == "shown":
        state["shown_index"] = np.array([0, 7], np.int64)  # two rows (the images still hold one), one outside
    else:
        del state["readable"]
    np.savez(progress, **state)
    with pytest.raises(CheckpointError) as ei:
        run_audit(lm, "data", ("gradcam",), chunk=1, resume=True, **kw)
    assert "\n" not in str(ei.value) and str(progress) in str(ei.value)


# --------------------------------------------------------------------------------------------------
# 13. counts have an upper bound; 14. the report's place is checked before the model runs

def test_counts_beyond_what_the_work_can_use_are_one_line(user):
    from cnnviz.engines.audit import audit as run_audit
    from cnnviz.engines.experiments.correspondence import correspondence
    from cnnviz.errors import ParameterError
    from cnnviz.models import load_model

    one_line_error(audit("data", "rep", "--steps", "100000"), "--steps")
    res = cli("correspondence", "data/p0.jpg", "data/p1.jpg", "--parts", "a=0,0,10,10", "--draws", "100000000",
              "--model", "./net.py:tiny", "--weights", "none", "--labels", "labels.txt")
    one_line_error(res, "--draws")
    lm = load_model("./net.py:tiny", weights="none", labels="labels.txt")
    with pytest.raises(ParameterError, match="steps 5000"):
        run_audit(lm, "data", ("gradcam",), steps=5000, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="draws 100000000"):
        correspondence(lm, ["data/p0.jpg", "data/p1.jpg"], {"a": [[0, 0, 10, 10]] * 2}, draws=100_000_000)


def test_an_unwritable_report_place_is_found_before_the_model_loads(user):
    (user / "net.py").write_text(NET + textwrap.dedent("""
        def loud():
            open("model-was-built", "w").close()
            return Tiny()
    """))
    for out in ("/proc/x", "/sys/x"):
        one_line_error(audit("data", out, model="./net.py:loud"))
    assert not (user / "model-was-built").exists()


def test_force_never_replaces_the_folder_of_the_labels_file(user):
    (user / "lab").mkdir()
    (user / "lab" / "labels.txt").write_text("a\nb\nc\n")
    res = cli("audit", "data", "--out", "lab", "--model", "./net.py:tiny", "--weights", "none", "--labels",
              "lab/labels.txt", *AUDIT, "--force")
    one_line_error(res, "contains the input")
    assert (user / "lab" / "labels.txt").read_text() == "a\nb\nc\n"
