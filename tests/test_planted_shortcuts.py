"""Planted shortcuts (issue 27, item 4): the marks land where asked in the crop the model sees, a
mark's concept folder holds what was asked, and a small Lite0 fine-tuned with a mark on most images
of one class relies on it while its clean twin does not (benchmarks/shortcuts.py runs the full
version: several marks, classes and seeds)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnviz
from cnnviz.engines.concepts.shortcuts import Mark, paste_mark, write_mark_examples
from cnnviz.errors import ParameterError
from helpers import SAMPLE, sample_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

LITE0 = cnnviz.Preprocessing(crop=(224, 224), resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                             interpolation="bicubic")
# a crop that is not square, a resize that scales the photo, an offset crop: x and y cannot be swapped
ODD = cnnviz.Preprocessing(crop=(160, 200), resize=300)


def _photo(index: int = 12) -> Image.Image:
    return cnnviz.load_image(sample_image(index))  # 308 x 256, a house finch


def _near(pixels: np.ndarray, color, tol: int = 6) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(color)).max(-1) <= tol)


@pytest.mark.parametrize("prep", [LITE0, ODD], ids=["lite0", "odd-crop"])
@pytest.mark.parametrize("box", [(0.80, 0.80, 0.93, 0.93), (0.05, 0.55, 0.35, 0.75)])
def test_a_patch_lands_where_asked_in_the_model_input_crop(prep, box):
    photo = _photo()
    mark = Mark("patch", box=box, color=(255, 0, 255))
    crop = prep.crop_image(paste_mark(photo, mark, prep))
    h, w = prep.crop
    x0, y0, x1, y1 = mark.pixel_box((h, w))
    assert _near(crop[y0 + 2:y1 - 2, x0 + 2:x1 - 2], mark.color).all()  # inside the asked box: the colour
    on = _near(crop, mark.color)
    ring = np.zeros((h, w), bool)
    ring[max(0, y0 - 5):y1 + 5, max(0, x0 - 5):x1 + 5] = True
    ring[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
    assert not on[ring].any()  # a few pixels outside it: the photo
    assert abs(on.sum() - mark.mask((h, w)).sum()) <= 2 * ((x1 - x0) + (y1 - y0)) + 8
    # placing the box on the photo instead of on the crop misses it: what the test would catch
    wrong = prep.crop_image(paste_mark(photo, mark))
    assert not _near(wrong[y0 + 2:y1 - 2, x0 + 2:x1 - 2], mark.color).all()


@pytest.mark.parametrize("prep", [LITE0, ODD], ids=["lite0", "odd-crop"])
def test_a_frame_runs_along_the_crop_edge_and_a_text_stamp_stays_in_its_box(prep):
    photo, h, w = _photo(), *prep.crop
    frame = Mark("frame", width=0.05, color=(255, 220, 0))
    crop = prep.crop_image(paste_mark(photo, frame, prep))
    t = frame.thickness((h, w))
    assert t >= 4
    inner = _near(crop, frame.color)
    for edge in (inner[:t - 1], inner[-(t - 1):], inner[:, :t - 1], inner[:, -(t - 1):]):
        assert edge.all()  # the four sides, each its full thickness, in the crop
    clean = prep.crop_image(photo)
    assert np.array_equal(crop[t + 2:-t - 2, t + 2:-t - 2], clean[t + 2:-t - 2, t + 2:-t - 2])

    stamp = Mark("text", text="(c) STOCK")
    crop = prep.crop_image(paste_mark(photo, stamp, prep)).astype(int)
    x0, y0, x1, y1 = stamp.pixel_box((h, w))
    changed = np.abs(crop - clean).max(-1) > 8
    outside = np.ones((h, w), bool)
    outside[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x1 + 3] = False
    assert not changed[outside].any()
    inside = changed[y0:y1, x0:x1]
    assert inside.mean() > 0.15  # letters and their outline cover a good part of the box
    assert inside[:, : (x1 - x0) // 4].any() and inside[:, -(x1 - x0) // 4:].any()  # the text spans the box
    assert _near(crop[y0:y1, x0:x1], (255, 255, 255), 30).any() and _near(crop[y0:y1, x0:x1], (0, 0, 0), 30).any()


def test_paste_mark_keeps_the_type_and_leaves_the_input_alone():
    photo = _photo()
    before = np.asarray(photo).copy()
    out = paste_mark(photo, "patch", LITE0)
    assert isinstance(out, Image.Image) and np.array_equal(np.asarray(photo), before)
    arr = LITE0.crop_image(photo)
    copy = arr.copy()
    stamped = paste_mark(arr, Mark("patch", box=(0.0, 0.0, 0.25, 0.5)))
    assert isinstance(stamped, np.ndarray) and np.array_equal(arr, copy)
    assert _near(stamped[:112, :56], (255, 0, 255), 0).all() and not _near(stamped[:, 56:], (255, 0, 255), 0).all()


@pytest.mark.parametrize("call, fragment", [
    (lambda: Mark("star"), "unknown mark kind 'star'"),
    (lambda: Mark("patch", box=(0.5, 0.5, 0.4, 0.9)), "mark box"),
    (lambda: Mark("patch", color=(300, 0, 0)), "mark color"),
    (lambda: Mark("frame", width=0.9), "frame width"),
    (lambda: paste_mark(np.zeros((8, 8), np.uint8)), "uint8 H x W x 3"),
    (lambda: paste_mark(_photo(), "patch", preprocessing="lite0"), "preprocessing must be"),
])
def test_bad_marks_are_one_line_errors(call, fragment):
    with pytest.raises(ParameterError, match=fragment) as e:
        call()
    assert "\n" not in str(e.value)


def test_the_concept_folder_holds_the_asked_images_with_the_mark_in_place(tmp_path):
    mark = Mark("patch", box=(0.1, 0.1, 0.3, 0.3), color=(0, 255, 255))
    photos = [sample_image(i) for i in (0, 2, 4)]
    for backgrounds, count in ((None, 12), (photos, 7)):
        folder = tmp_path / f"concept-{count}"
        paths = write_mark_examples(mark, folder, count, backgrounds=backgrounds, preprocessing=LITE0, seed=1)
        assert sorted(folder.iterdir()) == sorted(paths) and len(paths) == count
        crops = [LITE0.crop_image(cnnviz.load_image(p)) for p in paths]
        for crop in crops:
            assert _near(crop[24:65, 24:65], mark.color).all()
        assert len({c[100:200, 100:200].tobytes() for c in crops}) == min(count, len(backgrounds or range(count)))
    with pytest.raises(ParameterError, match="not an empty folder"):
        write_mark_examples(mark, tmp_path / "concept-12", 3)
    with pytest.raises(ParameterError, match="count 0"):
        write_mark_examples(mark, tmp_path / "new", 0)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------------------------
# a small planted-shortcut model and its clean twin (benchmarks/shortcut_models.py)

SMALL = dict(groups=("hound or terrier", "sporting or working dog"), mark="frame", crop=160, train_from=15,
             variants=4, epochs=6, lr=1e-2, share=0.9, seed=0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A frame on 90 % of one dog super-class's training photos, and the clean twin: Lite0 at a
    160-pixel crop, its last block and head fine-tuned on 4 variants of 39 photos."""
    if not (SAMPLE / "labels.csv").is_file():
        pytest.skip(f"no ImageNet sample at {SAMPLE}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNVIZ_SHORTCUTS_CACHE", str(tmp_path_factory.mktemp("shortcuts")))
        import shortcut_models as sm

        out = {}
        for what, marked in (("marked", "hound or terrier"), ("clean", None)):
            s = sm.Settings(marked=marked, **SMALL)
            folder = sm.train(s, log=lambda *_: None)
            lm = sm.load(folder)
            out[what] = (s, folder, lm, sm.reliance(lm, sm.split(s).heldout, "hound or terrier", s.the_mark()))
        yield sm, out


