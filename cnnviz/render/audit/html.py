"""The audit report: one static HTML page (no script, no stylesheet or font from the network: it
opens from disk, offline) with its figures as PNG files beside it (or, with `single_file`, inside
it as data: URIs, so that the page alone can be mailed), and the result itself (`audit.npz` +
`audit.json`) so that `cnnviz render` can redraw it. Every text that comes from the data (file and
class names, parameters) is escaped. The page opens with the findings a reader should take away,
each linked to its section; every estimated number carries its n and a 95 % interval."""

from __future__ import annotations

import base64
import io
import os
from html import escape
from pathlib import Path

import numpy as np

from ..style import layer_label as _layer_label
from . import figures as F
from . import reliance as R

MAX_CLASS_ROWS = 8  # classes drawn with their mean maps
MAX_TABLE_ROWS = 30  # rows of the per-class accuracy table

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
p.explain{background:#f4f6f8;border-left:4px solid #7a9cc6;padding:.5em .8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img{max-width:100%;height:auto;display:block;margin:.5em 0}figure{margin:1em 0}
figcaption{font-size:.9em;color:#555}.big{font-size:1.3em;font-weight:bold}code{font-size:.9em}
nav a{margin-right:1em}
ul.findings{background:#fbf8ef;border-left:4px solid #d4a72c;padding:.6em .8em .6em 2em}ul.findings li{margin:.3em 0}
p.note{color:#7a4d00;font-size:.95em}
"""


def _pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _interval_pct(iv) -> str:
    """A Wilson interval [lo, hi] as "64.1-93.2 %" (en dash); "n/a" without one."""
    if not iv or iv[0] is None:
        return "n/a"
    return f"{100 * iv[0]:.1f}\u2013{100 * iv[1]:.1f} %"


def _auc_ci(ci) -> str:
    """A mean_interval as "0.206 [0.170, 0.242]"; the mean alone with one image."""
    if not ci:
        return "n/a"
    if ci.get("lo") is None:
        return f"{ci['mean']:.3f} (one image: no interval)"
    return f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


def _beats(b) -> str:
    """The share of images on which a map beats the random map: "81 % (13 of 16)"."""
    if not b:
        return "n/a"
    return f"{100 * b['share']:.0f} % ({b['wins']} of {b['n']})"


def display_paths(files) -> tuple[list[str], str | None]:
    """The files as the report shows them: relative to the folder they share when they are
    absolute paths (a CSV that lists /data/photos/x.jpg shows x.jpg), else as the data lists them
    (already relative to the data). Returns (paths, the shared folder or None)."""
    files = [str(f) for f in files]
    if not files or not all(os.path.isabs(f) for f in files):
        return files, None
    common = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    if common in files:  # one file, or every file the same: its folder
        common = os.path.dirname(common)
    return [os.path.relpath(f, common) for f in files], common


def _shown_path(result, f: str) -> str:
    paths, _ = display_paths(result.files)
    where = {str(a): b for a, b in zip(result.files, paths)}
    return where.get(str(f), str(f))


def _table(head: list[str], rows: list[list], num_cols: set[int] = frozenset(), cls: str = "") -> str:
    h = "".join(f"<th>{escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if j in num_cols else ''}>{escape(str(c))}</td>"
                                    for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table{f' class={cls}' if cls else ''}><tr>{h}</tr>{body}</table>"


class _Figures:
    """Draws each figure to a PNG in the report folder (or, with `embed`, into the page as a data:
    URI) and returns its <figure> element."""

    def __init__(self, folder: Path, dpi: int, embed: bool = False):
        self.folder, self.dpi, self.embed, self.written = folder, dpi, embed, []

    def add(self, name: str, fig, alt: str, caption: str = "") -> str:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        try:
            fig.set_dpi(self.dpi)
            fig.savefig(buf, format="png", dpi=self.dpi)
        finally:
            plt.close(fig)
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        else:
            path = self.folder / "figures" / f"{name}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(buf.getvalue())
            self.written.append(path)
            src = f"figures/{escape(name)}.png"
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return f'<figure id="fig-{escape(name)}"><img src="{src}" alt="{escape(alt)}">{cap}</figure>'


def write_report(result, folder: str | os.PathLike, *, dpi: int = 110, save: bool = True,
                 single_file: bool = False) -> list[Path]:
    """Write index.html, figures/*.png and (with `save`) audit.npz + audit.json into `folder`
    (created if missing). With `single_file` the figures are inside index.html (data: URIs) and no
    figures/ folder is written: the page alone is the report. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figs = _Figures(folder, dpi, embed=single_file)
    p, prov = result.params, result.provenance or {}
    model = prov.get("model", "?")
    rel = R.section(result, figs, 5)
    parts = [_predictions(result, figs), _where(result, figs), _faithfulness(result, figs), _units(result, figs),
             rel, _provenance(result, 6 if rel else 5)]
    parts.insert(0, _findings(result))
    title = f"cnnviz audit: {model} on {p.get('num_images')} images"
    nav = " ".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in (
        ("findings", "Findings"), ("predictions", "Predictions"), ("where", "Where the model looks"), ("faithfulness", "Faithfulness"),
        ("units", "Units"), *([(R.ANCHOR, "What it relies on")] if rel else []), ("provenance", "Provenance")))
    skipped = ""
    if len(result.skipped):
        skipped = (f"<p>{len(result.skipped)} file(s) could not be read and were left out: "
                   + escape("; ".join(p.get("skipped_reasons", [])[:10])) + "</p>")
    html = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<p>Data: <code>{escape(str(p.get('data')))}</code> "
            f"({p.get('num_images')} of {p.get('num_files')} files read; labels from {escape(str(p.get('label_source')))})."
            f" Methods: {escape(', '.join(F.method_name(m) for m in result.methods))}.</p>\n{skipped}"
            f"<nav>{nav}</nav>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    index = folder / "index.html"
    index.write_text(html, encoding="utf-8")
    written = [index, *figs.written]
    if save:
        for target, write in result.writers(folder / "audit.npz").items():
            write(Path(target))
            written.append(Path(target))
        if getattr(result, "concepts", None) is not None:  # the TCAV result, redrawn by `cnnviz render`
            for target, write in result.concepts.writers(folder / "concepts.npz").items():
                write(Path(target))
                written.append(Path(target))
    return written


def _section(anchor: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="{anchor}">\n<h2>{escape(title)}</h2>\n<p class="explain">{escape(explain)}</p>\n'
            f"{body}\n</section>")


def _ece_note(p) -> str:
    """What the ECE rests on, when bins hold one or two images (their accuracy is 0, 50 or 100 %)."""
    sb = p.get("ece_sparse_bins")
    if not sb or not sb["bins"]:
        return ""
    return (f"{sb['bins']} of the {sb['of_bins']} occupied confidence bins hold only one or two images "
            f"({sb['images']} of {p.get('num_labelled')} images); their accuracy can only be 0, 50 or 100 %, so "
            "the ECE is mostly chance at this size: read it as a rough figure, not a measurement.")


def _predictions(result, figs) -> str:
    p = result.params
    n = p["num_images"]
    if p["has_labels"]:
        nl = p["num_labelled"]
        right = p.get("top1_right", int(round(p["top1"] * nl)))
        right5 = p.get("top5_right", int(round(p["top5"] * nl)) if p.get("top5") is not None else None)
        acc = (f'<p id="accuracy" class="big">Top-1 accuracy: <span id="top1">{_pct(p["top1"])}</span> '
               f"({right} of {nl} labelled images; 95 % interval <span id=\"top1-interval\">"
               f"{_interval_pct(p.get('top1_interval'))}</span>); top-5: <span id=\"top5\">{_pct(p['top5'])}</span> "
               f"({right5} of {nl}; {_interval_pct(p.get('top5_interval'))}). "
               f"Expected calibration error: <span id=\"ece\">{_num(p['ece'])}</span>.</p>"
               "<p>Intervals: Wilson score intervals of a binomial proportion, 95 %: the range of accuracies "
               f"with which {nl} images agree.</p>")
        note = _ece_note(p)
        if note:
            acc += f'<p class="note" id="ece-note">{escape(note)}</p>'
    else:
        acc = (f'<p id="accuracy" class="big">No labels were given: accuracy cannot be measured '
               f"({n} images predicted).</p>")
    body = [acc, figs.add("reliability", F.reliability_figure(result), "Reliability diagram and confidence histogram",
                          "Left: accuracy per confidence bin against the diagonal of a perfectly calibrated model. "
                          "Right: how many images fall in each bin.")]
    if p["has_labels"]:
        if p["confused"]:
            body.append("<h3>Most confused classes</h3>")
            body.append(_table(["true class", "predicted as", "images"],
                               [[c["true_name"], c["predicted_name"], c["count"]] for c in p["confused"]], {2}))
        else:
            body.append("<p>No image was misclassified.</p>")
        order = _class_order(result)
        ivs = p.get("class_accuracy_interval") or [None] * len(result.class_indices)
        rows = [[F.class_name(result, int(result.class_indices[r])), int(result.class_counts[r]),
                 int(result.class_correct[r]), _pct(result.class_correct[r] / result.class_counts[r]),
                 _interval_pct(ivs[r])]
                for r in order[:MAX_TABLE_ROWS]]
        more = f" (the {MAX_TABLE_ROWS} worst of {len(order)})" if len(order) > MAX_TABLE_ROWS else ""
        one = len(result.class_counts) and int(np.max(result.class_counts)) == 1
        if one:  # a table of 1-of-1 rows says nothing the list of mistakes does not
            wrong = [row for row in rows if row[2] == 0]
            more = ""
            rows = wrong
        body.append(f'<h3 id="perclass">Accuracy per class{more}</h3>')
        if one:
            body.append(f'<p class="note">Every class has one image here: per-class accuracy needs several images '
                        f"per class (one image's Wilson interval spans 0-79 % or 21-100 %). The table lists the "
                        f"{len(rows)} classes whose image was misclassified; the other {len(order) - len(rows)} "
                        "were right.</p>")
        body.append(_table(["class", "images", "right", "top-1 accuracy", "95 % interval (Wilson)"], rows,
                           {1, 2, 3, 4}, "perclass"))
    else:
        counts: dict[int, int] = {}
        for c in result.top5[:, 0].tolist():
            counts[c] = counts.get(c, 0) + 1
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TABLE_ROWS]
        body.append("<h3>Most frequent predictions</h3>")
        body.append(_table(["predicted class", "images"], [[F.class_name(result, c), k] for c, k in top], {1}))
    explain = ("How often the model's first guess (top-1) or one of its five first guesses (top-5) is the label, "
               "which classes it mixes up, and whether its confidence can be trusted: in a calibrated model, of "
               "the images predicted with 80 % confidence about 80 % are right. The expected calibration error "
               "(ECE) is the average gap between confidence and accuracy over 15 confidence bins, weighted by "
               "the images in each; 0 is perfect.")
    return _section("predictions", "1. Predictions", explain, "\n".join(body))


def _class_order(result) -> np.ndarray:
    """Classes worst first: by accuracy, then more images first, then class index."""
    return np.lexsort((result.class_indices, -result.class_counts,
                       result.class_correct / np.maximum(result.class_counts, 1)))


def _where(result, figs) -> str:
    p = result.params
    body = []
    rows = [[F.method_name(m), _pct(p["mean_centre_share"].get(m))] for m in result.methods]
    body.append("<h3>Attribution in the centre</h3>")
    body.append(_table(["method", "share inside the central box (uniform map: 25 %)"], rows, {1}))
    if p.get("boxes"):
        rows = [[F.method_name(m), _pct(p["pointing_game"].get(m)), _pct(p["mean_box_energy"].get(m))]
                for m in result.methods]
        body.append("<h3>Inside the boxes</h3>")
        body.append(_table(["method", "pointing game (maximum inside a box)", "energy inside the boxes"], rows, {1, 2}))
    body.append("<h3>Examples</h3>")
    _, common = display_paths(result.files)
    if common is not None and len(result.shown_index) + len(result.wrong_index):
        body.append(f"<p>File names below are relative to <code>{escape(common)}</code>.</p>")
    for k in range(len(result.shown_index)):
        f = _shown_path(result, str(result.files[int(result.shown_index[k])]))
        body.append(figs.add(f"image_{k:03d}", F.image_figure(result, k), f"maps of {f}", f))
    several = [int(r) for r in np.argsort(-result.class_counts, kind="stable") if result.class_counts[r] >= 2]
    body.append('<h3 id="classmeans">Mean map per class</h3>')
    if several:
        rows_ = several[:MAX_CLASS_ROWS]
        single = int((result.class_counts == 1).sum())
        body.append(figs.add("classes", F.class_figure(result, rows_), "mean maps per class",
                             "Per class with two images or more (the most frequent first): the mean input crop and "
                             "each method's mean map (each image's map scaled to sum 1 before averaging)."
                             + (f" {single} class(es) with a single image are left out: their mean would be "
                                "that image's map." if single else "")))
    elif len(result.class_indices):
        body.append(f"<p>Every class has one image here ({len(result.class_indices)} classes), so a class's mean map "
                    "would only repeat that image's map; the class means are drawn for classes with two images or "
                    "more.</p>")
    if len(result.wrong_index):
        body.append("<h3>Misclassified images: the predicted class against the true class</h3>")
        nw = int(((result.labels >= 0) & (result.labels != result.top5[:, 0])).sum())
        if nw > len(result.wrong_index):
            body.append(f"<p>The first {len(result.wrong_index)} of the {nw} misclassified images "
                        f"(at most {result.params.get('wrong')} are drawn).</p>")
        for k in range(len(result.wrong_index)):
            f = _shown_path(result, str(result.files[int(result.wrong_index[k])]))
            body.append(figs.add(f"wrong_{k:03d}", F.wrong_figure(result, k), f"maps of {f}", f))
    explain = ("Each map marks the pixels the method says the prediction depends on (bright: more). The maps explain "
               "the class the model predicted. The centre share is the part of a map's total inside the box that "
               "spans the middle half of the height and of the width: well above 25 % means the model looks mostly "
               "at the centre, where photographers put the object. The class means show what a class's images have "
               "in common; for misclassified images the maps of the predicted and the true class side by side show "
               "what pulled the model away." + (" With boxes, the pointing game counts the images whose map peaks "
                                                 "inside a box, and the energy is the share of the map inside the "
                                                 "boxes." if p.get("boxes") else ""))
    return _section("where", "2. Where the model looks", explain, "\n".join(body))


def _faithfulness(result, figs) -> str:
    p = result.params
    ci = {w: p.get(f"{w}_auc_interval") or {} for w in ("deletion", "insertion")}
    beats = {w: p.get(f"{w}_beats_random") or {} for w in ("deletion", "insertion")}
    rows = [[F.method_name(m), _auc_ci(ci["deletion"].get(m)) if ci["deletion"] else _num(p["mean_deletion_auc"].get(m)),
             _auc_ci(ci["insertion"].get(m)) if ci["insertion"] else _num(p["mean_insertion_auc"].get(m)),
             _beats(beats["deletion"].get(m)), _beats(beats["insertion"].get(m))]
            for m in result.methods]
    if p.get("baseline_deletion_auc") is not None:
        bd, bi = p.get("baseline_deletion_auc_interval"), p.get("baseline_insertion_auc_interval")
        rows.append(["random map (baseline)", _auc_ci(bd) if bd else _num(p["baseline_deletion_auc"]),
                     _auc_ci(bi) if bi else _num(p["baseline_insertion_auc"]), "", ""])
    body = [_table(["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)",
                    "beats random: deletion", "beats random: insertion"], rows, {1, 2, 3, 4}, "faith"),
            f"<p>Areas: mean over the {p['num_images']} images with its 95 % interval (Student t over the images). "
            "Beats random: the images on which the map's area is better than that image's random map's (lower for "
            "deletion, higher for insertion); a map that is no better than chance beats it on about half.</p>"]
    verdicts = _faith_verdicts(result)
    if verdicts:
        body.append("<ul>" + "".join(f"<li>{escape(v)}</li>" for v in verdicts) + "</ul>")
    body.append(figs.add("curves", F.curves_figure(result), "deletion and insertion curves",
                         f"Mean over {p['num_images']} images, {p['steps']} steps; removed pixels become: {p['fill']}."))
    if len(result.sanity_files):
        names = [_shown_path(result, str(f)) for f in result.sanity_files]
        stops = F.sanity_stops(result)
        body.append('<h3 id="sanity">Sanity check: model randomization</h3>')
        body.append(figs.add("sanity", F.sanity_figure(result), "model randomization sanity check",
                             f"Mean over {len(names)} image(s) (" + ", ".join(names) + "); the band spans the images. "
                             + " ".join(stops)))
        body.append("<p>A method whose map stays the same (correlation near 1) while the weights are destroyed does "
                    "not explain this model.</p>")
    explain = ("Does a map point at what the model really uses? Deletion removes the pixels in the order of the map, "
               "most important first, and follows the probability of the predicted class: if the map is right it "
               "falls fast, and the area under the curve (AUC) is small. Insertion starts from the emptied image and "
               "puts the pixels back in the same order: the probability should rise fast (large AUC). Petsiuk et "
               "al. 2018. The random map (smooth noise, a new one per image) is the baseline: a method whose areas "
               "are no better than the random map's tells nothing about this model. The sanity check of Adebayo et "
               "al. 2018 randomizes the model's layers from the top: a faithful map must change.")
    return _section("faithfulness", "3. Faithfulness of each method on this model", explain, "\n".join(body))


def _faith_verdicts(result) -> list[str]:
    """Per method, one sentence: does it beat the random map on deletion and on insertion (the
    paired difference's 95 % interval excludes 0), with the areas and the count of images."""
    p = result.params
    out = []
    for m in result.methods:
        parts, words = [], []
        for which in ("deletion", "insertion"):
            b = (p.get(f"{which}_beats_random") or {}).get(str(m))
            if not b:
                continue
            d = b["diff"]
            mine = (p.get(f"{which}_auc_interval") or {}).get(str(m)) or {}
            base = p.get(f"baseline_{which}_auc_interval") or {}
            iv = (f", difference {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]".replace("-", "\u2212")
                  if d.get("lo") is not None else "")
            parts.append(f"{which} area {mine.get('mean', float('nan')):.3f} vs {base.get('mean', float('nan')):.3f}, "
                         f"better on {b['wins']} of {b['n']} images{iv}")
            words.append((which, b.get("verdict")))
        if not parts:
            continue
        said = {"better": "beats the random map", "worse": "is worse than the random map",
                "undecided": "is not distinguishable from the random map", None: "cannot be compared (one image)"}
        if len({v for _, v in words}) == 1:
            head = f" {said[words[0][1]]} on {' and '.join(w for w, _ in words)}"
        else:
            head = ": " + "; ".join(f"on {w} it {said[v]}" for w, v in words)
        out.append(f"{F.method_name(m)}{head} ({'; '.join(parts)}).")
    return out


def _units(result, figs) -> str:
    p = result.params
    explain = ("A unit (channel) of a layer is class-selective when images of one class drive it much more than "
               "the others. The class-selectivity index (Morcos et al. 2018) compares the unit's mean activation "
               "on its best class with the mean over the other classes: 0 means no preference, 1 means only one "
               "class. Each row shows one of the most selective units: the parts of its top images that it sees "
               "(its receptive field at its strongest position, or, where the field is larger than the image, the "
               "region where the unit's map is at least half its peak), with each image's class.")
    if not len(result.unit_index):
        body = ("<p>No layer was chosen: add <code>--layer L</code> (see <code>cnnviz layers</code>) for this "
                "section.</p>")
    else:
        si = result.unit_selectivity
        rows = [[int(u), _num(si[int(u)]), ", ".join(F.class_name(result, int(c)) for c in result.unit_top_classes[v]
                                                      if c >= 0)]
                for v, u in enumerate(result.unit_index)]
        note = ""
        single, classes = p.get("unit_single_image_classes"), p.get("unit_classes")
        if single:
            note = (f'<p class="note" id="units-note">{single} of the {classes} classes have one image: their class '
                    "mean is that image's activation, so a unit that answers to one photo looks as selective as one "
                    "that answers to a class. With one image per class the index measures image-selectivity.</p>")
        body = (f"<p>Layer {escape(_layer_label(p.get('layer'), p.get('layer_type')))} "
                f"(<code>{escape(str(p.get('layer')))}</code>): {len(si)} units, median selectivity "
                f"{_num(float(np.nanmedian(si)) if np.isfinite(si).any() else None)}.</p>" + note
                + _table(["unit", "selectivity index", "classes of its top images"], rows, {0, 1})
                + figs.add("units", F.units_figure(result), "top patches of the most selective units",
                           f"Top {result.unit_patches.shape[1]} images per unit, "
                           + ("receptive field at the maximum." if p.get("unit_crop", "rf") == "rf" else
                              "cropped where the unit's upsampled map is at least half its peak"
                              + (" (as --crop activation asks)." if p.get("unit_crop_asked") == "activation" else
                                 " (its receptive field exceeds the image)."))))
    return _section("units", "4. Units", explain, body)


def _provenance(result, number: int = 5) -> str:
    from .provenance import rows as provenance_rows

    rows, prow = provenance_rows(result)
    body = ("<h3>Model, weights, preprocessing, versions, time</h3>" + _table(["", ""], rows)
            + "<h3>Parameters</h3>" + _table(["", ""], prow)
            + "<p>Every number of this page is in <code>audit.npz</code> and <code>audit.json</code>; "
              "<code>cnnviz render audit.npz --out summary.png</code> redraws the summary figure.</p>")
    return _section("provenance", f"{number}. Provenance", "What was run, on what, with which settings, so that the page can "
                    "be reproduced.", body)


def findings(result) -> list[tuple[str, str]]:
    """The sentences a reader should take away, each with the anchor of its section: accuracy with
    its interval, the worst classes, the calibration, whether each method beats the random map, the
    sanity check, the most selective units."""
    p = result.params
    out: list[tuple[str, str]] = []
    if p.get("has_labels"):
        nl = p["num_labelled"]
        right = p.get("top1_right", int(round(p["top1"] * nl)))
        iv = p.get("top1_interval")
        out.append((f"The model gets {right} of {nl} labelled images right: top-1 accuracy {_pct(p['top1'])} "
                    f"(95 % interval {_interval_pct(iv)})" + (f", top-5 {_pct(p['top5'])}" if p.get("top5") is not None
                                                              else "") + ".", "accuracy"))
        order = _class_order(result)
        bad = [int(r) for r in order if result.class_correct[r] < result.class_counts[r]][:5]
        if bad:
            names = ", ".join(f"{F.class_name(result, int(result.class_indices[r]))} "
                              f"({int(result.class_correct[r])} of {int(result.class_counts[r])})" for r in bad)
            wrong_classes = int((result.class_correct < result.class_counts).sum())
            one = int(np.max(result.class_counts)) == 1
            out.append((f"Worst classes: {names}" + (f", of {wrong_classes} with a mistake" if wrong_classes > len(bad)
                                                     else "") + "."
                        + (" With one image per class these are single photos, not class rates." if one else ""),
                        "perclass"))
        if p.get("ece") is not None:
            sb = p.get("ece_sparse_bins")
            rough = bool(sb and sb["bins"])
            out.append((f"Expected calibration error {_num(p['ece'])}" + (
                f"; {sb['bins']} of its {sb['of_bins']} bins hold one or two images, so it is a rough figure."
                if rough else "."), "accuracy"))
    else:
        out.append((f"No labels: {p['num_images']} images predicted, accuracy not measured.", "accuracy"))
    for v in _faith_verdicts(result):
        out.append((v, "faithfulness"))
    if len(result.sanity_files):
        last = result.sanity_spearman[:, :, -1]
        rs = {F.method_name(m): float(np.nanmean(last[:, j])) for j, m in enumerate(result.sanity_methods)
              if np.isfinite(last[:, j]).any()}
        if rs:
            stay = [m for m, r in rs.items() if r >= 0.5]
            nums = ", ".join(f"{m} {r:.2f}" for m, r in rs.items())
            out.append((f"Sanity check: with every layer randomized, the maps' rank correlation with the originals is "
                        f"{nums}" + (f"; {', '.join(stay)} hardly change: they do not depend on the weights."
                                     if stay else ": they change, as maps that explain the model must."), "sanity"))
    if result.unit_index is not None and len(result.unit_index):
        si = result.unit_selectivity
        top = [int(u) for u in result.unit_index[:3]]
        text = (f"Most class-selective units of {p.get('layer')}: " + ", ".join(f"{u} (SI {si[u]:.2f})" for u in top)
                + f"; median over its {len(si)} units {_num(float(np.nanmedian(si)) if np.isfinite(si).any() else None)}.")
        if p.get("unit_single_image_classes"):
            text += (f" {p['unit_single_image_classes']} of {p.get('unit_classes')} classes have one image: "
                     "a high index may be one photo's.")
        out.append((text, "units"))
    return R.shortcut_findings(result) + out + R.findings(result)


def _findings(result) -> str:
    items = "".join(f'<li>{escape(text)} <a href="#{a}">&rarr; {escape(SECTION_NAMES[a])}</a></li>'
                    for text, a in findings(result))
    return (f'<section id="findings">\n<h2>Findings</h2>\n<ul class="findings">{items}</ul>\n</section>')


SECTION_NAMES = {"accuracy": "predictions", "perclass": "per class", "faithfulness": "faithfulness",
                 "sanity": "sanity check", "units": "units", "slices": "failure slices",
                 "concepts": "concepts", "strategies": "strategies"}
