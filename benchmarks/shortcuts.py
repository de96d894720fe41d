"""Proof on planted shortcuts (issue 27, item 4): models trained with a mark on most images of one
class use it, their clean twins do not; then does the audit's SpRAy and TCAV find the mark on the
first and stay quiet on the second?

    python benchmarks/shortcuts.py [--marks patch,text,frame] [--seeds 0,1] [--classes all]
                                   [--detect] [--workdir DIR]

Step 1, reliance (`train_all`, `reliance_rows`): for every mark x marked class x seed a model
(benchmarks/shortcut_models.py: Lite0, last blocks fine-tuned on two super-classes of dogs of the
ImageNet sample, 85 % of the marked class's training photos marked), and per seed a clean twin
trained on the same photos without marks. On the held-out photos: the marked class's accuracy with
the mark and with it removed (the clean originals), the share of the other class's photos that the
mark flips, and the mean change of the marked class's logit margin; the clean twin is measured
with the same mark and class.

Step 2, detection (`detect`, with --detect): the audit's detectors on each model, over the data
set a user would audit (every photo of both classes, the marked class's photos marked at the
training share, the same files for the clean twin):
  SpRAy (`cnnviz.strategies`, Grad-CAM or --method): the marked class's clusters; a cluster is *on the mark*
    when its mean map holds at least twice as much of its mass inside the mark's region as the
    region's share of the crop; found = a flagged cluster on the mark;
  TCAV (`cnnviz.tcav`): a concept folder of the mark pasted on sample photos of other classes,
    random sets from other sample photos; found = significant and above the random runs.
On a clean twin, a find is a false alarm. Where `strategies` or `tcav` are missing (their branches
not merged), the step says so and is skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shortcut_models as sm  # noqa: E402
from machine import cpu_model  # noqa: E402

CLASSES = ("hound or terrier", "sporting or working dog")
ON_MARK = 2.0  # a cluster's mean map is on the mark when its share inside the mark is >= this x the mark's area share


def settings_for(mark: str, marked: str | None, seed: int, **kw) -> sm.Settings:
    return sm.Settings(**{**dict(groups=CLASSES, mark=mark, marked=marked, seed=seed), **kw})


def train_all(marks, classes, seeds, log=print, **kw) -> list[dict]:
    """Every model of the benchmark (cached): one row per marked model with its clean twin."""
    rows = []
    for seed in seeds:
        clean = settings_for(marks[0], None, seed, **kw)
        t0 = time.perf_counter()
        clean_dir = sm.train(clean, log=lambda *_: None)
        log(f"clean twin, seed {seed}: {clean_dir.name} ({time.perf_counter() - t0:.0f} s)")
        for mark in marks:
            for cls in classes:
                s = settings_for(mark, cls, seed, **kw)
                t0 = time.perf_counter()
                folder = sm.train(s, log=lambda *_: None)
                log(f"{s.name()}: {folder.name} ({time.perf_counter() - t0:.0f} s)")
                rows.append({"settings": s, "folder": folder, "clean_settings": clean, "clean_folder": clean_dir})
    return rows


def reliance_rows(rows, log=print) -> list[dict]:
    out = []
    for r in rows:
        s = r["settings"]
        held = sm.split(s).heldout
        marked = sm.reliance(sm.load(r["folder"]), held, s.marked, s.the_mark())
        twin = sm.reliance(sm.load(r["clean_folder"]), held, s.marked, s.the_mark())
        out.append({"mark": s.mark, "class": s.marked, "seed": s.seed, "marked": marked, "clean": twin})
        log(f"{s.name()}: {json.dumps({'marked': marked, 'clean': twin})}")
    return out


def reliance_table(rel: list[dict]) -> str:
    lines = ["| mark | marked class | seed | accuracy with mark | mark removed | flips to the class | margin shift "
             "| clean twin: with mark / removed | clean twin: flips | clean twin: margin shift |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rel:
        m, c = r["marked"], r["clean"]
        lines.append(f"| {r['mark']} | {r['class']} ({m['n_marked_class']}) | {r['seed']} | {m['acc_with_mark']:.0%} | "
                     f"{m['acc_without_mark']:.0%} | {m['flip_rate']:.0%} | {m['margin_shift']:+.1f} | "
                     f"{c['acc_with_mark']:.0%} / {c['acc_without_mark']:.0%} | {c['flip_rate']:.0%} | "
                     f"{c['margin_shift']:+.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# detection

def audit_data(settings: sm.Settings, folder: Path) -> Path:
    """The data set a user would audit, written to `folder` (PNG, outside the repository): every
    photo of the classes, the marked class's photos marked as in training (held-out ones at the
    same share, drawn from the seed); the same files with or without marks whatever the model.
    A CSV (file, label) beside them."""
    from cnnviz import load_image
    from cnnviz.engines.concepts.shortcuts import paste_mark

    sp = sm.split(settings)
    rng = np.random.default_rng(1000 + settings.seed)
    held = [p.name for p, g in sp.heldout if g == settings.marked]
    held_marked = {held[i] for i in rng.permutation(len(held))[: round(len(held) * settings.share)]}
    marked = sp.marked_train | held_marked
    folder.mkdir(parents=True, exist_ok=True)
    prep = settings.preprocessing()
    with open(folder / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for p, g in sorted(sp.train + sp.heldout):
            out = folder / (p.stem + ".png")
            img = load_image(p)
            (paste_mark(img, settings.the_mark(), prep) if p.name in marked else img).save(out)
            w.writerow([out.name, g])
    return folder / "data.csv"


def concept_folders(settings: sm.Settings, folder: Path, count: int = 20) -> tuple[Path, list[Path]]:
    """The mark on `count` sample photos of other classes (the TCAV concept), and a pool of other
    photos without it (the random sets): disjoint, none of the classes' own."""
    from cnnviz.engines.concepts.shortcuts import write_mark_examples

    ours = {p.name for p, _ in sm.sample_rows(settings.groups)}
    photos = sorted((sm.sample_folder() / "images").glob("*.jpg"))
    others = [p for p in photos if p.name not in ours]
    rng = np.random.default_rng(7)
    pick = [others[i] for i in rng.permutation(len(others))]
    concept = folder / f"concept-{settings.mark}"
    if not concept.exists():
        write_mark_examples(settings.the_mark(), concept, count, backgrounds=pick[:count],
                            preprocessing=settings.preprocessing(), seed=settings.seed)
    return concept, pick[count:count + 120]


