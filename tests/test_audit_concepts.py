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
