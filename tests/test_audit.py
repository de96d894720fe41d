"""`cnnviz audit`: numbers against direct computations, resume, the command and its errors.

Three ImageNet sample photos (tench, great white shark, hammerhead; Lite0 takes the hammerhead
photo for swimming trunks, so one image is misclassified) with their labels in a CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from helpers import assert_untouched, sample_image, snapshot

CLASSES = [0, 2, 4]
KW = dict(methods="gradcam,saliency", steps=4, sanity_images=0, show=3, wrong=2, chunk=2, progress=False,
          layer="_blocks.10", units=3, k=2)


@pytest.fixture(scope="module")
def lite0():
    from cnnviz import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-data")
    from helpers import sample_rows

    names = {int(r["class_index"]): r["class_name"] for r in sample_rows()}
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for c in CLASSES:
            w.writerow([str(sample_image(c)), names[c]])
    return path


@pytest.fixture(scope="module")
def result(lite0, data):
    import cnnviz

    x = lite0.prepare(sample_image(0))[1]
    before = snapshot(lite0.model, x)
    r = cnnviz.audit(lite0, data, **KW)
    assert_untouched(lite0.model, x, before)
    return r


def _direct_probs(lm, files):
    with torch.no_grad():
        return torch.cat([F.softmax(lm.model(lm.prepare(f)[1]), 1) for f in files])


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_predictions_match_a_direct_forward_loop(lite0, result):
    files = [sample_image(c) for c in CLASSES]
    assert list(result.files) == [str(f) for f in files]
    probs = _direct_probs(lite0, files)
    p5, i5 = probs.topk(5, 1)
    assert (result.top5 == i5.numpy()).all()
    np.testing.assert_allclose(result.top5_prob, p5.numpy(), atol=1e-5)
    assert list(result.labels) == CLASSES
    top1 = float((i5[:, 0].numpy() == np.array(CLASSES)).mean())
    assert result.params["top1"] == pytest.approx(top1) and result.accuracy(1) == pytest.approx(top1)
    assert 0 < top1 < 1  # the hammerhead photo is misclassified: both outcomes are exercised
    assert result.params["top5"] == pytest.approx(float((i5.numpy() == np.array(CLASSES)[:, None]).any(1).mean()))
    # expected calibration error, written out bin by bin
    conf, right = p5[:, 0].numpy().astype(np.float64), i5[:, 0].numpy() == np.array(CLASSES)
    ece = 0.0
    for b in range(15):
        inside = (conf > b / 15) & (conf <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    assert result.params["ece"] == pytest.approx(ece, abs=1e-6)
    wrong = [(t, int(p)) for t, p in zip(CLASSES, i5[:, 0]) if t != p]
    assert [(c["true"], c["predicted"]) for c in result.params["confused"]] == wrong
    assert list(result.wrong_index) == [CLASSES.index(t) for t, _ in wrong]
    assert result.class_counts.sum() == 3 and result.class_correct.sum() == round(3 * top1)


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_predictions_match_cnnviz_predict(lite0, result, cached_model):
    from cnnviz_cli.main import cli

    files = [str(sample_image(c)) for c in CLASSES]
    out = CliRunner().invoke(cli, ["predict", "--json", *files])
    assert out.exit_code == 0, out.output
    top1 = [json.loads(line)["top"][0]["index"] for line in out.output.splitlines()]
    assert top1 == list(result.top5[:, 0])


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_maps_are_the_predicted_class_maps(lite0, result):
    import cnnviz

    files = [sample_image(c) for c in CLASSES]
    for j, method in enumerate(["gradcam", "saliency"]):
        ref = cnnviz.attribute(lite0, files, method)
        np.testing.assert_allclose(result.shown_maps[:, j], ref.map, rtol=1e-4, atol=1e-6 * np.abs(ref.map).max())
        # centre share: the middle half of each side
        m = np.clip(ref.map.astype(np.float64), 0, None)
        share = m[:, 56:168, 56:168].sum((1, 2)) / m.sum((1, 2))
        np.testing.assert_allclose(result.centre_share[:, j], share, rtol=1e-4)
    # the true class's map of the misclassified image is another map
    k = 0
    assert not np.allclose(result.wrong_true_maps[k, 0], result.wrong_pred_maps[k, 0])


def _blur(x):
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, [61, 61], [10.0, 10.0])


@pytest.mark.slow
@pytest.mark.parametrize("image", [0, 1])
def test_deletion_and_insertion_auc_match_a_direct_loop(lite0, result, image):
    """Pixels removed (replaced by the blurred image) 1/4 of them at a time in the order of the map,
    one image per forward pass; the area by numpy's trapezoids."""
    x = lite0.prepare(sample_image(CLASSES[image]))[1]
    blurred = _blur(x)
    target = int(result.top5[image, 0])
    for j in range(2):
        amap = result.shown_maps[image, j]
        order = np.argsort(-amap.ravel(), kind="stable")
        dele, ins = [], []
        for k in range(5):
            mask = np.zeros(224 * 224, bool)
            mask[order[: round(k * 224 * 224 / 4)]] = True
            mask_t = torch.as_tensor(mask.reshape(1, 1, 224, 224))
            with torch.no_grad():
                dele.append(float(F.softmax(lite0.model(torch.where(mask_t, blurred, x)), 1)[0, target]))
                ins.append(float(F.softmax(lite0.model(torch.where(mask_t, x, blurred)), 1)[0, target]))
        assert result.deletion_auc[image, j] == pytest.approx(np.trapezoid(dele, dx=0.25), abs=2e-4)
        assert result.insertion_auc[image, j] == pytest.approx(np.trapezoid(ins, dx=0.25), abs=2e-4)
        assert dele[0] == pytest.approx(float(result.top5_prob[image, 0]), abs=1e-4)


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_saved_result_loads_and_redraws(result, tmp_path):
    import cnnviz

    result.save(tmp_path / "a.npz")
    back = cnnviz.load_result(tmp_path / "a.npz")
    assert type(back).__name__ == "AuditResult"
    for name, arr in result.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr, err_msg=name)
    back.render(tmp_path / "summary.png", width=7)
    assert (tmp_path / "summary.png").stat().st_size > 10_000


