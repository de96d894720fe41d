"""TCAV (`cnnviz.tcav`, Kim et al. 2018): scores against captum's TCAV on EfficientNet-Lite0 with the
same layer, example sets and classifier settings; significance on a small network trained here to
use a planted red square; bad input in one line before the model loads; the model untouched; a
resumed run equal to an uninterrupted one; the saved result redrawn."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import SAMPLE, assert_untouched, one_line_error, sample_rows, snapshot

S = 24  # the synthetic images' size


# --------------------------------------------------------------------------------------------------
# a small world where class "red" is a red square on noise

def _noise(rng):
    return rng.integers(60, 196, (S, S, 3), dtype=np.uint8)


def _square(img, rng, colour=(230, 20, 20), size=6):
    y, x = rng.integers(0, S - size, 2)
    img = img.copy()
    img[y:y + size, x:x + size] = colour
    return img


def _write(folder: Path, images) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def red_square_model(seed: int = 0, steps: int = 60):
    """A two-convolution network trained (a few seconds) to tell noise ("plain") from noise with a
    6 x 6 red square anywhere ("red"): the square is all it can use."""
    from cnnviz.models import LoadedModel, Preprocessing

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    lm = LoadedModel(net, "redsquare", "trained here", Preprocessing(crop=(S, S), resize=None), ["plain", "red"])
    rng = np.random.default_rng(seed + 100)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        imgs = [_noise(rng) for _ in range(32)]
        imgs = [_square(im, rng) if i % 2 else im for i, im in enumerate(imgs)]
        x = torch.cat([lm.preprocessing.normalize(im) for im in imgs])
        loss = nn.functional.cross_entropy(net(x), torch.arange(32) % 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return lm


def red_square_world(tmp: Path, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"data": _write(tmp / "data" / "plain", [_noise(rng) for _ in range(12)]).parent,
            "red": _write(tmp / "data" / "red", [_square(_noise(rng), rng) for _ in range(12)]),
            "random": _write(tmp / "random", [_noise(rng) for _ in range(40)]),
            "square": _write(tmp / "concepts" / "square", [_square(_noise(rng), rng) for _ in range(10)])}


@pytest.fixture(scope="module")
def lite0():
    import cnnviz

    return cnnviz.load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def red_lm():
    return red_square_model()


# --------------------------------------------------------------------------------------------------
# captum's TCAV as the oracle

def _link(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    return folder


def _captum_scores(lm, layer, concept_files, random_files, sets, seeds, class_files, classes, save):
    """captum.concept.TCAV on the same example sets, each CAV fitted with Python's and NumPy's
    global random state seeded as cnnviz seeds its split and SGD (captum's DefaultClassifier draws
    from both); returns sign_count scores (C + 1) x K x N like TcavResult.scores[:, :, layer]."""
    from captum.concept import TCAV, Concept

    def batch(files):
        return torch.cat([lm.prepare(f)[1] for f in files])

    runs = len(sets) // 2
    concept = Concept(0, "concept", [batch(concept_files)])
    rand = [Concept(1 + j, f"random{j}", [batch([random_files[i] for i in sets[j]])]) for j in range(2 * runs)]
    with pytest.warns(UserWarning, match="default classifier"):
        tc = TCAV(lm.model, [layer], model_id="m", save_path=str(save))
    pairs = [[concept, rand[n]] for n in range(runs)] + [[rand[runs + n], rand[n]] for n in range(runs)]
    for i, pair in enumerate(pairs):
        s = int(seeds[0 if i < runs else 1, i % runs])
        random.seed(s)
        np.random.seed(s)
        tc.compute_cavs([pair])
    x = batch(class_files)
    out = np.zeros((2, len(classes), runs), np.float32)
    for k, cls in enumerate(classes):
        scores = tc.interpret(x, pairs, target=cls)
        for i, pair in enumerate(pairs):
            key = "-".join(str(c.id) for c in pair)
            out[0 if i < runs else 1, k, i % runs] = float(scores[key][layer]["sign_count"][0])
    return out


@pytest.mark.slow
def test_scores_equal_captums_on_lite0(lite0, tmp_path):
    """Lite0 (ImageNet weights), layer _blocks.15: a concept of 10 bird photos, random sets of 10
    from 30 other photos, 8 class images scored for two classes; every CAV fitted by both with the
    same rows, split and SGD seed. Fails if the CAV's direction, the classifier, the split, the
    gradient (layer, class logit) or the sign count differ from captum's."""
    import cnnviz

    rows = sample_rows()
    birds = [SAMPLE / "images" / r["file"] for r in rows if 10 <= int(r["class_index"]) <= 28][:10]
    others = [SAMPLE / "images" / r["file"] for r in rows if int(r["class_index"]) >= 100]
    pool, class_files = others[::9][:30], others[5::23][:8]
    concept = _link(tmp_path / "concept", birds)
    data = _link(tmp_path / "data", class_files)
    rnd = _link(tmp_path / "random", pool)
    lm = lite0
    before = snapshot(lm.model, torch.zeros(1, 3, 224, 224))
    r = cnnviz.tcav(lm, data, {"birds": concept}, classes=["goldfinch", "tench"], layers=["_blocks.15"],
                    random_from=rnd, random_runs=10)
    assert_untouched(lm.model, torch.zeros(1, 3, 224, 224), before)
    assert r.params["random_size"] == 10 and r.scores.shape == (2, 2, 1, 10)
    files = [str(rnd / f) for f in r.random_files]
    ours = r.scores[:, :, 0]
    theirs = _captum_scores(lm, "_blocks.15", sorted(str(p) for p in concept.iterdir()), files, r.random_sets,
                            r.fit_seeds, sorted(str(p) for p in data.iterdir()), [11, 0], tmp_path / "cav")
    assert np.abs(ours - theirs).max() <= 0.05, (ours, theirs)
    assert ours.std() > 0.05  # the scores vary: a constant on both sides would agree trivially
    print(f"max |score - captum's| = {np.abs(ours - theirs).max():.4f}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# the command: bad input in one line before the model loads, resume, redraw

@pytest.fixture
def command(monkeypatch, tmp_path, red_lm):
    """(run(args) -> click result, world folders, loads): the command gets the red-square model;
    `loads` lists each model load with weights (structure-only loads, for the class names and
    layers, are not counted)."""
    from click.testing import CliRunner

    import cnnviz_cli.main as climain

    loads = []

    def load(spec, structure_only=False):
        if not structure_only:
            loads.append(spec["name"])
        return red_lm

    monkeypatch.setattr(climain, "_load", load)
    world = red_square_world(tmp_path / "w")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    runner = CliRunner()
    return (lambda args: runner.invoke(climain.cli, ["tcav", *map(str, args)])), world, loads, out


def test_bad_input_is_one_line_before_the_model_loads(command, tmp_path):
    run, w, loads, out = command
    few = _write(tmp_path / "few", [_noise(np.random.default_rng(0)) for _ in range(3)])
    base = [w["data"], "--random-from", w["random"], "--layers", "3"]
    cases = [
        ([*base, "--concept", "square"], ["'square' is not NAME=FOLDER"]),
        ([*base, "--concept", f"=={w['square']}"], ["is not NAME=FOLDER"]),
        ([*base, "--concept", f"sq={tmp_path / 'nowhere'}"], ["'sq'", "not found"]),
        ([*base, "--concept", f"few={few}"], ["'few'", "holds 3 image(s)", "at least 5"]),
        ([*base, "--concept", f"sq={w['square']}", "--classes", "zebra"], ["unknown class 'zebra'"]),
        ([w["red"], "--random-from", w["random"], "--concept", f"sq={w['square']}"], ["no labels", "--classes"]),
        ([*base[:3], "--layers", "nolayer", "--concept", f"sq={w['square']}"], ["unknown layer 'nolayer'"]),
        ([w["data"], "--random-from", few, "--concept", f"sq={w['square']}"], ["random pool", "holds 3 image(s)"]),
        ([*base, "--concept", f"sq={w['square']}", "--random-runs", "5"], ["--random-runs"]),
    ]
    for args, fragments in cases:
        res = run([*args, "--save", "r.npz"])
        one_line_error(res, *fragments)
        assert loads == [], f"the model was loaded before {fragments} was refused"
        assert sorted(p.name for p in out.iterdir()) == [], f"{fragments}: files written"


def test_resumed_run_equals_an_uninterrupted_one_and_leaves_the_model_untouched(red_lm, tmp_path):
    import cnnviz

    w = red_square_world(tmp_path)
    args = dict(classes=None, layers=["1", "3"], random_from=w["random"], random_runs=10, random_size=8, batch_size=8)
    x = torch.zeros(1, 3, S, S)
    before = snapshot(red_lm.model, x)
    whole = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, **args)
    ckpt = tmp_path / "progress.npz"

    for at in (4, 11):  # stopped after 4 of the 10 runs of CAVs, then after the first of 3 chunks of class images
        def stop(done, total, at=at):
            if done == at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, checkpoint=ckpt, on_step=stop, **args)
        assert_untouched(red_lm.model, x, before)  # also after a call that stopped midway
        assert ckpt.is_file()
    resumed = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, checkpoint=ckpt, **args)
    assert resumed.params["resumed_from"] == {"runs": 10, "chunks": 1}
    assert not ckpt.exists()
    for name, a in whole.arrays().items():
        assert np.array_equal(a, getattr(resumed, name), equal_nan=a.dtype.kind == "f"), name
    assert_untouched(red_lm.model, x, before)


