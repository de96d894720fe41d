"""The audit report: one static HTML page (no script, no stylesheet or font from the network: it
opens from disk, offline) with its figures as PNG files beside it, and the result itself
(`audit.npz` + `audit.json`) so that `cnnviz render` can redraw it. Every text that comes from the
data (file and class names, parameters) is escaped."""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

import numpy as np

from . import audit as F
from .style import layer_label as _layer_label

MAX_CLASS_ROWS = 8  # classes drawn with their mean maps
MAX_TABLE_ROWS = 30  # rows of the per-class accuracy table

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
p.explain{background:#f4f6f8;border-left:4px solid #7a9cc6;padding:.5em .8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.5em 0}figure{margin:1em 0}
figcaption{font-size:.9em;color:#555}.big{font-size:1.3em;font-weight:bold}code{font-size:.9em}
nav a{margin-right:1em}
"""


def _pct(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list], num_cols: set[int] = frozenset(), cls: str = "") -> str:
    h = "".join(f"<th>{escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if j in num_cols else ''}>{escape(str(c))}</td>"
                                    for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table{f' class={cls}' if cls else ''}><tr>{h}</tr>{body}</table>"


class _Figures:
    """Draws each figure to a PNG in the report folder and returns its <figure> element."""

    def __init__(self, folder: Path, dpi: int):
        self.folder, self.dpi, self.written = folder, dpi, []

    def add(self, name: str, fig, alt: str, caption: str = "") -> str:
        import matplotlib.pyplot as plt

        path = self.folder / "figures" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        try:
            fig.set_dpi(self.dpi)
            fig.savefig(path, format="png", dpi=self.dpi)
        finally:
            plt.close(fig)
        self.written.append(path)
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="figures/{escape(name)}.png" alt="{escape(alt)}">{cap}</figure>'


def write_report(result, folder: str | os.PathLike, *, dpi: int = 110, save: bool = True) -> list[Path]:
    """Write index.html, figures/*.png and (with `save`) audit.npz + audit.json into `folder`
    (created if missing). Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figs = _Figures(folder, dpi)
    p, prov = result.params, result.provenance or {}
    model = prov.get("model", "?")
    parts = [_predictions(result, figs), _where(result, figs), _faithfulness(result, figs), _units(result, figs),
             _provenance(result)]
    title = f"cnnviz audit: {model} on {p.get('num_images')} images"
    nav = " ".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in (
        ("predictions", "Predictions"), ("where", "Where the model looks"), ("faithfulness", "Faithfulness"),
        ("units", "Units"), ("provenance", "Provenance")))
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
    return written


def _section(anchor: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="{anchor}">\n<h2>{escape(title)}</h2>\n<p class="explain">{escape(explain)}</p>\n'
            f"{body}\n</section>")


def _predictions(result, figs) -> str:
    p = result.params
    n = p["num_images"]
    if p["has_labels"]:
        nl = p["num_labelled"]
        right = int(round(p["top1"] * nl))
        acc = (f'<p id="accuracy" class="big">Top-1 accuracy: <span id="top1">{_pct(p["top1"])}</span> '
               f"({right} of {nl} labelled images); top-5: <span id=\"top5\">{_pct(p['top5'])}</span>. "
               f"Expected calibration error: {_num(p['ece'])}.</p>")
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
        order = np.lexsort((result.class_indices, -result.class_counts,
                            result.class_correct / np.maximum(result.class_counts, 1)))
        rows = [[F.class_name(result, int(result.class_indices[r])), int(result.class_counts[r]),
                 int(result.class_correct[r]), _pct(result.class_correct[r] / result.class_counts[r])]
                for r in order[:MAX_TABLE_ROWS]]
        more = f" (the {MAX_TABLE_ROWS} worst of {len(order)})" if len(order) > MAX_TABLE_ROWS else ""
        body.append(f"<h3>Accuracy per class{more}</h3>")
        body.append(_table(["class", "images", "right", "top-1 accuracy"], rows, {1, 2, 3}, "perclass"))
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
    for k in range(len(result.shown_index)):
        f = str(result.files[int(result.shown_index[k])])
        body.append(figs.add(f"image_{k:03d}", F.image_figure(result, k), f"maps of {f}", f))
    if len(result.class_indices):
        rows_ = list(np.argsort(-result.class_counts, kind="stable")[:MAX_CLASS_ROWS])
        body.append("<h3>Mean map per class</h3>")
        body.append(figs.add("classes", F.class_figure(result, rows_), "mean maps per class",
                             "Per class (the most frequent first): the mean input crop and each method's mean map "
                             "(each image's map scaled to sum 1 before averaging)."))
    if len(result.wrong_index):
        body.append("<h3>Misclassified images: the predicted class against the true class</h3>")
        for k in range(len(result.wrong_index)):
            f = str(result.files[int(result.wrong_index[k])])
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
    rows = [[F.method_name(m), _num(p["mean_deletion_auc"].get(m)), _num(p["mean_insertion_auc"].get(m))]
            for m in result.methods]
    if p.get("baseline_deletion_auc") is not None:
        rows.append(["random map (baseline)", _num(p["baseline_deletion_auc"]), _num(p["baseline_insertion_auc"])])
    body = [_table(["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)"], rows, {1, 2},
                   "faith"),
            figs.add("curves", F.curves_figure(result), "deletion and insertion curves",
                     f"Mean over {p['num_images']} images, {p['steps']} steps; removed pixels become: {p['fill']}.")]
    if len(result.sanity_files):
        body.append("<h3>Sanity check: model randomization</h3>")
        body.append(figs.add("sanity", F.sanity_figure(result), "model randomization sanity check",
                             "Images: " + ", ".join(str(f) for f in result.sanity_files)))
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
        body = (f"<p>Layer {escape(_layer_label(p.get('layer'), p.get('layer_type')))} "
                f"(<code>{escape(str(p.get('layer')))}</code>): {len(si)} units, median selectivity "
                f"{_num(float(np.nanmedian(si)) if np.isfinite(si).any() else None)}.</p>"
                + _table(["unit", "selectivity index", "classes of its top images"], rows, {0, 1})
                + figs.add("units", F.units_figure(result), "top patches of the most selective units",
                           f"Top {result.unit_patches.shape[1]} images per unit, "
                           + ("receptive field at the maximum." if p.get("unit_crop", "rf") == "rf" else
                              "cropped where the unit's upsampled map is at least half its peak (its receptive "
                              "field exceeds the image).")))
    return _section("units", "4. Units", explain, body)


def _provenance(result) -> str:
    prov = dict(result.provenance or {})
    p = {k: v for k, v in result.params.items() if k not in ("class_names", "confused", "skipped_reasons")}
    rows = [[k, json.dumps(v, default=str) if not isinstance(v, str) else v] for k, v in sorted(prov.items())]
    prow = [[k, json.dumps(v, default=str) if not isinstance(v, str) else v] for k, v in sorted(p.items())]
    body = ("<h3>Model, weights, preprocessing, versions, time</h3>" + _table(["", ""], rows)
            + "<h3>Parameters</h3>" + _table(["", ""], prow)
            + "<p>Every number of this page is in <code>audit.npz</code> and <code>audit.json</code>; "
              "<code>cnnviz render audit.npz --out summary.png</code> redraws the summary figure.</p>")
    return _section("provenance", "5. Provenance", "What was run, on what, with which settings, so that the page can "
                    "be reproduced.", body)
