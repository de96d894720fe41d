"""The audit report states its uncertainty, draws no filler, fits in one file and opens with its
findings (issue 29 items 5-8).

- metrics: the Wilson interval, Student's t quantile and interval, the "beats random" share, each
  against an independent computation (the interval as the roots of its quadratic, scipy.stats, a
  coverage simulation, counts by hand), and against the trivial baseline: a random map does not
  beat another random map (about half the images), a map that is the model's evidence does;
- the engine: the intervals saved in an audit's params (random-weight ResNet-18 at 64 px on sample
  photos, labelled so that some predictions are right and some classes have several images) equal
  the same formulas applied to the result's own per-image arrays, and survive a save and reload;
- the page: findings first, each linked to an anchor that exists; class means only for classes of
  two images or more; paths relative to the data; the cap of misclassified images labelled as one;
  `--single-file` writes a page whose every image is inside it, loaded in headless chromium from
  a folder where it lies alone.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SAMPLE, sample_rows

Z = 1.959963984540054


# --------------------------------------------------------------------------------------------------
# metrics against independent computations

def wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the set of p with |k/n - p| <= z sqrt(p (1 - p) / n): the roots of
    (1 + z^2/n) p^2 - (2 k/n + z^2/n) p + (k/n)^2 = 0."""
    ph = k / n
    a, b, c = 1 + Z * Z / n, -(2 * ph + Z * Z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 24), (20, 24), (12, 24), (3, 7), (1, 3), (100, 100)])
def test_wilson_interval_is_the_roots_of_its_quadratic_and_scipys(k, n):
    from scipy.stats import binomtest

    from cnnviz.engines.audit.metrics import wilson

    lo, hi = wilson(k, n)
    elo, ehi = wilson_by_quadratic(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-9) and hi == pytest.approx(min(1.0, ehi), abs=1e-9)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert lo <= k / n <= hi and 0 <= lo < hi <= 1  # never empty, even at 0 of n or n of n
    assert wilson(0, 0) is None


