"""`cnnviz audit`: a static HTML report of a model on a data set. Registered by `register(cli)`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from cnnviz_cli.options import use


def progress_path(out: Path) -> Path:
    """Where a running audit keeps its progress: beside the report folder, not in it."""
    return out.with_name(f".{out.name}.audit-progress.npz")


def lock_path(out: Path) -> Path:
    """The lock file a running audit holds beside its report folder (one per rank under torchrun)."""
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    return out.with_name(f".{out.name}.audit-lock" + (f".rank{rank}" if rank is not None else ""))


def rank_progress_files(progress: Path) -> list[Path]:
    """The per-rank progress files of a torchrun audit (`PROGRESS.rankR`), found by exact names."""
    parent = progress.parent
    if not parent.is_dir():
        return []
    head = f"{progress.name}.rank"
    return [p for p in parent.iterdir() if p.name.startswith(head) and p.name[len(head):].isdigit()]


def busy_message(out: Path) -> str:
    return (f"another audit is writing into {str(out)!r} (it holds {lock_path(out).name}); wait for it to finish or "
            "choose another --out")


def check_out(out: Path, resume: bool, force: bool, inputs=()) -> Path:
    """Refuse, before any work, a report folder that cannot be written, would be overwritten without
    --force, would replace an input (or the current directory), or is resumed without progress.
    Returns the progress file's path."""
    from cnnviz.errors import OutputError
    from cnnviz.files import check_folder_writable, check_output_folder, lock_held

    if resume and force:
        raise OutputError("--resume and --force contradict each other: --resume continues a stopped audit, --force "
                          "starts over; drop one")
    check_output_folder(out, inputs)
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise OutputError(f"{str(out)!r} is a file; --out names a folder for the report")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable; choose another --out")
    check_folder_writable(parent)
    if lock_held(lock_path(out)):
        raise OutputError(busy_message(out))
    progress = progress_path(out)
    ranks = rank_progress_files(progress)
    has_progress = progress.exists() or bool(ranks)
    if out.is_dir() and any(out.iterdir()) and not force and not (resume and has_progress):
        why = (f"--resume found no progress of a stopped audit into it ({progress.name} is absent), so there is "
               "nothing to resume; " if resume else "")
        raise OutputError(f"{str(out)!r} exists and is not empty; {why}add --force to replace it"
                          + ("" if resume else " (or --resume to continue a stopped audit into it)"))
    if has_progress and not (resume or force):
        progress = progress if progress.exists() else ranks[0]
        raise OutputError(f"a stopped audit left its progress in {str(progress)!r}; add --resume to continue it or "
                          "--force to start over")
    return progress_path(out)


