"""Strategies (SpRAy, Lapuschkin et al. 2019; issue 27 item 1): the clustering on maps whose
structure is known, against CoRelAy (the authors' SpRAy pipeline) on real maps, the engine over a
data set (its plumbing checked against maps computed independently, resume, the model left as it
was), bad input refused in one line before the model loads, and the saved result redrawn."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
import torch
import torchvision

from helpers import SAMPLE, assert_empty, assert_untouched, one_line_error, random_model, sample_rows, snapshot

from cnnviz.engines.concepts.strategies_spray import MIN_IMAGES, downsize, preprocess, spray

H = 48


def _blob(cy, cx, s, h=H):
    y, x = np.mgrid[:h, :h]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))


def _groups(centres, sizes, seed=0, s=5.0, jitter=2.5, noise=0.3):
    """Maps in groups: each a Gaussian blob near its group's centre, plus uniform noise."""
    rng = np.random.default_rng(seed)
    maps, truth = [], []
    for g, ((cy, cx), n) in enumerate(zip(centres, sizes)):
        for _ in range(n):
            maps.append(_blob(cy + rng.normal(0, jitter), cx + rng.normal(0, jitter), s) + noise * rng.random((H, H)))
            truth.append(g)
    return np.array(maps), np.array(truth)


def _ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


@pytest.mark.parametrize("centres,sizes", [([(12, 12), (36, 36)], [18, 12]),
                                           ([(12, 12), (36, 36), (12, 38)], [16, 12, 8])])
def test_known_groups_are_found_and_the_eigengap_counts_them(centres, sizes):
    """Two or three groups of maps with their mass at different places (plus noise): the clusters
    are the groups (adjusted Rand index 1) and the eigengap picks their number. A wrong affinity,
    Laplacian or eigenvalue order breaks either."""
    maps, truth = _groups(centres, sizes)
    r = spray(maps, size=16)
    assert r.n_clusters == len(centres) and r.chosen_by == "eigengap"
    assert _ari(truth, r.labels) == 1.0
    assert int(np.argmax(r.gaps)) + 1 == len(centres)
    assert [c.size for c in r.clusters] == sorted(sizes, reverse=True)  # numbered by size
    assert r.embedding.shape == (len(maps), 2)


def test_one_group_raises_no_flag():
    """One group of 20 maps is one strategy. A larger homogeneous group (60) is a continuum in the
    kNN graph (its eigenvalues rise without a gap, [0, 0.10, 0.12, 0.23, 0.36, ...]) and the eigengap
    splits it: the parts are not flagged, since each is broad and not in one place."""
    maps, _ = _groups([(24, 24)], [20])
    r = spray(maps, size=16)
    assert r.n_clusters == 1 and not r.flagged
    maps, _ = _groups([(24, 24)], [60])
    r = spray(maps, size=16)
    assert r.n_clusters > 1 and not r.flagged


def test_downsizing_is_area_averaging_as_torch_pools():
    """SpRAy's downsizing: each cell the mean of its block (torch's adaptive average pooling is the
    oracle, also where the size does not divide the side)."""
    rng = np.random.default_rng(1)
    m = rng.random((3, 50, 37))
    for size in (5, 8, 16):
        want = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(m)[:, None], size)[:, 0].numpy()
        np.testing.assert_allclose(downsize(m, size), want, rtol=1e-12, atol=1e-12)
    p = preprocess(m - 0.5, 8)
    assert np.allclose(p.sum((1, 2)), 1) and (p >= 0).all()