@pytest.mark.slow
def test_resume_after_a_stop_gives_the_same_result(lite0, data, result, tmp_path):
    import cnnviz

    progress = tmp_path / "p.npz"

    def stop(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cnnviz.audit(lite0, data, **KW, checkpoint=progress, on_chunk=stop)
    assert progress.exists()
    again = cnnviz.audit(lite0, data, **KW, checkpoint=progress)
    assert again.params["resumed_from_chunk"] == 1
    for name, arr in result.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), arr, err_msg=name)


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_boxes_pointing_game_and_energy(lite0, result):
    from cnnviz.engines.audit import metrics

    maps = result.shown_maps[:, 0]
    whole = [[[0, 0, 224, 224]]] * 3
    hit, energy = metrics.box_scores(maps, whole)
    assert (hit == 1).all() and np.allclose(energy, 1)
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    hit, energy = metrics.box_scores(maps[:1], [[[x, y, x + 1, y + 1]]])
    assert hit[0] == 1 and 0 < energy[0] < 1


@pytest.mark.slow  # the shared audit takes ~40 s on 2 cores
def test_units_selectivity_and_top_images_match_a_hook(lite0, result):
    """Each unit's class-selectivity index from the positive part of its map, and its top images by
    spatial maximum, read with a plain forward hook on _blocks.10."""
    seen = []
    block = dict(lite0.model.named_modules())["_blocks.10"]
    handle = block.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            for c in CLASSES:
                lite0.model(lite0.prepare(sample_image(c))[1])
    finally:
        handle.remove()
    act = torch.cat(seen)  # 3 images, one per class
    mu = act.clamp(min=0).mean((2, 3)).double().numpy()  # classes x units
    top = mu.max(0)
    rest = (mu.sum(0) - top) / 2
    si = (top - rest) / (top + rest)
    np.testing.assert_allclose(result.unit_selectivity, si, rtol=1e-4, atol=1e-6)
    assert list(result.unit_index) == list(np.argsort(-si, kind="stable")[:3])
    peak = act.flatten(2).amax(2).numpy()  # images x units
    for v, u in enumerate(result.unit_index):
        want = np.argsort(-peak[:, u], kind="stable")[:2]
        assert list(result.unit_top_files[v]) == list(want)
        np.testing.assert_allclose(result.unit_top_values[v], peak[want, u], rtol=1e-4)
        assert list(result.unit_top_classes[v]) == [CLASSES[i] for i in want]
    assert result.unit_patches.shape[:2] == (3, 2) and result.unit_patches.max() > 0
    # _blocks.10's 339 px field exceeds the 224 px image: the patches are cut where the unit's map is
    # high, photo to the edge, no light-gray fill of a field leaving the image
    assert result.params["unit_crop"] == "activation" and "thresholded at 0.5" in result.params["unit_crop_rule"]
    assert result.unit_patches.shape[2] == 224
    assert not np.all(result.unit_patches[:, :, :8] == 220)