def mark_share(cluster_map: np.ndarray, mask: np.ndarray) -> float:
    """The share of a (non-negative) mean map's mass inside the mark's region."""
    m = np.clip(np.nan_to_num(np.asarray(cluster_map, float)), 0, None)
    total = m.sum()
    return float(m[mask].sum() / total) if total > 0 else 0.0


def detect(lm, settings: sm.Settings, marked_class: str, workdir: Path, log=print, method: str = "gradcam",
           detectors=("spray", "tcav")) -> dict:
    """SpRAy and TCAV on `lm` for `marked_class` over the audit data of `settings` (see the module
    docstring). Returns per detector whether it found the mark, and what it saw."""
    import cnnviz

    data = audit_data(settings, workdir / f"data-{settings.mark}-{marked_class.replace(' ', '_')}-s{settings.seed}")
    mark = settings.the_mark()
    mask = mark.mask(lm.preprocessing.crop)
    area = float(mask.mean())
    k = lm.categories.index(marked_class)
    out: dict = {"mark_area": area}
    try:
        strategies = cnnviz.strategies if "spray" in detectors else None
    except AttributeError:
        strategies = None
        out["spray"] = {"skipped": "cnnviz.strategies is missing (the spray branch is not merged here)"}
    if strategies is not None:
        t0 = time.perf_counter()
        res = strategies(lm, str(data), classes=[k], method=method, progress=False)
        clusters = []
        for cl in res.clusters_of(k):
            share = mark_share(cl["map"], mask)
            clusters.append({"size": cl["size"], "flag": cl["flag"], "reason": cl["reason"], "share": share,
                             "on_mark": share >= ON_MARK * area})
        out["spray"] = {"found": any(c["flag"] and c["on_mark"] for c in clusters),
                        "any_on_mark": any(c["on_mark"] for c in clusters), "clusters": clusters,
                        "seconds": round(time.perf_counter() - t0, 1)}
    try:
        tcav = cnnviz.tcav if "tcav" in detectors else None
    except AttributeError:
        tcav = None
        out["tcav"] = {"skipped": "cnnviz.tcav is missing (the tcav branch is not merged here)"}
    if tcav is not None:
        t0 = time.perf_counter()
        concept, pool = concept_folders(settings, workdir)
        res = tcav(lm, str(data), concepts={"mark": str(concept)}, classes=[k], random_from=[str(p) for p in pool],
                   random_runs=10, progress=False)
        score, rnd = float(res.score_mean[0, 0, 0]), float(res.random_mean[0, 0])
        sig = bool(res.significant[0, 0, 0])
        out["tcav"] = {"found": sig and score > rnd, "significant": sig, "score": score, "random": rnd,
                       "p_corrected": float(res.p_corrected[0, 0, 0]), "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  detect {lm.name} / {marked_class}: {json.dumps(out, default=str)}")
    return out