def test_t_quantile_and_mean_interval_match_scipy():
    from scipy import stats

    from cnnviz.engines.audit.metrics import mean_interval, t_quantile

    for df in (1, 2, 3, 7, 23, 99):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    rng = np.random.default_rng(0)
    for n in (2, 5, 24):
        v = rng.normal(0.3, 0.1, n)
        ci = mean_interval(np.r_[v, np.nan])  # a NaN (an undefined area) is left out
        lo, hi = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=stats.sem(v))
        assert ci["n"] == n and ci["mean"] == pytest.approx(v.mean())
        assert (ci["lo"], ci["hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert mean_interval([0.4]) == {"mean": 0.4, "lo": None, "hi": None, "n": 1}
    assert mean_interval([np.nan]) is None


def test_mean_interval_covers_the_true_mean_95_percent_of_the_time():
    """4000 samples of 6 normal values: a t-interval covers the mean in 95 % of them; the normal
    quantile 1.96 in place of t(5) = 2.57 would cover about 90 %."""
    from cnnviz.engines.audit.metrics import mean_interval

    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(4000):
        ci = mean_interval(rng.normal(2.0, 3.0, 6))
        hits += ci["lo"] <= 2.0 <= ci["hi"]
    assert 0.94 <= hits / 4000 <= 0.96


def test_beats_share_counted_by_hand():
    from cnnviz.engines.audit.metrics import beats_share

    method = np.array([0.1, 0.2, 0.5, np.nan, 0.3])
    rand = np.array([0.3, 0.2, 0.4, 0.1, 0.6])
    b = beats_share(method, rand, lower_is_better=True)
    # finite pairs: (0.1, 0.3) win, (0.2, 0.2) tie, (0.5, 0.4) loss, (0.3, 0.6) win
    assert (b["wins"], b["n"], b["share"]) == (2, 4, 0.5)
    assert b["diff"]["mean"] == pytest.approx(np.mean([-0.2, 0.0, 0.1, -0.3]))
    assert beats_share(method, rand, lower_is_better=False)["wins"] == 1
    assert b["verdict"] == "undecided"  # 4 noisy differences: the interval spans 0


class Quadrant(torch.nn.Module):
    """Two classes; the logit of class 0 is the brightness of the top-left quadrant: the evidence
    for class 0 is exactly that quadrant."""

    def forward(self, x):
        s = 20 * (x[:, :, :16, :16].mean((1, 2, 3)) - 0.25)
        return torch.stack([s, -s], 1)


def test_a_random_map_beats_another_random_map_on_about_half_the_images_and_the_evidence_on_all():
    from cnnviz.engines.audit.metrics import auc, beats_share, deletion_insertion, random_maps

    g = torch.Generator().manual_seed(0)
    n = 200
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5
    x[:, :, :16, :16] += 0.5  # class 0, confidently
    filled = torch.zeros_like(x)
    a = torch.as_tensor(random_maps(range(n), (32, 32), cell=8, seed=1))
    b = torch.as_tensor(random_maps(range(n), (32, 32), cell=8, seed=2))
    evidence = torch.zeros(n, 32, 32)
    evidence[:, :16, :16] = 1
    evidence += 0.01 * torch.rand(n, 32, 32, generator=g)
    maps = torch.stack([a, b, evidence], 1)
    d, i = deletion_insertion(Quadrant(), x, filled, maps, torch.zeros(n, dtype=torch.long), steps=8)
    da, ia = auc(d), auc(i)
    for which, areas, lower in (("deletion", da, True), ("insertion", ia, False)):
        chance = beats_share(areas[:, 0], areas[:, 1], lower)
        assert 0.38 <= chance["share"] <= 0.62, (which, chance)  # exchangeable maps: 0.5 expected
        assert chance["diff"]["lo"] < 0 < chance["diff"]["hi"] and chance["verdict"] == "undecided"
        real = beats_share(areas[:, 2], areas[:, 1], lower)
        assert real["share"] >= 0.95 and real["verdict"] == "better", (which, real)
        worse = beats_share(areas[:, 1], areas[:, 2], lower)  # the other way round: the random map loses
        assert worse["share"] <= 0.05 and worse["verdict"] == "worse"


def test_sparse_bins_counted_by_hand():
    from cnnviz.engines.audit.metrics import sparse_bins

    assert sparse_bins([0, 1, 2, 3, 0, 7, 1]) == {"bins": 3, "images": 4, "of_bins": 5}
    assert sparse_bins([0, 5, 9]) == {"bins": 0, "images": 0, "of_bins": 2}


# --------------------------------------------------------------------------------------------------
# an audit's params against the formulas applied to its own arrays

SIZE = dict(crop=(64, 64), resize=72)


@pytest.fixture(scope="module")
def tiny():
    from cnnviz import load_model

    torch.manual_seed(0)
    lm = load_model("resnet18", weights="none")
    lm.preprocessing = dataclasses.replace(lm.preprocessing, **SIZE)
    return lm


def _labelled(folder: Path, lm, count: int, right: int, groups: list[int]) -> Path:
    """A CSV of the first `count` sample photos: the first `right` labelled with the model's own
    prediction (right), the others with a class of a group (`groups`: how many photos share each
    label), so that some classes hold several images."""
    rows = sample_rows()[:count]
    files = [SAMPLE / "images" / r["file"] for r in rows]
    with torch.no_grad():
        pred = [int(lm.model(lm.prepare(f)[1]).argmax()) for f in files]
    labels = [lm.class_name(p) for p in pred[:right]]
    others = [c for c in range(0, 1000, 7) if c not in pred]  # never a prediction: wrong
    for g, size in enumerate(groups):
        labels += [lm.class_name(others[g])] * size
    assert len(labels) == count
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for p, lab in zip(files, labels):
            w.writerow([str(p), lab])
    return path


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny):
    import cnnviz

    data = _labelled(tmp_path_factory.mktemp("report-data"), tiny, 8, right=3, groups=[3, 1, 1])
    return cnnviz.audit(tiny, data, "gradcam,saliency", steps=4, show=2, wrong=2, sanity_images=1, sanity_steps=3,
                        chunk=4, progress=False, layer="layer3", units=3, k=2, crop="rf")


def test_accuracy_intervals_are_wilson_of_the_counts(audited):
    r, p = audited, audited.params
    right = int((r.top5[:, 0] == r.labels).sum())
    assert right == 3 and p["top1_right"] == 3 and p["num_labelled"] == 8
    assert tuple(p["top1_interval"]) == pytest.approx(wilson_by_quadratic(3, 8), abs=1e-9)
    right5 = int((r.top5 == r.labels[:, None]).any(1).sum())
    assert p["top5_right"] == right5
    lo, hi = wilson_by_quadratic(right5, 8)
    assert tuple(p["top5_interval"]) == pytest.approx((max(lo, 0), min(hi, 1)), abs=1e-9)
    # per class: counted from the files and labels directly
    for c, iv in zip(r.class_indices, p["class_accuracy_interval"]):
        mine = r.labels == c
        k, n = int((r.top5[mine, 0] == c).sum()), int(mine.sum())
        lo, hi = wilson_by_quadratic(k, n)
        assert tuple(iv) == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-9)
    counts = sorted(r.class_counts.tolist())
    assert counts[-1] >= 2 and counts.count(1) >= 2 and sum(counts) == 8  # several images and single ones
    assert p["ece_sparse_bins"]["bins"] == int(((r.reliability_count > 0) & (r.reliability_count <= 2)).sum())
    assert p["unit_single_image_classes"] == counts.count(1) and p["unit_classes"] == len(counts)
    assert p["unit_crop"] == "rf" and p["unit_crop_asked"] == "rf"