def test_pointing_game_peak_of_a_plateau_is_its_centre():
    """A map made of blocks has its maximum on a plateau: the pointing game takes the plateau's
    centre, not its top-left pixel (np.argmax's first), so a block straddling a box's edge counts
    by where most of it lies."""
    from cnnviz.engines.audit import metrics

    amap = np.zeros((64, 64))
    amap[0:32, 0:32] = 1.0  # the top-left block is the maximum
    assert metrics.peak(amap) == (15, 15)  # of the 4 central pixels (15.5, 15.5), the first
    hit, _ = metrics.box_scores(amap[None], [[[8, 8, 60, 60]]])  # the block's corner lies outside the box
    assert hit[0] == 1
    two = np.zeros((8, 8))
    two[1, 1] = two[1, 6] = 5.0  # two separate maxima: one of them, never the empty middle
    assert metrics.peak(two) in ((1, 1), (1, 6))
    assert metrics.peak(np.array([[0.0, np.nan], [3.0, 1.0]])) == (1, 0)


@pytest.mark.parametrize("accuracy", [1.0, 0.0])
def test_the_reliability_legend_covers_no_bar_and_no_point(accuracy):
    """Every confidence bin filled, all right (bars to the top: an underconfident model fills the
    upper left, where the legend used to sit) or all wrong: the legend lies clear of every bar and
    every mean-confidence point and stays inside the axes, in the report's figure and in the summary
    `cnnviz render` draws."""
    from cnnviz.engines.audit.result import AuditResult
    from cnnviz.render.audit import figures as R

    B, S = 15, 5
    curve = np.linspace(1, 0, S + 1, dtype=np.float32)[None]
    result = AuditResult(params={"has_labels": True, "ece": 0.5, "num_images": 45}, provenance={},
                         reliability_acc=np.full(B, accuracy, np.float32), reliability_count=np.full(B, 3),
                         reliability_conf=((np.arange(B) + 0.5) / B).astype(np.float32), methods=np.array(["gradcam"]),
                         fractions=np.linspace(0, 1, S + 1, dtype=np.float32), deletion_curve=curve,
                         insertion_curve=curve[:, ::-1], deletion_auc=np.zeros((1, 1)), insertion_auc=np.zeros((1, 1)))
    for fig in (R.reliability_figure(result), R.figure(result), R.figure(result, width=3.5)):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert box.x0 <= legend.x0 and legend.x1 <= box.x1 and legend.y1 <= box.y1  # inside the axes, not clipped
        bars = [b.get_window_extent() for b in ax.patches]
        assert len(bars) == B and not [b for b in bars if b.overlaps(legend)]
        points = ax.transData.transform(np.c_[result.reliability_conf, result.reliability_acc])
        assert not [q for q in points if legend.contains(*q)]
        assert ax.get_ylim()[0] == 0 and max(b.y1 for b in bars) <= ax.transData.transform((0, 1))[1] + 0.5


def test_audit_methods_are_checked_in_one_line():
    from cnnviz.engines.audit.engine import check_methods
    from cnnviz.errors import ParameterError

    assert check_methods(" gradcam, occlusion ") == ("gradcam", "occlusion")
    for given, fragment in (("", "no methods given; e.g. --methods gradcam,saliency"),
                            ("gradcam,ig", "unknown audit method 'ig'; one of saliency, "),
                            ("saliency,saliency", "methods repeat: saliency, saliency")):
        with pytest.raises(ParameterError, match=fragment) as e:
            check_methods(given)
        assert "\n" not in str(e.value)


def test_occlusion_map_is_the_mean_drop_of_the_covering_windows():
    from types import SimpleNamespace

    from cnnviz.engines.audit.engine import _occlusion_map

    r = SimpleNamespace(params={"window": [2, 2], "baseline_prob": 0.5},
                        true_class_prob=np.array([[0.1, 0.5], [0.5, 0.3]], np.float32),
                        positions_y=np.array([0, 1]), positions_x=np.array([0, 2]))
    m = _occlusion_map(r, (4, 4))
    assert m[0, 0] == pytest.approx(0.4)             # window (0, 0) only
    assert m[1, 1] == pytest.approx((0.4 + 0.0) / 2)  # windows (0, 0) and (1, 0)
    assert m[2, 3] == pytest.approx(0.2)             # window (1, 2) only
    assert m[3, 0] == 0.0                            # no window: no evidence