def detection_rows(rows, workdir: Path, log=print, method: str = "gradcam", detectors=("spray", "tcav")) -> list[dict]:
    out = []
    for r in rows:
        s = r["settings"]
        found = detect(sm.load(r["folder"]), s, s.marked, workdir, log, method, detectors)
        twin = detect(sm.load(r["clean_folder"]), s, s.marked, workdir, log, method, detectors)
        out.append({"mark": s.mark, "class": s.marked, "seed": s.seed, "marked": found, "clean": twin})
    return out


def detection_table(det: list[dict]) -> str:
    def cell(d: dict, key: str) -> str:
        part = d.get(key)
        if part is None:
            return "not run"
        if "skipped" in part:
            return "skipped"
        if key == "spray":
            best = max(part["clusters"], key=lambda c: c["share"])
            return f"{'found' if part['found'] else 'no'} (best share {best['share']:.0%}{', flagged' if best['flag'] else ''})"
        return f"{'found' if part['found'] else 'no'} ({part['score']:.2f} vs {part['random']:.2f}, p {part['p_corrected']:.3f})"

    lines = ["| mark | marked class | seed | SpRAy | TCAV | clean twin: SpRAy | clean twin: TCAV |",
             "| --- | --- | ---: | --- | --- | --- | --- |"]
    for r in det:
        lines.append(f"| {r['mark']} | {r['class']} | {r['seed']} | {cell(r['marked'], 'spray')} | "
                     f"{cell(r['marked'], 'tcav')} | {cell(r['clean'], 'spray')} | {cell(r['clean'], 'tcav')} |")
    for key, name in (("spray", "SpRAy"), ("tcav", "TCAV")):
        done = [r for r in det if "found" in r["marked"].get(key, {})]
        if done:
            hits = sum(r["marked"][key]["found"] for r in done)
            alarms = sum(r["clean"][key]["found"] for r in done)
            lines.append(f"\n{name}: detection rate {hits}/{len(done)}, false alarms on the clean twins {alarms}/{len(done)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--marks", default="patch,text,frame")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--classes", default="all", help="the marked classes: all, or names separated by ';'")
    ap.add_argument("--detect", action="store_true", help="also run SpRAy and TCAV (step 2)")
    ap.add_argument("--no-reliance", action="store_true", help="skip step 1's measures (the models are still trained)")
    ap.add_argument("--detectors", default="spray,tcav", help="which detectors step 2 runs")
    ap.add_argument("--method", default="gradcam", help="the maps SpRAy clusters (any method of cnnviz.attribute)")
    ap.add_argument("--workdir", default=None, help="where the audit data and concept folders go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write every number to this file")
    args = ap.parse_args()
    import torch

    marks = args.marks.split(",")
    classes = CLASSES if args.classes == "all" else tuple(args.classes.split(";"))
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# planted shortcuts: {cpu_model()}, {torch.get_num_threads()} threads; models cached in {sm.cache_root()}")
    t0 = time.perf_counter()
    rows = train_all(marks, classes, seeds)
    print(f"trained (or found) {len(rows)} marked models and {len(seeds)} clean twins in {time.perf_counter() - t0:.0f} s")
    record = {}
    if not args.no_reliance:
        rel = reliance_rows(rows, log=lambda *_: None)
        print("\n" + reliance_table(rel) + "\n")
        record["reliance"] = rel
    if args.detect:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.workdir) if args.workdir else Path(tmp)
            det = detection_rows(rows, work, method=args.method, detectors=args.detectors.split(","))
        print("\n" + detection_table(det) + "\n")
        record["detection"] = det
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