def test_a_small_region_in_the_same_place_is_flagged_and_spread_objects_are_not():
    """Twenty maps of broad blobs at varied places and ten with a tight spot in the top-left corner:
    the corner cluster is flagged, with its place in words; the broad one is not."""
    rng = np.random.default_rng(2)
    broad = [_blob(rng.uniform(14, 34), rng.uniform(14, 34), 9) + 0.01 * rng.random((H, H)) for _ in range(20)]
    spot = [_blob(5 + rng.normal(0, 0.5), 5 + rng.normal(0, 0.5), 1.5) + 0.001 * rng.random((H, H)) for _ in range(10)]
    r = spray(np.array(broad + spot), size=16)
    flagged = [c for c in r.clusters if c.flag]
    assert len(flagged) == 1 and set(flagged[0].members) == set(range(20, 30))
    assert "top left" in flagged[0].reason and "10 of 30 images" in flagged[0].reason
    assert not any(c.flag for c in r.clusters if set(c.members) <= set(range(20)))
    # the same maps with object boxes far from where the broad maps look: flagged as outside the object
    boxes = np.tile([0.0, 0.0, 0.2, 0.2], (30, 1))
    r = spray(np.array(broad + spot), size=16, boxes=boxes)
    outside = [c for c in r.clusters if c.flag and "outside the object" in c.reason]
    assert outside and set(outside[0].members) <= set(range(20))


def test_too_few_maps_are_refused():
    from cnnviz.errors import ParameterError

    with pytest.raises(ParameterError, match=f"at least {MIN_IMAGES}"):
        spray(np.zeros((MIN_IMAGES - 1, 8, 8)))


# --------------------------------------------------------------------------------------------------
# Against CoRelAy on real maps

@pytest.fixture(scope="module")
def lite0():
    import cnnviz

    return cnnviz.load_model("efficientnet_lite0")


@pytest.mark.slow
def test_clusters_agree_with_corelay_on_real_gradcam_maps(lite0):
    """Lite0's Grad-CAM maps of 40 sample photos (every 12th, each for its top-1 class), clustered
    here and by CoRelAy's SpectralClustering pipeline with the same settings: the maps given to it
    are the same downsized 32 x 32 maps (positive part, area-averaged), its preprocessing scales each
    to sum 1 and flattens it (the `Normalize` and `Flatten` steps of CoRelAy's SpRAy example),
    `SciPyPDist(metric="euclidean")`, `SparseKNN(n_neighbors=10, symmetric=True)`,
    `SymmetricNormalLaplacian()`, `EigenDecomposition(n_eigval=k)` (its default `which="LM"`) and
    `KMeans(n_clusters=k)` with scikit-learn's n_init 10 and random_state 0, as here. For the eigengap's
    k and for k = 2, 3, 4: adjusted Rand index >= 0.9 (1.0 measured), and the eigenvalues agree."""
    pytest.importorskip("corelay", reason="corelay (the SpRAy reference) needs Python >= 3.11")
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    import cnnviz

    files = [str(SAMPLE / "images" / r["file"]) for r in sample_rows()[::12]]
    maps = cnnviz.attribute(lite0, files, "gradcam").map
    pooled = downsize(np.clip(maps, 0, None), 32)

    def normalize_flatten(x):
        s = x.sum((1, 2), keepdims=True)
        return (x / np.where(s > 0, s, 1)).reshape(len(x), -1)

    eig = spray(maps, tsne=False)
    for k in sorted({eig.n_clusters, 2, 3, 4}):
        mine = spray(maps, n_clusters=k, tsne=False)
        pipe = SpectralClustering(
            preprocessing=normalize_flatten, pairwise_distance=SciPyPDist(metric="euclidean"),
            affinity=SparseKNN(n_neighbors=10, symmetric=True), laplacian=SymmetricNormalLaplacian(),
            embedding=EigenDecomposition(n_eigval=k, is_output=True),
            clustering=KMeans(n_clusters=k, kwargs={"n_init": 10, "random_state": 0}, is_output=True))
        (values, _), labels = pipe(pooled)
        assert _ari(labels, mine.labels) >= 0.9, k
        np.testing.assert_allclose(np.sort(values), mine.eigenvalues[:k], atol=1e-8)
    # the eigengap over CoRelAy's 9 smallest Laplacian eigenvalues picks the same number of clusters.
    # which="LA" here: with its default "LM" (largest magnitude of D^-1/2 A D^-1/2) and 9 of them,
    # CoRelAy also returns eigenvalues from the far end of the spectrum (1.29, 1.32 measured), which
    # are not cluster indicators
    (values, _), _ = SpectralClustering(
        preprocessing=normalize_flatten, affinity=SparseKNN(n_neighbors=10, symmetric=True),
        embedding=EigenDecomposition(n_eigval=9, which="LA", is_output=True),
        clustering=KMeans(n_clusters=2, is_output=True))(pooled)
    np.testing.assert_allclose(np.sort(values), eig.eigenvalues[:9], atol=1e-8)
    assert int(np.argmax(np.diff(np.sort(values)))) + 1 == eig.n_clusters


