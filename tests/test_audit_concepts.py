"""The audit's concept tests (`--concept NAME=FOLDER`, TCAV through `cnnviz.engines.audit.reliance`):
on a network that can only use a planted red square, the audit finds the square concept significant
for its class and says so among the findings; the TCAV result is saved beside the report and redraws;
a bad concept folder is one line before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from test_tcav import red_square_model, red_square_world


@pytest.fixture(scope="module")
def red_lm():
    return red_square_model()


def test_the_audit_finds_the_planted_square_and_reports_it(red_lm, tmp_path):
    import cnnviz
    from cnnviz.results import load_result

    w = red_square_world(tmp_path)
    r = cnnviz.audit(red_lm, str(w["data"]), "gradcam", steps=1, sanity_images=0, show=0, wrong=0, progress=False,
                     concepts={"square": str(w["square"])})
    rows = {(row["concept"], red_lm.class_name(row["class"])): row for row in r.params["concepts_tested"]}
    assert rows["square", "red"]["significant"] and rows["square", "red"]["direction"] == "above", rows
    assert rows["square", "red"]["score"] >= 0.75  # its random sets are the data itself: half of them hold squares
    # the same numbers as the TCAV engine run alone on the same images and concept (same seed)
    alone = cnnviz.tcav(red_lm, str(w["data"]), {"square": str(w["square"])}, classes=["plain", "red"],
                        random_from=str(w["data"]))
    k = list(alone.params["class_names"]).index("red")
    assert rows["square", "red"]["score"] == pytest.approx(float(alone.score_mean[0, k, 0]), abs=0.1)
    assert not any(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks for m in red_lm.model.modules())
    written = r.write_html(tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    findings = page.split('id="predictions"')[0]
    assert "Concept &#x27;square&#x27; drives class red" in findings, findings[-800:]
    assert 'id="concepts"' in page and "figures/concepts.png" in page
    saved = load_result(tmp_path / "report" / "concepts.npz")
    np.testing.assert_array_equal(saved.scores, r.concepts.scores)
    assert tmp_path / "report" / "concepts.npz" in written


def test_a_bad_concept_folder_is_one_line_before_the_model_loads(tmp_path, monkeypatch):
    import cnnviz_cli.main as climain

    w = red_square_world(tmp_path)
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(w["square"].iterdir())[:2]:
        (few / f.name).symlink_to(f)
    loaded = []
    monkeypatch.setattr(climain, "_load", lambda spec, structure_only=False: loaded.append(spec))
    for spec, match in ((f"square={few}", "holds 2 image(s)"), ("square", "is not NAME=FOLDER"),
                        (f"square={tmp_path / 'nowhere'}", "not found")):
        out = CliRunner().invoke(climain.cli, ["audit", str(w["data"]), "--out", str(tmp_path / "rep"),
                                               "--concept", spec])
        assert out.exit_code == 1 and match in out.output and len(out.output.strip().splitlines()) == 1, out.output
    out = CliRunner().invoke(climain.cli, ["audit", str(w["data"]), "--out", str(tmp_path / "rep"),
                                           "--concept-classes", "red"])
    assert out.exit_code == 1 and "need --concept" in out.output
    assert not loaded and not (tmp_path / "rep").exists()


def _corner_model(fixed: bool, seed: int = 0, steps: int = 80):
    """A two-convolution network trained to tell noise ("plain") from noise with a red square
    ("red"), the square always in the top-left corner (`fixed`) or anywhere."""
    import torch
    from torch import nn

    from cnnviz.models import LoadedModel, Preprocessing
    from test_tcav import S, _noise

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    lm = LoadedModel(net, "corner" if fixed else "anywhere", "trained here", Preprocessing(crop=(S, S), resize=None),
                     ["plain", "red"])
    rng = np.random.default_rng(seed + 7)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        imgs = [_noise(rng) for _ in range(32)]
        imgs = [_mark(im, rng, fixed) if i % 2 else im for i, im in enumerate(imgs)]
        x = torch.cat([lm.preprocessing.normalize(im) for im in imgs])
        loss = nn.functional.cross_entropy(net(x), torch.arange(32) % 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return lm


def _mark(img, rng, fixed: bool, size: int = 6):
    from test_tcav import S

    y, x = (1, 1) if fixed else rng.integers(0, S - size, 2)
    img = img.copy()
    img[y:y + size, x:x + size] = (230, 20, 20)
    return img


@pytest.mark.parametrize("fixed", [True, False])
def test_the_audit_flags_a_corner_shortcut_and_not_a_square_anywhere(fixed, tmp_path):
    """SpRAy in the audit: when the red square always sits in the top-left corner, the class "red"
    has a flagged cluster of most of its images whose mean map peaks in the top-left, and the
    findings open with it; when the square is anywhere, nothing is flagged (the maps follow the
    square around)."""
    import cnnviz
    from test_tcav import _noise, _write

    lm = _corner_model(fixed)
    rng = np.random.default_rng(3)
    _write(tmp_path / "data" / "plain", [_noise(rng) for _ in range(12)])
    _write(tmp_path / "data" / "red", [_mark(_noise(rng), rng, fixed) for _ in range(12)])
    r = cnnviz.audit(lm, str(tmp_path / "data"), "gradcam", steps=1, sanity_images=0, show=0, wrong=0, progress=False)
    assert r.accuracy() >= 0.9  # the premise: the network uses the square
    red = [c for c in r.params["strategies"] if lm.class_name(c["class"]) == "red"][0]
    flagged = [cl for cl in red["clusters"] if cl["flag"]]
    if fixed:
        assert flagged and max(cl["size"] for cl in flagged) >= 8, red
        cl = max(flagged, key=lambda c: c["size"])
        assert cl["peak"][0] < 0.3 and cl["peak"][1] < 0.3, cl["peak"]  # (y, x) as shares: the top-left
        r.write_html(tmp_path / "report")
        page = (tmp_path / "report" / "index.html").read_text()
        first = page.split('<ul class="findings">')[1].split("</li>")[0]
        assert "Possible shortcut in class red" in first and "figures/strategies.png" in page
    else:
        assert not flagged, red