def test_command_saves_and_render_redraws_without_the_model(command):
    from helpers import assert_redraws

    import cnnviz_cli.main as climain
    from click.testing import CliRunner
    from cnnviz.results import load_result

    run, w, loads, out = command
    res = run([w["data"], "--concept", f"square={w['square']}", "--random-from", w["random"], "--layers", "1,3",
               "--random-size", "8", "--save", "r.npz", "--out", "t.png", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "square -> red @ 3:" in res.output and (out / "t.png").is_file() and not (out / "r.npz.partial").exists()
    result = load_result(out / "r.npz")
    assert result.kind == "tcav" and result.scores.shape == (2, 2, 2, 10)
    assert_redraws(CliRunner(), climain.cli, result, "r.npz", "again.png")


# --------------------------------------------------------------------------------------------------
# significance where the truth is known

def test_the_planted_red_square_is_significant_for_its_class(red_lm, tmp_path):
    """The network can only use the red square: the square's CAV raises "red" and lowers "plain"
    in every run, significantly against the random runs. Fails if the CAV points away from the
    concept, the gradient is another class's, or the test or the correction is miscounted."""
    import cnnviz
    from scipy.stats import ttest_ind

    w = red_square_world(tmp_path)
    r = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, layers=["1"], random_from=w["random"],
                    random_runs=10, random_size=10)
    red, plain = r.params["class_names"].index("red"), r.params["class_names"].index("plain")
    assert r.score_mean[0, red, 0] >= 0.9 and r.significant[0, red, 0], r.table()
    assert r.score_mean[0, plain, 0] <= 0.1 and r.significant[0, plain, 0], r.table()
    assert {row["direction"] for row in r.table() if row["class"] == "red"} == {"above"}
    # the p values are the t-test of the run scores, times the 2 tests (1 concept x 2 classes x 1 layer)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="nearly identical"):  # the square's runs: all 1
        p = ttest_ind(r.scores[0, red, 0].astype(np.float64), r.scores[1, red, 0].astype(np.float64)).pvalue
    assert r.p_value[0, red, 0] == pytest.approx(p, rel=1e-5)
    assert r.p_corrected[0, red, 0] == pytest.approx(min(1.0, 2 * p), rel=1e-5) and r.params["tests"] == 2
    assert r.cav_accuracy[0].mean() > 0.8  # the square is easy to tell from noise at this layer


@pytest.mark.slow
def test_on_lite0_crops_of_a_class_are_significant_for_it(lite0, tmp_path):
    """Lite0 at its default TCAV layer (_blocks.15) on 12 bird photos scored for "brambling": a
    concept of 10 crops of the sample's brambling photo raises the brambling logit in most images
    (0.88 over 30 runs, random 0.52: significant, above random); 10 photos of fungi do not."""
    import cnnviz
    from PIL import Image

    from helpers import sample_image

    rows = sample_rows()

    def photos(lo, hi, n, step=1):
        return [SAMPLE / "images" / r["file"] for r in rows if lo <= int(r["class_index"]) <= hi][::step][:n]

    bird = Image.open(sample_image(10)).convert("RGB")  # brambling
    rng = np.random.default_rng(0)
    crops = tmp_path / "crops"
    crops.mkdir()
    w, h = bird.size
    for i in range(10):
        s = rng.uniform(0.5, 0.8)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.integers(0, w - cw), rng.integers(0, h - ch)
        im = bird.crop((x, y, x + cw, y + ch))
        (im.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else im).save(crops / f"{i}.png")
    data = _link(tmp_path / "data", photos(12, 24, 7) + photos(80, 100, 5))
    r = cnnviz.tcav(lite0, data, {"brambling": crops, "fungi": _link(tmp_path / "fungi", photos(947, 999, 10))},
                    classes=["brambling"], random_from=_link(tmp_path / "random", photos(400, 900, 40, 12)),
                    random_runs=30, random_size=10)
    assert r.params["layers"] == ["_blocks.15"]
    rows = {row["concept"]: row for row in r.table()}
    assert rows["brambling"]["significant"] and rows["brambling"]["direction"] == "above", rows
    assert rows["brambling"]["score"] > 0.8 > rows["fungi"]["score"] + 0.3, rows
    # (fungi score below random for brambling, 0.25 vs 0.52, significantly at 30 runs: a concept that pulls
    # away from the class, not one unrelated to it; see the README on what TCAV's test can tell.)


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one(red_lm, tmp_path):
    import os
    import socket
    import subprocess
    import textwrap

    import cnnviz
    from cnnviz.results import load_result

    w = red_square_world(tmp_path / "w")
    torch.save(red_lm.model.state_dict(), tmp_path / "net.pt")
    args = dict(layers=["1", "3"], random_from=str(w["random"]), random_runs=10, random_size=8, batch_size=8)
    one = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, **args)
    out = tmp_path / "two.npz"
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads({torch.get_num_threads()})
        import cnnviz
        from test_tcav import red_square_model
        lm = red_square_model(steps=0)
        lm.model.load_state_dict(torch.load({str(tmp_path / 'net.pt')!r}, weights_only=True))
        r = cnnviz.tcav(lm, {str(w['data'])!r}, {{"square": {str(w['square'])!r}}}, checkpoint={str(tmp_path / 'p.npz')!r},
                        **{args!r})
        assert r.params["world_size"] == 2
        if int(os.environ["RANK"]) == 0:
            r.save({str(out)!r})
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(port), str(script)], env={**os.environ, "MASTER_ADDR": "127.0.0.1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_result(out)
    for name, a in one.arrays().items():
        assert np.array_equal(a, getattr(two, name), equal_nan=a.dtype.kind == "f"), name
    assert not list(tmp_path.glob("p.npz*"))


def test_scores_from_arrays_equal_the_whole_run(red_lm, tmp_path):
    """`tcav_scores` (for a caller such as the audit that has the activations and gradients) gives
    the whole run's scores and p values from the same arrays."""
    import cnnviz
    from cnnviz.engines.concepts.tcav import tcav_scores
    from cnnviz.engines.concepts.tcav_scan import activations, gradients

    w = red_square_world(tmp_path)
    r = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, layers=["1", "3"], random_from=w["random"],
                    random_runs=10, random_size=8)
    infos = cnnviz.engines.units.features.resolve_layers(red_lm, ["1", "3"])

    def x(files):
        return torch.cat([red_lm.prepare(f)[1] for f in files])

    def acts(files):
        return dict(zip(["1", "3"], activations(red_lm.model, infos, x(files), torch.device("cpu"))))

    grads = {}
    for name in ("plain", "red"):
        files = sorted((w["data"] / name).iterdir())
        k = red_lm.class_index(name)
        grads[name] = {a: g.numpy() for a, g in zip(["1", "3"], gradients(red_lm.model, infos, x(files),
                                                                            torch.full((len(files),), k),
                                                                            torch.device("cpu")))}
    out = tcav_scores({"square": acts(sorted(w["square"].iterdir()))},
                      acts([w["random"] / f for f in r.random_files]), grads, r.random_sets)
    assert np.array_equal(out["scores"], r.scores)
    assert np.array_equal(out["p_value"], r.p_value) and np.array_equal(out["significant"], r.significant)