def test_area_intervals_and_beats_random_from_the_per_image_areas(audited):
    from scipy import stats

    r, p = audited, audited.params
    for which, lower in (("deletion", True), ("insertion", False)):
        per, base = getattr(r, f"{which}_auc").astype(float), getattr(r, f"baseline_{which}_auc").astype(float)
        for j, m in enumerate(r.methods):
            v = per[:, j][np.isfinite(per[:, j])]
            ci = p[f"{which}_auc_interval"][m]
            lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
            assert (ci["mean"], ci["lo"], ci["hi"], ci["n"]) == pytest.approx((v.mean(), lo, hi, len(v)), rel=1e-6)
            b = p[f"{which}_beats_random"][m]
            ok = np.isfinite(per[:, j])
            wins = int(((per[ok, j] < base[ok]) if lower else (per[ok, j] > base[ok])).sum())
            assert (b["wins"], b["n"]) == (wins, int(ok.sum()))
            d = per[ok, j] - base[ok]
            lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
            assert (b["diff"]["lo"], b["diff"]["hi"]) == pytest.approx((lo, hi), rel=1e-6)
        ci = p[f"baseline_{which}_auc_interval"]
        assert ci["mean"] == pytest.approx(base.mean(), rel=1e-6)


def test_intervals_survive_save_and_reload(audited, tmp_path):
    from cnnviz.results import load_result

    audited.save(tmp_path / "a.npz")
    back = load_result(tmp_path / "a.npz")
    for key in ("top1_interval", "class_accuracy_interval", "deletion_auc_interval", "insertion_beats_random",
                "ece_sparse_bins", "unit_single_image_classes"):
        assert back.params[key] == json.loads(json.dumps(audited.params[key])), key  # JSON keeps floats exactly
    written = back.write_html(tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    iv = audited.params["top1_interval"]
    assert f"{100 * iv[0]:.1f}\u2013{100 * iv[1]:.1f} %" in page
    assert len(written) > 3


# --------------------------------------------------------------------------------------------------
# the page

class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.imgs, self.captions, self.rows = set(), [], [], [], []
        self._cap = None
        self._tr = None
        self.h2 = []
        self._h2 = None
        self.findings = []
        self._li = None
        self._in_findings = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if a.get("id") == "findings":
            self._in_findings = True
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "figcaption":
            self._cap = ""
        if tag == "tr":
            self._tr = []
        if tag == "td" and self._tr is not None:
            self._tr.append("")
        if tag == "h2":
            self._h2 = ""
        if tag == "li" and self._in_findings:
            self._li = ["", None]
        if tag == "a" and self._li is not None:
            self._li[1] = a.get("href")

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.captions.append(self._cap)
            self._cap = None
        if tag == "tr" and self._tr is not None:
            self.rows.append(self._tr)
            self._tr = None
        if tag == "h2":
            self.h2.append(self._h2)
            self._h2 = None
        if tag == "li" and self._li is not None:
            self.findings.append(tuple(self._li))
            self._li = None
        if tag == "section":
            self._in_findings = False

    def handle_data(self, data):
        if self._cap is not None:
            self._cap += data
        if self._tr:
            self._tr[-1] += data
        if self._h2 is not None:
            self._h2 += data
        if self._li is not None:
            self._li[0] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_page_opens_with_findings_linked_to_their_sections(audited, tmp_path):
    audited.write_html(tmp_path / "r")
    page = _parse(tmp_path / "r" / "index.html")
    assert page.h2[0] == "Findings"
    texts = [t for t, _ in page.findings]
    assert all(href and href.startswith("#") and href[1:] in page.ids for _, href in page.findings), page.findings
    iv = audited.params["top1_interval"]
    assert any("3 of 8" in t and f"{100 * iv[0]:.1f}\u2013{100 * iv[1]:.1f} %" in t for t in texts), texts
    for m in ("Grad-CAM", "saliency"):  # each method: does it beat the random map, on both measures
        line = next(t for t in texts if t.startswith(m + " ") or t.startswith(m + ":"))
        assert "deletion area" in line and "insertion area" in line and "random map" in line
    assert any("Worst classes" in t for t in texts)
    assert any("units" in t.lower() and "layer3" in t for t in texts)
    # the faithfulness table: interval and the share of images beating random, per method
    faith = [r for r in page.rows if len(r) == 5 and r[0] in ("Grad-CAM", "saliency")]
    b = audited.params["deletion_beats_random"]["gradcam"]
    assert any(f"({b['wins']} of {b['n']})" in r[3] and re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", r[1]) for r in faith)


def test_no_filler_class_means_paths_and_caps(audited, tiny, tmp_path):
    import cnnviz

    audited.write_html(tmp_path / "r")
    page = _parse(tmp_path / "r" / "index.html")
    html = (tmp_path / "r" / "index.html").read_text()
    # the classes of several images: drawn; the single-image classes are left out (said so)
    assert (tmp_path / "r" / "figures" / "classes.png").is_file()
    single = int((audited.class_counts == 1).sum())
    assert f"{single} class(es) with a single image are left out" in html
    # captions: paths relative to the folder the files share, never absolute
    assert page.captions and not any(str(SAMPLE) in c for c in page.captions)
    assert any(c == Path(str(audited.files[int(audited.shown_index[0])])).name for c in page.captions)
    # the cap of misclassified images drawn is labelled as a cap; the bare name is not a row
    assert any(r == ["wrong (misclassified images drawn, at most)", "2"] for r in page.rows)
    assert not any(r and r[0] == "wrong" for r in page.rows)
    # one image per class: no class means at all, and the page says why
    data = _labelled(tmp_path / "one", tiny, 3, right=1, groups=[1, 1])
    single = cnnviz.audit(tiny, data, "gradcam", steps=2, show=1, wrong=0, sanity_images=0, progress=False)
    single.write_html(tmp_path / "s")
    assert not (tmp_path / "s" / "figures" / "classes.png").exists()
    html = (tmp_path / "s" / "index.html").read_text()
    assert "Every class has one image here" in html
    # and the per-class table keeps only the classes whose one image was wrong (2 of the 3)
    assert "lists the 2 classes whose image was misclassified; the other 1 were right" in html


def test_single_file_holds_every_figure(audited, tmp_path):
    from PIL import Image

    audited.write_html(tmp_path / "folder")
    written = audited.write_html(tmp_path / "one", single_file=True)
    assert not (tmp_path / "one" / "figures").exists()
    assert sorted(p.name for p in written) == ["audit.json", "audit.npz", "index.html"]
    page = _parse(tmp_path / "one" / "index.html")
    folder = _parse(tmp_path / "folder" / "index.html")
    assert len(page.imgs) == len(folder.imgs) == len(list((tmp_path / "folder" / "figures").iterdir()))
    for src, ref in zip(page.imgs, folder.imgs):
        head = "data:image/png;base64,"
        assert src.startswith(head)
        png = base64.b64decode(src[len(head):])
        with Image.open(io.BytesIO(png)) as im, Image.open(tmp_path / "folder" / ref) as other:
            assert im.size == other.size  # the same figure, inside the page


# --------------------------------------------------------------------------------------------------
# the command, in a browser

def _chromedriver():
    import sys

    from helpers import ASSETS

    sys.path.insert(0, str(ASSETS / "figures"))
    import make_audit_screenshot as screenshot

    return screenshot


@pytest.mark.slow
def test_single_file_command_page_alone_in_a_headless_browser(tiny, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cnnviz_cli.main as climain

    screenshot = _chromedriver()
    if screenshot.chromedriver() is None:
        pytest.skip("needs chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    data = _labelled(tmp_path / "data", tiny, 4, right=2, groups=[2])
    monkeypatch.setattr(climain, "_load", lambda spec, structure_only=False: tiny)
    out = CliRunner().invoke(climain.cli, ["audit", str(data), "--out", str(tmp_path / "report"), "--steps", "2",
                                           "--sanity-images", "1", "--layer", "layer3", "--num-units", "2", "-k",
                                           "2", "--crop", "activation", "--single-file", "-q"])
    assert out.exit_code == 0, out.output
    assert "figures inside" in out.output
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "report" / "index.html", alone / "mailed.html")
    assert os.listdir(alone) == ["mailed.html"]
    with screenshot.chromium() as browser:
        browser.get((alone / "mailed.html").as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.src.slice(0, 22), i.complete, i.naturalWidth])")
        assert len(images) >= 4 and all(s == "data:image/png;base64," and ok and w > 0 for s, ok, w in images), images
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith("data:") for u in urls), urls  # nothing fetched: no file, no network
        refs = browser.execute_script(
            "return Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || "
            "e.getAttribute('href'))")
        assert all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs]
        severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not severe, severe
        browser.save_screenshot(str(tmp_path / "alone.png"))