# --------------------------------------------------------------------------------------------------
# The engine over a data set

@pytest.fixture(scope="module")
def small_net():
    return random_model(torchvision.models.resnet18, 7, crop=64, resize=73)


def _csv(folder, n_per=(8, 9), names=("k1", "k2")) -> str:
    rows = sample_rows()[::25]
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        i = 0
        for name, n in zip(names, n_per):
            for r in rows[i:i + n]:
                w.writerow([str(SAMPLE / "images" / r["file"]), name])
            i += n
    return str(path)


@pytest.mark.slow
def test_engine_clusters_each_class_on_its_own_maps_and_leaves_the_model(small_net, tmp_path):
    """Every image's map is of its label's class (checked against `cnnviz.attribute` per image),
    each class is clustered by `spray` on exactly those maps, each cluster's map in crop pixels sums
    to 1 and peaks where its members' mean does; no hook or weight change left on the model."""
    import cnnviz
    from cnnviz.engines.concepts.strategies import strategies

    data = _csv(tmp_path)
    x = small_net.prepare(SAMPLE / "images" / sample_rows()[0]["file"])[1]
    before = snapshot(small_net.model, x)
    r = strategies(small_net, data, device="cpu", progress=False)
    assert_untouched(small_net.model, x, before)
    assert sorted(small_net.class_name(int(c)) for c in r.classes) == ["k1", "k2"]
    assert r.cluster_maps.shape[1:] == small_net.input_size
    np.testing.assert_allclose(r.cluster_maps.sum((1, 2)), 1, rtol=1e-4)
    for c in r.classes:
        idx = np.flatnonzero(r.image_class == c)
        files = [str(r.files[i]) for i in idx]
        own = cnnviz.attribute(small_net, files, "gradcam", target=int(c)).map
        small = preprocess(own, r.params["size"])
        np.testing.assert_allclose(r.small_maps[idx], small, atol=2e-5)
        again = spray(own, size=r.params["size"], tsne=False)
        assert _ari(again.labels, r.cluster[idx]) == 1.0
        for q in np.flatnonzero(r.cluster_class == c):
            members = r.cluster == q
            assert members.sum() == r.cluster_size[q]
            assert set(r.rep_index[q][r.rep_index[q] >= 0]) <= set(np.flatnonzero(members))
            pos = np.clip(own[members[idx]], 0, None)
            mean = (pos / pos.sum((1, 2), keepdims=True)).mean(0)
            assert np.corrcoef(mean.ravel(), r.cluster_maps[q].ravel())[0, 1] > 0.97
    assert (r.cluster_correct >= 0).all()  # labelled data: accuracy per cluster