def test_concept_size_draws_each_runs_own_subset_of_the_examples(red_lm, tmp_path):
    """concept_size: each run's CAV is fitted on its own seeded subset of the concept's examples
    (the same in a rerun); the default keeps every example in every run (Kim et al., captum)."""
    import cnnviz
    from cnnviz.engines.concepts.tcav_scan import concept_subset

    rows = np.arange(40)[:, None].astype(float)
    subsets = [concept_subset(rows, 10, 0, 0, n)[:, 0] for n in range(10)]
    assert all(len(set(s)) == 10 for s in subsets) and len({tuple(s) for s in subsets}) == 10
    np.testing.assert_array_equal(concept_subset(rows, 10, 0, 0, 3), concept_subset(rows, 10, 0, 0, 3))
    assert concept_subset(rows, None, 0, 0, 3) is rows and concept_subset(rows, 50, 0, 0, 3) is rows
    w = red_square_world(tmp_path)
    kw = dict(layers=["1"], random_from=w["random"], random_runs=10, random_size=5, progress=False)
    a = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, concept_size=5, **kw)
    b = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, concept_size=5, **kw)
    full = cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.params["concept_size"] == 5 and full.params["concept_size"] is None
    assert not np.array_equal(a.cav_accuracy[0], full.cav_accuracy[0])  # other examples, other CAVs
    with pytest.raises(Exception, match="concept_size"):
        cnnviz.tcav(red_lm, w["data"], {"square": w["square"]}, concept_size=2, **kw)