@pytest.mark.slow
def test_boxes_end_to_end_in_photo_pixels(lite0, tmp_path):
    """A box around the whole photo (by file name) holds every map's peak and all its energy; a
    box in a corner outside the crop holds nothing."""
    import cnnviz
    from PIL import Image

    photo = sample_image(0)
    w, h = Image.open(photo).size
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({photo.name: [[0, 0, w, h]], sample_image(2).name: [[0, 0, 3, 3]]}))
    r = cnnviz.audit(lite0, [str(photo), str(sample_image(2))], "gradcam", steps=1, show=0, wrong=0,
                     sanity_images=0, boxes=boxes, progress=False)
    assert r.pointing_hit[0, 0] == 1 and r.box_energy[0, 0] == pytest.approx(1)
    assert r.pointing_hit[1, 0] == 0 and r.box_energy[1, 0] == 0
    assert r.params["boxes"] and r.params["pointing_game"]["gradcam"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# The command: bad input is one line, a non-zero exit, and nothing written

def _run(args):
    from cnnviz_cli.main import cli

    return CliRunner().invoke(cli, ["audit", *map(str, args), "--methods", "gradcam", "--steps", "2",
                                    "--sanity-images", "0", "-q"])


def _error_case(tmp_path, kind):
    if kind == "empty":
        (tmp_path / "data").mkdir()
        return tmp_path / "data", "no images found"
    if kind == "unreadable":
        (tmp_path / "data").mkdir()
        for n in ("a.jpg", "b.png"):
            (tmp_path / "data" / n).write_text("not an image")
        return tmp_path / "data", "no image could be read"
    if kind == "missing":
        p = tmp_path / "list.csv"
        p.write_text(f"file,label\n{sample_image(0)},tench\nnot_there.jpg,tench\n")
        return p, "do not exist"
    if kind == "label":
        p = tmp_path / "list.csv"
        p.write_text(f"file,label\n{sample_image(0)},tench\n{sample_image(2)},unicorn\n")
        return p, "'unicorn'"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "unreadable", "missing", "label"])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, cached_model, kind):
    source, phrase = _error_case(tmp_path, kind)
    before = set(tmp_path.rglob("*"))
    out = _run([source, "--out", tmp_path / "report"])
    assert out.exit_code == 1, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and phrase in lines[0], out.output
    assert set(tmp_path.rglob("*")) == before  # no report, no progress file, no temporary


def test_existing_report_needs_force_or_resume(tmp_path, cached_model):
    report = tmp_path / "report"
    report.mkdir()
    (report / "old.txt").write_text("keep me")
    out = _run([sample_image(0), "--out", report])  # refused before the data is even read
    assert out.exit_code == 1 and "--force" in out.output and len(out.output.strip().splitlines()) == 1
    assert [p.name for p in report.iterdir()] == ["old.txt"]
    out = _run([tmp_path / "nothing", "--out", tmp_path / "r2", "--resume", "--force"])
    assert out.exit_code == 1 and "contradict" in out.output


@pytest.mark.slow
def test_command_writes_the_report_and_clears_what_a_killed_run_left(tmp_path, cached_model):
    from cnnviz.files import make_temp_folder

    half = make_temp_folder(tmp_path / "report", "partial")  # a report folder half built by a run killed with -9
    (half / "index.html").write_text("half")
    (tmp_path / ".report.k2j4h5g6.partial").mkdir()  # the user's: the same form of name, but not cnnviz's marker
    (tmp_path / "..report.audit-progress.ab12cd34.npz").write_bytes(b"half a progress file")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tench.jpg").symlink_to(sample_image(0))
    out = _run([tmp_path / "data", "--out", tmp_path / "report", "--show", "1"])
    assert out.exit_code == 0, out.output
    assert "1 of 1 images audited (no labels)" in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.k2j4h5g6.partial", "data", "report"]
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"index.html", "figures", "audit.npz", "audit.json"}
    html = (tmp_path / "report" / "index.html").read_text()
    assert "No labels were given" in html and "<script" not in html
    again = _run([tmp_path / "data", "--out", tmp_path / "report", "--force", "--show", "0"])
    assert again.exit_code == 0, again.output
    assert not any((tmp_path / "report" / "figures").glob("image_*.png"))  # replaced, not merged


def test_class_folders_give_the_labels(lite0, tmp_path):
    from cnnviz.engines.audit.data import read_dataset

    for folder, c in (("tench", 0), ("goldfish", 2), ("Great White Shark", 2)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / f"{c}.jpg").symlink_to(sample_image(c))
    ds = read_dataset(tmp_path / "data", lite0)
    assert ds.label_source == "class folders"
    assert ds.files == ["Great White Shark/2.jpg", "goldfish/2.jpg", "tench/0.jpg"]
    assert list(ds.labels) == [2, 1, 0]  # by class name, whatever the photo shows
    flat = read_dataset(tmp_path / "data" / "tench", lite0)
    assert flat.label_source == "none" and not flat.has_labels
    (tmp_path / "data" / "unicorn").mkdir()
    (tmp_path / "data" / "unicorn" / "u.jpg").symlink_to(sample_image(0))
    from cnnviz.errors import TargetError

    with pytest.raises(TargetError, match="'unicorn' from the class folders is not a class of efficientnet_lite0"):
        read_dataset(tmp_path / "data", lite0)