def test_resume_equals_an_uninterrupted_run(small_net, tmp_path):
    from cnnviz.engines.concepts.strategies import strategies

    data = _csv(tmp_path)
    whole = strategies(small_net, data, device="cpu", progress=False, chunk=4)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 2:
            raise Stop

    ckpt = tmp_path / "p.npz"
    x = small_net.prepare(SAMPLE / "images" / sample_rows()[0]["file"])[1]
    before = snapshot(small_net.model, x)
    with pytest.raises(Stop):
        strategies(small_net, data, device="cpu", progress=False, chunk=4, checkpoint=ckpt, on_chunk=stop)
    assert_untouched(small_net.model, x, before)  # also after a call that raised
    assert ckpt.exists()
    resumed = strategies(small_net, data, device="cpu", progress=False, chunk=4, checkpoint=ckpt)
    assert resumed.params["resumed_from_chunk"] == 2 and not ckpt.exists()
    for name, a in whole.arrays().items():
        np.testing.assert_array_equal(getattr(resumed, name), a, err_msg=name)


# --------------------------------------------------------------------------------------------------
# The command

def _run(monkeypatch, tmp_path, lm, *args, load_ok=True):
    from click.testing import CliRunner

    import cnnviz_cli.main as climain

    def load(spec, structure_only=False):
        if not load_ok:
            raise AssertionError("the model was loaded before the bad input was refused")
        return lm

    monkeypatch.setattr(climain, "_load", load)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    monkeypatch.chdir(out)
    return CliRunner(), climain.cli, out


@pytest.mark.parametrize("args,fragments", [
    (["--classes", "k3"], ["class 'k3' has no images", "k1, k2"]),
    (["--classes", "k1", "--limit", "5"], ["class 'k1' has 5 image(s)", f"at least {MIN_IMAGES}"]),
    (["--method", "gradcamm"], ["unknown method 'gradcamm'", "gradcam"]),
    (["--audit", "nope.npz"], ["audit file not found: 'nope.npz'"]),
])
def test_bad_input_is_one_line_before_the_model_loads(monkeypatch, tmp_path, small_net, args, fragments):
    data = _csv(tmp_path)
    runner, cli, out = _run(monkeypatch, tmp_path, small_net, load_ok=False)
    res = runner.invoke(cli, ["strategies", data, "--save", "r.npz", "--quiet", *args])
    one_line_error(res, *fragments)
    assert_empty(out)


