"""The audit report in a real headless browser (Debian's chromium + chromedriver, driven by
selenium), with networking disabled: no console errors, every image loads, the sections and the
accuracy are there, nothing is fetched from outside the report folder, text from file names is
escaped. The browser is the one assets/figures/make_audit_screenshot.py takes the README's
screenshot with (of a 50-photo report)."""

from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import ASSETS, sample_image, sample_rows

sys.path.insert(0, str(ASSETS / "figures"))
import make_audit_screenshot as screenshot  # noqa: E402  (the README screenshot's browser)

CLASSES = [0, 2, 4]
SECTIONS = ["Findings", "1. Predictions", "2. Where the model looks", "3. Faithfulness of each method on this model", "4. Units",
            "5. What the model relies on", "6. Provenance"]
ODD_NAME = 'odd <i>name<b> & "quote\'.jpg'


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(screenshot.chromedriver() is None, reason="needs chromium and chromedriver (apt-get install -y "
                                                                 "chromium chromium-driver; .ci/run does it)")]


@pytest.fixture(scope="module")
def lite0():
    from cnnviz import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def report(tmp_path_factory, lite0):
    import cnnviz_cli.main as climain

    root = tmp_path_factory.mktemp("audit-browser")
    (root / "odd").mkdir()
    (root / "odd" / ODD_NAME).symlink_to(sample_image(CLASSES[-1]))
    names = {int(r["class_index"]): r["class_name"] for r in sample_rows()}
    files = [str(sample_image(c)) for c in CLASSES[:-1]] + [f"odd/{ODD_NAME}"]
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for c, name in zip(CLASSES, files):
            w.writerow([name, names[c]])
    real, cwd = climain._load, os.getcwd()
    climain._load = lambda spec, structure_only=False: lite0
    os.chdir(root)  # paths as a user types them: the page (and the README's screenshot) shows "data.csv"
    try:
        out = CliRunner().invoke(climain.cli, ["audit", "data.csv", "--out", "report", "--methods", "gradcam,saliency",
                                               "--steps", "4", "--sanity-images", "1", "--layer", "_blocks.10",
                                               "--num-units", "3", "-k", "3", "-q"])
    finally:
        climain._load = real
        os.chdir(cwd)
    assert out.exit_code == 0, out.output
    return root / "report", [root / f for f in files]


@pytest.fixture(scope="module")
def browser():
    with screenshot.chromium() as driver:  # headless, offline
        yield driver


def test_report_in_a_headless_browser_offline(report, browser, lite0, tmp_path):
    from selenium.webdriver.common.by import By

    folder, files = report
    browser.get((folder / "index.html").as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    # networking really is off: a page from outside cannot be fetched
    assert browser.execute_script("return navigator.onLine") is False
    severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not severe, severe
    # every image loads, and every one the folder holds is on the page
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert images and all(ok and width > 0 for _, ok, width in images), images
    assert sorted(src for src, _, _ in images) == sorted(f"figures/{p.name}" for p in (folder / "figures").iterdir())
    # nothing was requested from outside the report folder, and nothing links out to be loaded
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(folder.as_uri() + "/") for u in urls), urls  # (file: loads are not listed)
    refs = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || "
        "e.getAttribute('href'))")
    assert all(not r.startswith(("http:", "https:", "//")) for r in refs), refs
    assert not browser.find_elements(By.TAG_NAME, "script")
    # the sections, and the accuracy of a direct forward loop
    assert [h.text for h in browser.find_elements(By.TAG_NAME, "h2")] == SECTIONS
    with torch.no_grad():
        pred = [int(lite0.model(lite0.prepare(f)[1]).argmax()) for f in files]
    acc = float(np.mean(np.array(pred) == np.array(CLASSES)))
    assert browser.find_element(By.ID, "top1").text == f"{100 * acc:.1f} %"
    k, z = round(acc * 3), 1.959963984540054
    centre, half = (k / 3 + z * z / 6) / (1 + z * z / 3), z * np.sqrt(k / 3 * (1 - k / 3) / 3 + z * z / 36) / (1 + z * z / 3)
    lo, hi = (0.0 if k == 0 else centre - half), (1.0 if k == 3 else centre + half)  # Wilson, written out
    assert (f"({k} of 3 labelled images; 95 % interval {100 * lo:.1f}\u2013{100 * hi:.1f} %)"
            in browser.find_element(By.ID, "accuracy").text)
    # the findings come first and link to sections that exist
    links = [a.get_attribute("href").split("#", 1)[1] for a in browser.find_elements(By.CSS_SELECTOR, "#findings a")]
    assert links and all(browser.find_elements(By.ID, a) for a in links), links
    # a file name with markup in it is shown as text, not interpreted
    assert not browser.find_elements(By.CSS_SELECTOR, "figcaption i")
    assert any(ODD_NAME in c.text for c in browser.find_elements(By.TAG_NAME, "figcaption"))
    shot = tmp_path / "shot.png"
    browser.save_screenshot(str(shot))
    screenshot.shrink(shot, tmp_path / "small.png")  # as the README's screenshot is made
    from PIL import Image

    with Image.open(tmp_path / "small.png") as im:
        assert im.width == screenshot.WIDTH and im.height > screenshot.WIDTH  # the top of the page, upright


def test_report_renders_again_from_its_numbers(report, tmp_path):
    from cnnviz_cli.main import cli

    folder, _ = report
    out = CliRunner().invoke(cli, ["render", str(folder / "audit.npz"), "--out", str(tmp_path / "summary.png")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "summary.png").stat().st_size > 10_000
