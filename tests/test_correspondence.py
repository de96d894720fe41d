"""Part correspondence (Zeiler & Fergus Sec. 5, Table 1): Delta against a hand computation with
forward hooks and loops over the image pairs, the paper's finding on a model built so that the
part matters (occluding the same pattern changes pooled features alike, a random region does
not), boxes carried from the photo into the crop, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.engines.experiments.correspondence import correspondence, read_parts
from cnnviz.errors import LayerError, ParameterError
from cnnviz.models import LoadedModel, Preprocessing

from helpers import assert_empty, assert_untouched, one_line_error, sample_image, snapshot

SIZE = 64
PATTERN = 14


def _toy_model():
    """A random-weight conv net with global average pooling: the pooled change of occluding a
    pattern does not depend on where the pattern sits, so its sign agrees across images."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def _toy_images(n=5, seed=0):
    """Smooth random backgrounds, each with the same high-contrast checkerboard at another place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PATTERN, :PATTERN]
    pattern = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 255, 0).astype(np.uint8)[..., None].repeat(3, 2)
    pattern[..., 0] = 255 - pattern[..., 0]  # two colours, not black and white
    images, boxes = [], []
    for _ in range(n):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        bg = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC)).copy()
        y0, x0 = (int(v) for v in rng.integers(4, SIZE - PATTERN - 4, 2))
        bg[y0:y0 + PATTERN, x0:x0 + PATTERN] = pattern
        images.append(bg)
        boxes.append([x0, y0, x0 + PATTERN, y0 + PATTERN])
    return images, boxes


@pytest.fixture(scope="module")
def toy():
    lm = LoadedModel(_toy_model(), "toy", "random", Preprocessing(crop=(SIZE, SIZE), resize=SIZE),
                     [f"k{i}" for i in range(4)])
    images, boxes = _toy_images()
    return lm, images, boxes


def _brute_hamming(lm, images, boxes, layer_names):
    """Per layer, the N x N Hamming distances of sign(x - x_occluded), by hand: hooks, slicing the
    normalized tensor (the mean fill is 0 there), a loop over pairs."""
    x = torch.cat([lm.preprocessing.normalize(im) for im in images])
    occ = x.clone()
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        occ[n, :, y0:y1, x0:x1] = 0.0
    modules = dict(lm.model.named_modules())
    store = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: store.__setitem__(name, o.clone()))
             for name in layer_names]
    try:
        with torch.no_grad():
            lm.model(x)
            before = dict(store)
            lm.model(occ)
            after = dict(store)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for name in layer_names:
        signs = np.sign((before[name] - after[name]).reshape(len(images), -1).numpy())
        H = np.zeros((len(images), len(images)), np.int64)
        for i in range(len(images)):
            for j in range(len(images)):
                H[i, j] = np.count_nonzero(signs[i] != signs[j]) if i != j else 0
        out.append(H)
    return np.stack(out), [int(before[n][0].numel()) for n in layer_names]


def test_delta_equals_a_brute_force_loop_over_image_pairs(toy):
    lm, images, boxes = toy
    layers = ["3", "5"]
    before = snapshot(lm.model, lm.preprocessing.normalize(images[0]))
    r = correspondence(lm, images, {"pattern": boxes}, layers=layers, draws=2, seed=1, device="cpu")
    assert_untouched(lm.model, lm.preprocessing.normalize(images[0]), before)
    H, sizes = _brute_hamming(lm, images, boxes, layers)
    np.testing.assert_array_equal(r.part_hamming[0], H)
    assert r.params["layer_sizes"] == sizes == [32 * SIZE * SIZE, 32]
    N = len(images)
    for li, D in enumerate(sizes):
        delta = sum(H[li, i, j] for i in range(N) for j in range(N) if i != j) / (N * (N - 1) * D)
        assert r.delta[0, li] == pytest.approx(delta, rel=1e-6)
    for d in range(2):  # the random draws: the stored boxes, recomputed by hand
        Hr, _ = _brute_hamming(lm, images, r.random_boxes[d].tolist(), layers)
        np.testing.assert_array_equal(r.random_hamming[d], Hr)
    w = r.random_boxes[..., 2] - r.random_boxes[..., 0]
    assert np.all(w == PATTERN) and np.all(r.random_boxes[..., 3] - r.random_boxes[..., 1] == PATTERN)
    assert r.random_boxes.min() >= 0 and r.random_boxes[..., 2:].max() <= SIZE


def test_occluding_the_same_part_changes_pooled_features_more_alike_than_random_regions(toy):
    """Zeiler & Fergus' finding, on a model where it must hold: lower Delta for the part than for
    every random draw at the pooled features."""
    lm, images, boxes = toy
    r = correspondence(lm, images, {"pattern": boxes}, layers=["5"], draws=10, seed=0, device="cpu")
    part, rand = r.delta[0, 0], r.delta[1, 0]
    per_draw = [r.random_hamming[d, 0][~np.eye(5, dtype=bool)].mean() / 32 for d in range(10)]
    assert part < min(per_draw), (part, per_draw)
    assert part < rand - 2 * r.spread[1, 0], (part, rand, r.spread[1, 0])
    assert r.p_value[0, 0] == 0.0
    import figure_checks

    figure_checks.check(r.render(), 7.0)
    figure_checks.check(r.render(width=3.5), 3.5)


def test_random_boxes_can_be_kept_inside_a_region_that_is_no_row(toy):
    """ZF drew random parts of the object: with random_within, every random box lies in that
    part's box (here the upper-left 40 x 40 of each image) and the part is not a row."""
    lm, images, boxes = toy
    region = [[0, 0, 40, 40]] * len(images)
    r = correspondence(lm, images, {"pattern": boxes, "area": region}, layers=["5"], draws=6,
                       random_within="area", device="cpu")
    assert r.params["parts"] == ["pattern"] and r.delta.shape == (2, 1) and r.part_boxes.shape[0] == 1
    assert r.random_boxes[..., :2].min() >= 0 and r.random_boxes[..., 2:].max() <= 40
    np.testing.assert_array_equal(r.region_boxes, region)
    with pytest.raises(ParameterError, match="random_within 'body' is not a part"):
        correspondence(lm, images, {"pattern": boxes}, layers=["5"], random_within="body", device="cpu")