def test_command_writes_the_figure_and_the_result_and_render_redraws_it(monkeypatch, tmp_path, small_net):
    import figure_checks

    from cnnviz import load_result

    data = _csv(tmp_path)
    runner, cli, out = _run(monkeypatch, tmp_path, small_net)
    res = runner.invoke(cli, ["strategies", data, "--save", "r.npz", "--out", "s.png", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "k1:" in res.output and "k2:" in res.output and "wrote s.png and r.npz" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["r.json", "r.npz", "s.png"]
    saved = load_result(out / "r.npz")
    assert saved.kind == "strategies" and saved.cluster_maps.shape[1:] == small_net.input_size
    res = runner.invoke(cli, ["render", "r.npz", "-o", "again.png", "--width", "3.5"])
    assert res.exit_code == 0, res.output
    figure_checks.check(saved.render(), 7.0)
    figure_checks.check(saved.render(width=3.5), 3.5)
    assert saved.clusters_of("k1")[0]["map"].shape == small_net.input_size



# --------------------------------------------------------------------------------------------------
# torchrun: two processes on CPU (gloo) give the single-process result

LAUNCH = """
import sys, torchvision
sys.path.insert(0, {tests!r})
from helpers import random_model
from cnnviz.engines.concepts.strategies import strategies
lm = random_model(torchvision.models.resnet18, 7, crop=64, resize=73)
strategies(lm, {data!r}, device="cpu", progress=False, chunk=4, checkpoint={ckpt!r},
           finish=lambda r: r.save({out!r}))
"""


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(small_net, tmp_path):
    """17 images in chunks of 4 under torchrun (2 processes, gloo): rank 0 maps chunks 0, 2, 4, rank 1
    chunks 1 and 3, each with its own progress file; the merged result rank 0 saves equals one
    process's at the same thread count, array for array, and no progress file is left."""
    import os
    import socket
    import subprocess
    from pathlib import Path

    from cnnviz import load_result
    from cnnviz.engines.concepts.strategies import strategies

    data = _csv(tmp_path)
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH.format(tests=str(Path(__file__).parent), data=data, ckpt=str(tmp_path / "p.npz"),
                                    out=str(tmp_path / "r.npz")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                             str(port), str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    reference = strategies(small_net, data, device="cpu", progress=False, chunk=4)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    merged = load_result(tmp_path / "r.npz")
    assert merged.params["world_size"] == 2 and reference.params["world_size"] == 1
    for name, a in reference.arrays().items():
        np.testing.assert_array_equal(getattr(merged, name), a, err_msg=name)
    assert not list(tmp_path.glob("p.npz*"))


def test_without_labels_classes_are_the_predictions(small_net, tmp_path):
    """A flat folder (no labels): each image is analysed for its predicted class; classes predicted
    for fewer than MIN_IMAGES images are listed as not analysed, with their counts."""
    from cnnviz.engines.concepts.strategies import strategies

    folder = tmp_path / "flat"
    folder.mkdir()
    for r in sample_rows()[::25][:17]:
        (folder / r["file"]).symlink_to(SAMPLE / "images" / r["file"])
    pred = {}
    for f in sorted(folder.iterdir()):
        pred[f.name] = int(small_net.model(small_net.prepare(f)[1]).argmax())  # the oracle: one image at a time
    counts = np.bincount(list(pred.values()), minlength=7)
    if counts.max() < MIN_IMAGES:
        pytest.skip(f"the random net spreads its predictions too thin here: {counts.tolist()}")
    r = strategies(small_net, str(folder), device="cpu", progress=False)
    assert not r.params["has_labels"] and (r.labels == -1).all() and (r.cluster_correct == -1).all()
    np.testing.assert_array_equal(r.image_class, [pred[str(f)] for f in r.files])
    assert sorted(r.classes.tolist()) == [c for c in range(7) if counts[c] >= MIN_IMAGES]
    assert {s["class"]: s["images"] for s in r.params["skipped_classes"]} == \
        {c: int(counts[c]) for c in range(7) if 0 < counts[c] < MIN_IMAGES}


def test_the_audit_chooses_the_most_faithful_method_for_this_model():
    """With a saved audit, the default method is the one with the largest insertion minus deletion
    AUC among those `attribute` computes (occlusion passed over); an audit of another model is
    refused in one line."""
    from cnnviz.engines.audit.result import AuditResult
    from cnnviz.engines.concepts.strategies import method_from_audit
    from cnnviz.errors import ParameterError

    class Lm:
        def identity(self):
            return {"model": "resnet18", "weights": "random"}

    def audit(ins, dele):
        return AuditResult(params={"methods": list(ins), "mean_insertion_auc": ins, "mean_deletion_auc": dele},
                           provenance={"model": "resnet18", "weights": "random"})

    best, why = method_from_audit(audit({"gradcam": 0.6, "saliency": 0.5}, {"gradcam": 0.3, "saliency": 0.1}), Lm())
    assert best == "saliency" and "0.400" in why
    best, why = method_from_audit(audit({"occlusion": 0.9, "saliency": 0.5, "gradcam": 0.6},
                                        {"occlusion": 0.1, "saliency": 0.3, "gradcam": 0.3}), Lm())
    assert best == "gradcam" and "occlusion scored higher" in why
    other = audit({"gradcam": 0.6}, {"gradcam": 0.3})
    other.provenance = {"model": "vgg11", "weights": "DEFAULT"}
    with pytest.raises(ParameterError, match="the audit is of vgg11"):
        method_from_audit(other, Lm())


@pytest.mark.slow
def test_a_model_that_reads_a_corner_patch_is_flagged_and_the_clean_model_is_not(lite0, tmp_path):
    """Lite0 with a planted shortcut: its goldfinch logit gains 2e4 x relu(mean of the crop's
    top-left 32 x 32 input pixels - 0.5), i.e. it fires where that corner is white. 24 sample photos,
    every third with a white square there, all labelled goldfinch, saliency maps: SpRAy puts the
    marked photos in a cluster of their own, flagged at the top left, whose every member the
    shortcut made a goldfinch; Lite0 itself on the same photos raises no flag."""
    import dataclasses

    from PIL import Image

    from cnnviz.engines.concepts.strategies import strategies

    class Corner(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            out = self.base(x)
            bonus = 2e4 * torch.relu(x[:, :, 4:36, 4:36].mean((1, 2, 3)) - 0.5)
            return out + bonus[:, None] * torch.nn.functional.one_hot(torch.tensor(11), out.shape[1]).to(out)

    folder = tmp_path / "data" / "goldfinch"
    folder.mkdir(parents=True)
    for i, r in enumerate(sample_rows()[3::20][:24]):
        px = lite0.prepare(SAMPLE / "images" / r["file"])[0].copy()
        if i % 3 == 0:  # crop pixels 12..52 land on 4..36 after the model's resize (256) and centre crop (224)
            px[12:52, 12:52] = 255
        Image.fromarray(px).save(folder / f"{i:02d}.png")
    cheat = dataclasses.replace(lite0, model=Corner(lite0.model).eval())
    r = strategies(cheat, str(tmp_path / "data"), method="saliency", device="cpu", progress=False)
    flagged = np.flatnonzero(r.cluster_flag)
    assert len(flagged) == 1 and "top left" in r.params["cluster_reasons"][flagged[0]]
    members = r.cluster == flagged[0]
    marked = np.array([int(str(f).split("/")[-1][:2]) % 3 == 0 for f in r.files])
    assert marked[members].sum() == marked.sum() == 8
    assert (r.predicted[members] == 11).all()
    clean = strategies(lite0, str(tmp_path / "data"), method="saliency", device="cpu", progress=False)
    assert not clean.cluster_flag.any()


@pytest.mark.slow
def test_a_broken_saved_result_is_one_line_naming_what_is_wrong(monkeypatch, tmp_path, small_net):
    """Each array the figure reads, of the wrong shape or type, and indices that point nowhere:
    `cnnviz render` says so in one line naming it and writes nothing."""
    import json
    import shutil

    from cnnviz.engines.concepts.strategies import strategies
    from cnnviz.engines.concepts.strategies_result import StrategiesResult

    good = strategies(small_net, _csv(tmp_path), device="cpu", progress=False)
    runner, cli, out = _run(monkeypatch, tmp_path, small_net)
    src = tmp_path / "good"
    src.mkdir()
    good.save(src / "r.npz")
    arrays = dict(np.load(src / "r.npz"))
    cases = [(name, np.zeros(5, np.float32) if arrays[name].ndim != 1 or arrays[name].dtype.kind == "U"
              else np.zeros((5, 5), np.float32), f"'{name}'") for name in StrategiesResult.array_schema]
    cases.append(("cluster", arrays["cluster"] + 100, "'cluster' points outside"))
    cases.append(("rep_index", arrays["rep_index"] + 1000, "'rep_index' points outside"))
    for name, bad, fragment in cases:
        shutil.copy(src / "r.json", tmp_path / "r.json")
        np.savez_compressed(tmp_path / "r.npz", **{**arrays, name: bad})
        one_line_error(runner.invoke(cli, ["render", str(tmp_path / "r.npz"), "-o", "f.png"]), fragment)
        assert_empty(out)
    meta = json.loads((src / "r.json").read_text())
    for key in StrategiesResult.param_schema:
        (tmp_path / "r.json").write_text(json.dumps({**meta, "params": {**meta["params"], key: None}}))
        shutil.copy(src / "r.npz", tmp_path / "r.npz")
        one_line_error(runner.invoke(cli, ["render", str(tmp_path / "r.npz"), "-o", "f.png"]), f"params.{key}")
        assert_empty(out)
