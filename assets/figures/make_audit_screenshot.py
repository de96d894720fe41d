"""Regenerate the README's screenshot of the audit report, assets/figures/audit.png:

    python assets/figures/make_audit_screenshot.py [--every 10] [--count N] [--steps 16] [--keep DIR]
    python assets/figures/make_audit_screenshot.py --report DIR   # a kept report, redrawn: no audit

Audits every 10th photo of the ImageNet sample (50 photos, classes 0, 20, 40, ... 980;
../shared/data/imagenet-sample, or $CNNVIZ_IMAGENET_SAMPLE, read in place) with EfficientNet-Lite0,
as the README's command does (`cnnviz audit data.csv --out report --methods gradcam,saliency
--layer _blocks.10`), opens the report in headless chromium (driven by selenium through
chromedriver, networking off, as tests/test_audit_browser.py does) and saves the top of the page,
700 px wide. Prints the audit's seconds per section (from the report's provenance). `--keep DIR`
leaves the report there; `--report DIR` takes the screenshot of such a report instead of auditing
again, after redrawing its page from its numbers (`cnnviz render DIR/audit.npz --out ...`), so that
a change to the report's figures or page shows without the audit's minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLE = Path(os.environ.get("CNNVIZ_IMAGENET_SAMPLE") or REPO.parent / "shared" / "data" / "imagenet-sample")
if not (SAMPLE / "labels.csv").is_file():
    SAMPLE = Path("/work/shared/data/imagenet-sample")
WINDOW = (800, 1100)  # the browser's window in CSS pixels: the screenshot is its top (narrow: larger text)
WIDTH = 700  # the PNG's width in pixels: the README shows it at most this wide


def chromedriver() -> str | None:
    for name in ("chromedriver", "/usr/lib/chromium/chromedriver"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def chromium(window: tuple[int, int] = WINDOW):
    """Headless chromium under selenium, offline (a proxy that does not exist, and the network
    conditions set to offline), collecting the console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={window[0]},{window[1]}", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>", "--no-first-run", "--disable-background-networking",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    if os.path.exists("/usr/lib/chromium/chromium"):
        opts.binary_location = "/usr/lib/chromium/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver()), options=opts)
    try:
        driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        yield driver
    finally:
        driver.quit()


def shrink(shot: Path, target: Path, width: int = WIDTH) -> None:
    """The browser's screenshot at `width` pixels, 128 colours (a small PNG for the README)."""
    from PIL import Image

    with Image.open(shot) as im:
        im = im.convert("RGB")
        w, h = im.size
        im = im.resize((width, round(h * width / w)), Image.Resampling.LANCZOS)
        im = im.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        im.save(target, optimize=True)


def take(report: Path, shot: Path, target: Path) -> None:
    """The top of `report`'s page in the browser, shrunk into `target`."""
    with chromium() as browser:
        browser.get((report / "index.html").as_uri())
        severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        if severe:
            sys.exit(f"the page logged errors: {severe}")
        browser.save_screenshot(str(shot))
    shrink(shot, target)
    print("wrote", target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=10, help="audit every N-th sample photo [default: 10, 50 photos]")
    ap.add_argument("--count", type=int, default=None, help="at most N of those photos [default: all]")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps [default: 16]")
    ap.add_argument("--keep", type=Path, default=None, help="leave the report in this folder")
    ap.add_argument("--report", type=Path, default=None, help="screenshot this kept report (redrawn), no audit")
    ap.add_argument("--out", type=Path, default=HERE / "audit.png")
    args = ap.parse_args()
    if chromedriver() is None:
        sys.exit("needs chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    if args.report is not None:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report"
            subprocess.run(["cnnviz", "render", str(args.report / "audit.npz"), "--out", f"{report}/"], check=True)
            take(report, Path(tmp) / "shot.png", args.out)
        return
    with open(SAMPLE / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:: args.every][: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "photos").symlink_to(SAMPLE / "images")  # read in place: nothing is copied
        with open(work / "data.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "class_index"])
            for r in rows:
                w.writerow([f"photos/{r['file']}", r["class_index"]])
        cmd = ["cnnviz", "audit", "data.csv", "--out", "report", "--methods", "gradcam,saliency",
               "--layer", "_blocks.10", "--steps", str(args.steps), "-q"]
        print("$", " ".join(cmd), f"  # {len(rows)} photos, in {work}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=work, check=True)  # paths as a user types them: the page shows "data.csv"
        total = time.perf_counter() - t0
        report = work / "report"
        params = json.loads((report / "audit.json").read_text())
        seconds = (params.get("params") or params).get("seconds") or {}
        print(f"audit of {len(rows)} photos: {total:.0f} s in all (model loading included); per section:")
        for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {name:24s} {s:7.1f} s   {s / len(rows):6.2f} s per image")
        take(report, work / "shot.png", args.out)
        if args.keep is not None:
            shutil.copytree(report, args.keep, dirs_exist_ok=True)
            print("report kept in", args.keep)


if __name__ == "__main__":
    main()
