"""Nearest neighbours in feature space (Krizhevsky et al. Fig. 4): the neighbours and distances
against brute force over features from a plain forward hook, the leave-one-out hit rate against a
hand loop, resuming, bad input and the command. The real-data property (a photo's neighbours share
its family more often than chance) is in test_dataset_experiments_lite0.py."""

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.engines.experiments.neighbours import hit_rate, neighbours
from cnnviz.errors import ImageError, LayerError, ParameterError

from helpers import SAMPLE, assert_untouched, layer_outputs, random_model, sample_rows, snapshot, twelve_photos

ROWS, FILES, _ = twelve_photos()
QUERIES = [FILES[3], str(SAMPLE / "images" / sample_rows()[1]["file"])]  # one in the data, one not


@pytest.fixture(scope="module")
def small():
    return random_model(torchvision.models.alexnet, 5, crop=80, resize=90)


def hooked(lm, files, layer):
    """Each image's output of `layer`, averaged over positions by hand."""
    return np.stack([o.flatten(1).mean(1).numpy() for o in layer_outputs(lm, files, layer)]).astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbours_equal_brute_force_distances(small, metric):
    before = snapshot(small.model, torch.zeros(1, 3, 80, 80))
    r = neighbours(small, QUERIES, FILES, "features.8", k=4, metric=metric, device="cpu", progress=False)
    X, Q = hooked(small, FILES, "features.8"), hooked(small, QUERIES, "features.8")
    for q in range(2):
        d = []
        for n in range(len(FILES)):
            if FILES[n] == QUERIES[q]:
                continue  # a file is never its own neighbour
            if metric == "euclidean":
                d.append((np.sqrt(np.sum((Q[q] - X[n]) ** 2)), n))
            else:
                d.append((1 - Q[q] @ X[n] / np.linalg.norm(Q[q]) / np.linalg.norm(X[n]), n))
        d.sort()
        assert list(r.index[q]) == [n for _, n in d[:4]]
        np.testing.assert_allclose(r.distance[q], [v for v, _ in d[:4]], rtol=1e-4, atol=1e-5)
    assert 3 not in r.index[0], "the query that is in the data set is not its own neighbour"
    assert r.neighbours.shape == (2, 4, 112, 112, 3) and r.queries.shape == (2, 112, 112, 3)
    # the neighbour thumbnails are the neighbours' crops
    crop = small.prepare(FILES[int(r.index[1, 0])])[0]
    from PIL import Image

    thumb = np.asarray(Image.fromarray(crop).resize((112, 112), Image.BILINEAR), np.float32)
    assert np.abs(thumb - r.neighbours[1, 0]).mean() < 6
    assert_untouched(small.model, torch.zeros(1, 3, 80, 80), before)


def test_hit_rate_equals_a_hand_loop():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6))
    groups = [str(g) for g in rng.integers(0, 4, 40)]
    groups[5] = None  # unlabelled: left out
    rate, chance = hit_rate(X, groups, 3)
    keep = [i for i in range(40) if groups[i] is not None]
    hits, base = [], []
    for i in keep:
        others = sorted((np.linalg.norm(X[i] - X[j]), j) for j in keep if j != i)[:3]
        hits.append(np.mean([groups[j] == groups[i] for _, j in others]))
        base.append(np.mean([groups[j] == groups[i] for j in keep if j != i]))
    assert rate == pytest.approx(np.mean(hits)) and chance == pytest.approx(np.mean(base))


def test_labels_mark_the_neighbours_and_measure_the_hit_rate(small, tmp_path):
    labels = {r["file"]: r["class_index"] for r in sample_rows()}
    r = neighbours(small, QUERIES[:1], FILES, "features.8", k=3, labels=labels, device="cpu", progress=False)
    from cnnviz import taxonomy

    assert r.params["grouping"] == "family"
    assert r.params["query_groups"] == [taxonomy.family(int(ROWS[3]["class_index"]))]
    assert r.params["neighbour_groups"][0] == [taxonomy.family(int(ROWS[i]["class_index"])) for i in r.index[0]]
    assert 0 <= r.params["hit_rate"] <= 1 and 0 < r.params["hit_chance"] < 1


def test_bad_input_is_a_one_line_error(small, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(small.model, torch.zeros(1, 3, 80, 80))
    for kw, error, fragment in [(dict(k=12), ParameterError, r"k=12 is larger than the 11 image\(s\)"),
                                (dict(k=0), ParameterError, "k must be a positive"),
                                (dict(layer="features.99"), LayerError, "unknown layer 'features.99'"),
                                (dict(metric="manhattan"), ParameterError, "unknown metric"),
                                (dict(queries=[str(tmp_path / "notes.jpg")]), ImageError, "not an image"),
                                (dict(source=str(empty)), ImageError, "no images found")]:
        args = dict(queries=QUERIES[:1], source=FILES, layer="features.8", k=3, device="cpu", progress=False)
        args.update(kw)
        with pytest.raises(error, match=fragment) as e:
            neighbours(small, args.pop("queries"), args.pop("source"), **args)
        assert "\n" not in str(e.value)
    assert_untouched(small.model, torch.zeros(1, 3, 80, 80), before)


@pytest.mark.slow
def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch, small):
    from helpers import assert_empty, assert_redraws, command_on_photos, one_line_error

    runner, cli, data, out = command_on_photos(monkeypatch, tmp_path, small, FILES)
    res = runner.invoke(cli, ["neighbours", QUERIES[1], str(data), "-k", "3", "--image-labels",
                              str(SAMPLE / "labels.csv"), "--save", "r.npz", "-q"])
    assert res.exit_code == 0, res.output
    assert "leave-one-out over DATA" in res.stdout and "classifier 5" in res.stdout  # the default layer
    stem = QUERIES[1].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert {p.name for p in out.iterdir()} == {f"{stem}_neighbours.png", "r.npz", "r.json"}
    again = cnnviz.load_result(out / "r.npz")
    assert again.index.shape == (1, 3) and again.params["layer"] == "classifier.5"
    assert_redraws(runner, cli, again, "r.npz", "again.png")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    (tmp_path / "notes.txt").write_text("hello\n")
    for args, fragment in (([QUERIES[1], str(data), "-k", "13"], "-k 13 is larger than the 12"),
                           ([str(tmp_path / "notes.txt"), str(data)], "notes.txt"),
                           ([QUERIES[1], str(data), "--layer", "nope"], "unknown layer 'nope'"),
                           ([QUERIES[1], str(empty)], "no images found")):
        one_line_error(runner.invoke(cli, ["neighbours", *args, "-q"]), fragment)
        assert_empty(empty)
