"""Linear probes per layer (Zeiler & Fergus Table 7 / Fig. 9): the pooled features against a plain
forward hook, the accuracies against a direct scikit-learn fit, resuming an interrupted scan,
bad input, the command; and the paper's finding on EfficientNet-Lite0 and the ImageNet sample
(test_dataset_experiments_lite0.py)."""

import numpy as np
import pytest
import torch
import torchvision

import cnnviz
from cnnviz.engines.units.features import pooled_features
from cnnviz.engines.experiments.probe import probe
from cnnviz.errors import CnnvizError, ImageError, LayerError, ParameterError

from helpers import assert_untouched, layer_outputs, random_model, snapshot, twelve_photos

_, FILES, LABELS = twelve_photos()  # 12 photos; labels natural / artifact, which a probe can learn


@pytest.fixture(scope="module")
def small():
    return random_model(torchvision.models.resnet18, 7, crop=64, resize=73)


_HOOKED = {}


def hooked_features(lm, files, layer):
    """Each image alone through the model, the layer's output averaged over positions by hand."""
    if (id(lm), layer) not in _HOOKED:
        _HOOKED[(id(lm), layer)] = np.stack([o.mean((1, 2)).numpy() for o in layer_outputs(lm, files, layer)])
    return _HOOKED[(id(lm), layer)]


@pytest.mark.slow
def test_pooled_features_equal_a_forward_hook_and_do_not_depend_on_the_batch(small):
    before = snapshot(small.model, torch.zeros(1, 3, 64, 64))
    a = pooled_features(small, FILES, ["layer1", "layer4"], batch_size=3, device="cpu", progress=False)
    b = pooled_features(small, FILES, ["layer1", "layer4"], batch_size=8, device="cpu", progress=False)
    for layer in ("layer1", "layer4"):
        np.testing.assert_allclose(a.features[layer], hooked_features(small, FILES, layer), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a.features[layer], b.features[layer])
    assert a.ok.all() and a.features["layer4"].shape == (12, 512)
    assert_untouched(small.model, torch.zeros(1, 3, 64, 64), before)


@pytest.mark.slow
def test_probe_accuracy_equals_a_direct_scikit_learn_fit(small):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r = probe(small, FILES, layers=["layer1", "layer4"], labels=LABELS, folds=3, device="cpu", progress=False)
    assert r.params["grouping"] == "label" and r.params["groups"] == ["artifact", "natural"]
    y = np.array([LABELS[f.rsplit("/", 1)[-1]] == "natural" for f in FILES]).astype(int)
    assert r.params["group_counts"] == [int((y == 0).sum()), int((y == 1).sum())]
    for li, layer in enumerate(("layer1", "layer4")):
        X = hooked_features(small, FILES, layer)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        direct = cross_val_score(clf, X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0))
        np.testing.assert_allclose(r.fold_accuracy[li], direct, atol=1e-6)
        # recall per group from the confusion matrix agrees with the accuracy
        assert r.confusion[li].sum() == 12
        assert np.trace(r.confusion[li]) / 12 == pytest.approx(np.mean(direct), abs=0.06)


@pytest.mark.slow
def test_an_interrupted_scan_resumes_to_the_same_result(small, tmp_path):
    ckpt = tmp_path / "probe.partial"
    ref = probe(small, FILES, layers=["layer2"], labels=LABELS, folds=3, batch_size=2, device="cpu", progress=False)
    calls = {"n": 0}

    def stop(m, i, o):
        calls["n"] += o.shape[0] == 4  # the scans' batches (traces and layout probes run single images)
        if calls["n"] == 4:
            raise KeyboardInterrupt

    h = small.model.layer2.register_forward_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            probe(small, FILES, layers=["layer2"], labels=LABELS, folds=3, batch_size=2, device="cpu", progress=False,
                  checkpoint=ckpt, checkpoint_every=1)
    finally:
        h.remove()
    assert ckpt.exists(), "the progress of the 3 batches done is on disk"
    again = probe(small, FILES, layers=["layer2"], labels=LABELS, folds=3, batch_size=2, device="cpu", progress=False,
                  checkpoint=ckpt, checkpoint_every=1)
    assert again.params["resumed_from_batch"] == 3 and not ckpt.exists()
    np.testing.assert_array_equal(again.fold_accuracy, ref.fold_accuracy)
    np.testing.assert_array_equal(again.confusion, ref.confusion)