def test_sanity_plot_one_labelled_line_per_method_and_where_a_map_went_all_zero(audited):
    """The sanity figure draws one line per method (mean over the images, in the legend) and a band,
    not one unlabelled line per image; a step where a map is all zero (Spearman undefined: NaN) is
    marked in the legend and said in a sentence that names the step."""
    import copy

    import matplotlib.pyplot as plt

    from cnnviz.render.audit import figures as F

    r = copy.copy(audited)
    assert len(r.sanity_files) == 1 and len(r.sanity_methods) == 2
    r.sanity_files = np.asarray(list(r.sanity_files) * 2)  # two images: a band
    rho = np.concatenate([r.sanity_spearman, r.sanity_spearman * 0.5], 0)
    rho[0, 0, 2:] = np.nan  # Grad-CAM's map on image 0 all zero from the 3rd step on
    r.sanity_spearman = rho
    assert len(r.sanity_steps) == 4  # Lite0's long names in their place: none may be cut
    r.sanity_steps = np.asarray(["original", "_blocks.12._depthwise_conv", "_blocks.4._expand_conv", "_conv_stem"])
    fig = F.sanity_figure(r)
    try:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[0].startswith("Grad-CAM (mean of 2") and labels[-1].startswith("saliency (mean of 2")
        assert labels[1] == "Grad-CAM: map all zero from here (1 of 2)"
        assert len(ax.lines) == 2 + 1 + 1  # two means, the stop line, the zero line
        assert len(ax.collections) == 2  # the bands
        stop = [ln for ln in ax.lines if ln.get_linestyle() == ":"][0]
        assert stop.get_xdata()[0] == 2
        np.testing.assert_allclose(ax.lines[0].get_ydata()[2:], rho[1, 0, 2:])  # the other image carries on
        ticks = [t.get_text().replace("\n", "") for t in ax.get_xticklabels()]
        assert ticks == [str(v) for v in r.sanity_steps]  # whole layer names, none cut with "\u2026"
    finally:
        plt.close(fig)
    step = str(r.sanity_steps[2])
    assert F.sanity_stops(r) == [f"Grad-CAM's line stops at \u201c{step}\u201d: from there its map is all zero (no "
                                 "ranking to correlate) on 1 of 2 image(s)."]