def remove_leftovers(out: Path, progress: Path) -> None:
    """What a run killed with -9 left beside the report: half-built report folders and replaced
    reports not yet deleted (recognised by cnnviz's marker inside, never by a pattern of names), and
    the temporary of a progress file being written (atomic renames never leave a half file in place)."""
    from cnnviz.engines.units.topk import remove_stale_temporaries
    from cnnviz.files import remove_own_temporaries

    remove_stale_temporaries(progress)
    remove_own_temporaries(out, ("partial", "old"))


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished report `tmp` in the place of `out` (renames only)."""
    from cnnviz.files import mark_temporary, unmark

    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rmdir(old)
        mark_temporary(out, old.name)  # a kill before the rmtree below leaves it for the next run to remove
        try:
            os.replace(out, old)
        except BaseException:
            unmark(out)
            raise
    unmark(tmp)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_folder(result, out: Path, single_file: bool = False) -> list[Path]:
    """Write the report of `result` into a temporary folder beside `out` and rename it into place:
    a failed or killed write leaves `out` as it was."""
    from cnnviz.files import make_temp_folder

    out = Path(os.path.abspath(out))
    tmp = make_temp_folder(out, "partial")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes a private folder; a report gets the usual mode
        written = result.write_html(tmp, single_file=single_file)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / p.relative_to(tmp) for p in written]


def render_folder(source: str, out: str) -> None:
    """`cnnviz render RESULT --out DIR/`: the HTML report of a saved audit, redrawn from its numbers
    into the folder DIR (which must be new or empty)."""
    from cnnviz.errors import OutputError, ResultError
    from cnnviz.files import exclusive_lock, sidecar_of
    from cnnviz.results import load_result

    out_p = Path(out)
    if out_p.is_dir() and any(out_p.iterdir()):
        raise OutputError(f"{str(out)!r} exists and is not empty; give a new or empty folder for the report")
    check_out(out_p, resume=False, force=True, inputs=(source, sidecar_of(source)))  # writable, spares the inputs
    out_p = Path(os.path.abspath(out))
    loaded = load_result(source)
    if not callable(getattr(loaded, "write_html", None)):
        raise OutputError(f"{str(out)!r} has no extension: a folder is written only for an audit's result (its HTML "
                          f"report); {type(loaded).__name__} draws a figure: give --out a .png, .pdf or .svg file")
    loaded.check_report()
    with exclusive_lock(lock_path(out_p), f"another cnnviz run is writing {str(out)!r}; wait for it to finish"):
        remove_leftovers(out_p, progress_path(out_p))
        try:
            written = write_folder(loaded, out_p)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            # the schema above covers what the report reads; an edit it cannot foresee still gets one line
            raise ResultError(f"{source!r} does not hold a consistent audit ({type(e).__name__}: {e}); save it "
                              "again with cnnviz audit") from None
    click.echo(f"wrote {Path(out) / 'index.html'} ({len(written) - 3} figures, audit.npz, audit.json)")


def register(cli) -> None:
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.main import model_options

    @cli.command(short_help="A static HTML report: accuracy, calibration, maps, faithfulness.")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--out", "-o", required=True, type=click.Path(file_okay=False), metavar="DIR",
                  help="Report folder: index.html, figures/, audit.npz and audit.json.")
    @click.option("--methods", default="gradcam,saliency", show_default=True,
                  help="Comma-separated attribution methods: gradcam, saliency, occlusion (window 32, stride 16: "
                       "the dearest), guided, deconv, guided_gradcam, gradcampp, layercam, scorecam, rise.")
    @click.option("--limit", default=None, type=click.IntRange(min=1), metavar="N", help="Audit the first N files only.")
    @click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1, max=1024),
                  help="Deletion/insertion steps (the curve has steps + 1 points).")
    @use("fill", fill={"default": "blur", "callback": None,
                       "help": "What deleted pixels become: blur (the image blurred, sigma 10 px), mean, black, "
                               "white, a gray level or R,G,B in [0,1]."})
    @click.option("--boxes", default=None, type=click.Path(dir_okay=False), metavar="BOXES.json",
                  help="Object boxes per file, {file: [[x0, y0, x1, y1], ...]} in photo pixels: pointing game and "
                       "energy inside the boxes.")
    @click.option("--show", default=8, show_default=True, type=click.IntRange(min=0),
                  help="Images drawn with their maps.")
    @click.option("--sanity-images", default=2, show_default=True, type=click.IntRange(min=0),
                  help="Images of the model-randomization sanity check (0: none).")
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Layer of the units section (its most class-selective units and their top patches); see "
                       "`cnnviz layers` [default: no units section].")
    @click.option("--num-units", "num_units", default=6, show_default=True, type=click.IntRange(min=1),
                  help="With --layer: how many of the most selective units are shown.")
    @click.option("-k", "k", default=4, show_default=True, type=click.IntRange(min=1),
                  help="With --layer: top images per unit.")
    @click.option("--crop", type=click.Choice(["auto", "rf", "activation"]), default="auto", show_default=True,
                  help="With --layer: how the unit patches are cut: rf (the receptive field at the maximum), "
                       "activation (where the unit's map is at least half its peak), auto (rf where the field fits "
                       "in the input, else activation).")
    @click.option("--single-file", "single_file", is_flag=True,
                  help="Write index.html with its figures inside (data: URIs): one file to mail or attach; "
                       "audit.npz and audit.json are still written beside it.")
    @click.option("--concept", "concept_specs", multiple=True, metavar="NAME=FOLDER",
                  help="Test a concept (a folder of at least 5 example images) with TCAV for the data's most "
                       "frequent classes (repeat for more concepts); see `cnnviz tcav`.")
    @click.option("--concept-classes", "concept_classes", default=None, metavar="C1,C2",
                  help="The classes the concepts are tested for [default: the most frequent, at most 8].")
    @click.option("--resume", is_flag=True, help="Continue a stopped audit from its progress file.")
    @click.option("--force", is_flag=True, help="Replace an existing report folder (and any progress).")
    @use("device", "quiet")
    def audit(data, model_spec, out, methods, limit, steps, fill, boxes, show, sanity_images, layer, num_units, k,
              crop, single_file, concept_specs, concept_classes, resume, force, device, quiet):
        """Audit a model on DATA (a folder of images, a folder of class folders, or a CSV with a `file`
        column and optionally a `label` column) and write a static report to --out: accuracy and
        calibration, where the model looks, how faithful each map is, and provenance. The page opens
        from disk with no network.

        \b
        Example:
          cnnviz audit photos/ --out report/ --methods gradcam,saliency --limit 50
        """
        from cnnviz.engines.audit import audit as run_audit, check_methods
        from cnnviz.engines.audit.engine import read_boxes
        from cnnviz.engines.audit.data import read_dataset
        from cnnviz.engines.common import resolve_device
        from cnnviz.errors import ParameterError
        from cnnviz.files import exclusive_lock
        from cnnviz.engines.units.topk import is_progress_file
        from cnnviz.models import Preprocessing

        methods_t = check_methods(methods)
        concepts = None
        if concept_specs:
            from cnnviz.engines.concepts.tcav_core import check_concepts
            from cnnviz_cli.concepts.tcav import parse_concepts

            concepts = parse_concepts(concept_specs)
            check_concepts(concepts)  # a missing or too small folder: one line before the model loads
        elif concept_classes:
            raise ParameterError("--concept-classes chooses the classes of the concept tests, which need --concept "
                                 "NAME=FOLDER; add one or drop it")
        unused = [{"num_units": "--num-units", "k": "-k", "crop": "--crop"}[n]
                  for n in _main._given("num_units", "k", "crop")]
        if layer is None and unused:
            raise ParameterError(f"{' and '.join(unused)} choose the units of the units section, which needs --layer; "
                                 "add --layer L (see `cnnviz layers`) or drop them")
        if fill.strip().lower() != "blur":
            try:
                Preprocessing().fill_value(fill)
            except ParameterError as e:
                raise ParameterError(f"--fill: {e}") from None
        out_p = Path(out)
        inputs = [data, boxes, model_spec.get("weights_file"), model_spec.get("labels"), *(concepts or {}).values()]
        spec_file = str(model_spec.get("name") or "").partition(":")[0]
        if spec_file.endswith(".py"):
            inputs.append(spec_file)  # --model ./net.py:build
        progress = check_out(out_p, resume, force, inputs)
        from cnnviz_cli.output import keeps_progress

        keeps_progress(progress, *([Path(f"{progress}.rank{os.environ['RANK']}")] if os.environ.get("RANK") else []))
        resolve_device(device)
        dataset = read_dataset(data, None, limit)  # empty folders, missing CSV files: before the model loads
        check_out(out_p, resume, force, [Path(dataset.root) / f for f in dataset.files])
        if boxes is not None and not Path(boxes).is_file():
            raise ParameterError(f"boxes file not found: {boxes!r}")
        if boxes is not None:
            read_boxes(boxes, dataset.files)  # bad boxes: one line before the model loads
        out_abs = Path(os.path.abspath(out))
        with exclusive_lock(lock_path(out_abs), busy_message(out_abs)):
            remove_leftovers(out_p, progress)
            if force and progress.exists() and is_progress_file(progress):
                progress.unlink()
            lm = _main._load(model_spec)
            written: list = []

            def write(result):
                written.extend(write_folder(result, out_p, single_file=single_file))

            result = run_audit(lm, data, methods_t, limit=limit, steps=steps, fill=fill, show=show, boxes=boxes,
                               sanity_images=sanity_images, layer=layer, units=num_units, k=k, crop=crop,
                               device=device,
                               progress=False if quiet else None, checkpoint=progress, resume=resume, finish=write,
                               concepts=concepts, concept_classes=concept_classes)
        if not written:  # under torchrun: rank 0 wrote the report and says so
            return
        p = result.params
        acc = (f"top-1 {p['top1']:.1%}, top-5 {p['top5']:.1%}, ECE {p['ece']:.3f}" if p["has_labels"]
               else "no labels")
        click.echo(f"{p['num_images']} of {p['num_files']} images audited ({acc}); "
                   + ", ".join(f"{m}: deletion AUC {p['mean_deletion_auc'][m]:.3f}, insertion AUC "
                               f"{p['mean_insertion_auc'][m]:.3f}" for m in p["methods"])
                   + f"; random map: {p['baseline_deletion_auc']:.3f}, {p['baseline_insertion_auc']:.3f}")
        if p.get("boxes_unmatched"):
            um = p["boxes_unmatched"]
            click.echo(f"note: {len(um)} --boxes entr{'y names a file' if len(um) == 1 else 'ies name files'} not in "
                       f"the data, ignored (first: {um[0]!r})")
        if len(result.skipped):
            click.echo(f"skipped {len(result.skipped)} unreadable file(s):")
            for why in p["skipped_reasons"]:
                click.echo(f"  {why}")
        figures = "figures inside" if single_file else f"{sum(Path(w).suffix == '.png' for w in written)} figures"
        saved = ", ".join(Path(w).name for w in written if Path(w).suffix in (".npz", ".json"))
        click.echo(f"wrote {out_p / 'index.html'} ({figures}, {saved})")