@pytest.mark.slow
def test_bad_input_is_a_one_line_error_and_leaves_the_model_alone(small, tmp_path):
    before = snapshot(small.model, torch.zeros(1, 3, 64, 64))
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("not a JPEG\n")
    (junk / "b.png").write_bytes(b"")
    cases = [(dict(layers=["layer9"]), LayerError, "unknown layer 'layer9'"),
             (dict(source=str(empty)), ImageError, "no images found"),
             (dict(source=str(junk), labels={"a.jpg": "x", "b.png": "y"}), ImageError, "no image could be read"),
             (dict(folds=1), ParameterError, "folds must be"),
             (dict(folds=8), ParameterError, "at least 2 label groups with 8 or more images"),
             (dict(labels={"nothing.jpg": "x"}), ImageError, "none of the 12 images is listed"),
             (dict(labels=None), ImageError, "put them in class folders"),
             (dict(grouping="family"), ParameterError, "needs ImageNet-1k class indices")]
    for kw, error, fragment in cases:
        args = dict(source=FILES, layers=["layer1"], labels=LABELS, device="cpu", progress=False)
        args.update(kw)
        with pytest.raises(error, match=fragment) as e:
            probe(small, args.pop("source"), **args)
        assert "\n" not in str(e.value) and isinstance(e.value, CnnvizError)
    assert_untouched(small.model, torch.zeros(1, 3, 64, 64), before)


@pytest.mark.slow
def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch, small):
    from helpers import assert_empty, assert_redraws, command_on_photos, one_line_error

    runner, cli, data, out = command_on_photos(monkeypatch, tmp_path, small, FILES,
                                               folder_of=LABELS.get)  # class folders: the label is the folder
    res = runner.invoke(cli, ["probe", str(data), "--layers", "layer1,layer4", "--folds", "3", "--save", "r.npz",
                              "-q"])
    assert res.exit_code == 0, res.output
    assert "12 images in 2 label groups, 3-fold" in res.stdout and "layer4:" in res.stdout
    assert {p.name for p in out.iterdir()} == {"probe.png", "r.npz", "r.json"}
    again = cnnviz.load_result(out / "r.npz")
    assert again.params["layers"] == ["layer1", "layer4"] and again.fold_accuracy.shape == (2, 3)
    assert_redraws(runner, cli, again, "r.npz", "again.pdf")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for bad, fragment in ((["--layers", "layer9"], "unknown layer 'layer9'"),
                          (["--image-labels", "nope.csv"], "labels file not found"),
                          (["--folds", "50"], "with 50 or more images")):
        one_line_error(runner.invoke(cli, ["probe", str(data), "-q", *bad]), fragment)
        assert_empty(empty)
    one_line_error(runner.invoke(cli, ["probe", str(empty)]), "no images found")
    assert_empty(empty)


def test_an_unreadable_image_is_skipped_and_listed_the_others_are_used(small, tmp_path):
    for f in FILES[:4]:
        (tmp_path / f.rsplit("/", 1)[-1]).symlink_to(f)
    (tmp_path / "broken.jpg").write_text("not a JPEG\n")
    feats = pooled_features(small, tmp_path, ["layer4"], batch_size=2, device="cpu", progress=False)
    bad = feats.files.index("broken.jpg")
    assert feats.ok.sum() == 4 and not feats.ok[bad] and np.isnan(feats.features["layer4"][bad]).all()
    assert [f for f, _ in feats.skipped] == ["broken.jpg"] and "broken.jpg" in feats.skipped[0][1]
    good = [feats.files.index(f.rsplit("/", 1)[-1]) for f in FILES[:4]]
    np.testing.assert_allclose(feats.features["layer4"][good], hooked_features(small, FILES, "layer4")[:4],
                               rtol=1e-4, atol=1e-5)