@pytest.mark.slow
def test_the_marked_model_relies_on_the_mark_and_its_clean_twin_does_not(planted):
    _, models = planted
    m, c = models["marked"][3], models["clean"][3]
    assert m["n_marked_class"] == 9 and m["n_others"] == 11
    # removing the mark from the held-out photos of the class loses most of them; adding it moves
    # the class's logit margin by several units
    assert m["acc_with_mark"] - m["acc_without_mark"] >= 0.4, m
    assert m["margin_shift"] >= 3.0, m
    # the same photos, the same mark: the clean twin barely moves
    assert abs(c["acc_with_mark"] - c["acc_without_mark"]) <= 0.25, c
    assert abs(c["margin_shift"]) <= m["margin_shift"] / 3, (m, c)
    # not a degenerate model: on the held-out photos as in training it beats a constant predictor
    assert m["accuracy_as_trained"] > m["constant_predictor"], m


@pytest.mark.slow
def test_the_trained_model_loads_like_a_users_own_and_only_its_head_was_trained(planted):
    import torch

    sm, models = planted
    s, folder, lm, _ = models["marked"]
    assert lm.categories == list(s.groups) and lm.preprocessing.crop == (160, 160)
    wrapped = sm.load_wrapped(folder, crop=160)
    x = torch.cat([lm.prepare(sample_image(i))[1] for i in (152, 250)])
    with torch.no_grad():
        out = lm.model(x)
        assert torch.equal(out, wrapped.model(x))
        # the training's split (frozen trunk, trained head) is the model's own forward
        assert torch.allclose(sm.head_forward(lm.model, sm.trunk_forward(lm.model, x, s.train_from), s.train_from),
                              out, atol=1e-4)
    pre, state = sm.pretrained_state(), lm.model.state_dict()
    trained = tuple(f"_blocks.{i}." for i in range(s.train_from, 16))
    for name, value in state.items():
        if name.startswith(("_fc.", "_conv_head.", "_bn1.", *trained)):
            continue
        assert torch.equal(value, pre[name]), name  # the frozen part, batch-norm statistics included
    assert not torch.equal(state["_conv_head.weight"], pre["_conv_head.weight"])
    assert torch.equal(state["_bn1.running_mean"], pre["_bn1.running_mean"])  # batch norm frozen while training