def test_boxes_are_carried_from_the_photo_into_the_crop(tmp_path):
    """A 256 x 256 photo, resized to 256 and cropped to 224: the crop starts at (16, 16)."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(photo)
    photo2 = tmp_path / "q.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo2)
    lm = LoadedModel(_toy_model(), "toy", "random", Preprocessing(crop=(224, 224), resize=256), ["a", "b", "c", "d"])
    r = correspondence(lm, [photo, photo2], {"p.png": {"eye": [20, 30, 50, 60]}, "q.png": {"eye": [0, 0, 40, 20]}},
                       layers=["5"], draws=2, device="cpu")
    np.testing.assert_array_equal(r.part_boxes[0], [[4, 14, 34, 44], [0, 0, 24, 4]])  # the second clipped
    with pytest.raises(ParameterError, match=r"part 'eye' of 'q.png': box \[0, 0, 10, 10\] lies outside the model's "
                                             "input crop"):
        correspondence(lm, [photo, photo2], {"p.png": {"eye": [20, 30, 50, 60]}, "q.png": {"eye": [0, 0, 10, 10]}},
                       layers=["5"], device="cpu")
    with pytest.raises(ParameterError, match=r"box \[250, 0, 270, 10\] lies outside the image \(256 x 256"):
        correspondence(lm, [photo, photo2], {"p.png": {"eye": [250, 0, 270, 10]}, "q.png": {"eye": [0, 0, 40, 20]}},
                       layers=["5"], device="cpu")


@pytest.mark.parametrize("text, fragment", [
    (None, "parts file not found"),
    ("{not json", "is not valid JSON (line 1"),
    ("[1, 2]", "must be a JSON object mapping each image name"),
    ('{"a.jpg": {"eye": [0, 0, 5, 5]}}', "has no entry for image 'b.jpg'"),
    ('{"a.jpg": {"eye": [0, 0, 5, 5]}, "b.jpg": {"nose": [0, 0, 5, 5]}}', "name different parts"),
    ('{"a.jpg": {"eye": [0, 0, 5]}, "b.jpg": {"eye": [0, 0, 5, 5]}}', "give a box [x0, y0, x1, y1] of four numbers"),
    ('{"a.jpg": {"eye": [5, 0, 5, 5]}, "b.jpg": {"eye": [0, 0, 5, 5]}}', "an empty box"),
    ('{"a.jpg": {"random": [0, 0, 5, 5]}, "b.jpg": {"random": [0, 0, 5, 5]}}', "may not be called 'random'"),
])
def test_a_bad_parts_file_is_a_one_line_error(tmp_path, text, fragment):
    path = tmp_path / "parts.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ParameterError) as e:
        read_parts(path, ["x/a.jpg", "x/b.jpg"])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_arguments_are_one_line_errors(toy):
    lm, images, boxes = toy
    for kw, error, fragment in ((dict(layers=["9"]), LayerError, "unknown layer '9'"),
                                (dict(draws=1), ParameterError, "at least 2"),
                                (dict(layers=["5", "5"]), LayerError, "name a layer twice")):
        with pytest.raises(error, match=fragment) as e:
            correspondence(lm, images, {"pattern": boxes}, device="cpu", **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ParameterError, match="give at least 2"):
        correspondence(lm, images[:1], {"pattern": boxes[:1]}, device="cpu")


def test_the_command_writes_figure_and_result_and_refuses_bad_input(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnnviz_cli.main import cli

    photos = [sample_image(0), sample_image(2)]
    parts = {p.name: {"centre": [100, 80, 160, 140]} for p in photos}
    (tmp_path / "parts.json").write_text(json.dumps(parts))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    base = ["correspondence", *map(str, photos), "--model", "resnet18", "--weights", "none", "--device", "cpu"]
    res = runner.invoke(cli, [*base, "--parts", "parts.json", "--draws", "2", "--layers", "layer4,avgpool",
                              "--out", "f.png", "--save", "r.npz"])
    assert res.exit_code == 0, res.output
    assert "centre" in res.stdout and "random" in res.stdout and "layer4" in res.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"parts.json", "f.png", "r.npz", "r.json"}
    again = cnnviz.load_result(tmp_path / "r.npz")
    assert again.params["parts"] == ["centre"] and again.delta.shape == (2, 2)

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    bad = dict(parts)
    bad[photos[1].name] = {"centre": [100, 80, 9000, 140]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    for args, fragment in (([*base, "--parts", str(tmp_path / "nope.json")], "parts file not found"),
                           ([*base, "--parts", str(tmp_path / "bad.json")], "lies outside the image"),
                           ([*base[:2], str(tmp_path / "missing.jpg"), *base[3:], "--parts",
                             str(tmp_path / "parts.json")], "missing.jpg")):
        one_line_error(runner.invoke(cli, args), fragment)
        assert_empty(empty)
