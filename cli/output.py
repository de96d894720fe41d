"""The tail every command shares: check the outputs before any work, then write the figure and the
saved result together (both land, or neither does) and say what was written."""

from __future__ import annotations

import functools
from pathlib import Path

import click

STYLE_KEY = "cnnviz.figure_style"


def _width(ctx, param, value):
    if value is None:
        return None
    from cnnviz.errors import ParameterError
    from cnnviz.render.style import check_width

    try:
        return check_width(value)
    except ParameterError as e:
        raise click.BadParameter(str(e)) from None


def _max_height(ctx, param, value):
    if value is None or str(value).strip().lower() == "page":
        return "page"
    if str(value).strip().lower() == "none":
        return None
    from cnnviz.errors import ParameterError
    from cnnviz.render.style import check_max_height

    try:
        return check_max_height(value)
    except ParameterError as e:
        raise click.BadParameter(str(e).replace("max_height", "--max-height").replace("None", "none")) from None


def figure_options(f):
    """--width, --layout and --max-height, for every command that draws a figure. They are render-time choices
    (a saved result redraws at another width with `cnnviz render --width`): the command does not
    see them; `write` and `style()` hand them to the renderer."""
    @click.option("--width", default="7", show_default=True, metavar="INCHES", callback=_width,
                  help="Figure width in inches, the width it is printed at (7: a page's text width, 3.5: one "
                       "column); panels and text are laid out for it, text at least 7 pt.")
    @click.option("--layout", default="row", show_default=True, type=click.Choice(["row", "grid"]),
                  help="row: panels side by side, wrapped to more rows where the width runs out; grid: about "
                       "as many rows as columns.")
    @click.option("--max-height", default="page", show_default=True, metavar="INCHES|page|none",
                  callback=_max_height,
                  help="The tallest the figure may be: page (a text block: 9 in at 7 in wide, 8 in in a 3.5 in "
                       "column), a number of inches, or none; pictures shrink or take more columns to fit.")
    @functools.wraps(f)
    def wrapper(*args, width, layout, max_height, **kw):
        click.get_current_context().meta[STYLE_KEY] = {"width": width, "layout": layout}
        if max_height == "page":
            return f(*args, **kw)
        from cnnviz.render.style import height_limit

        with height_limit(max_height):  # every figure the command draws
            return f(*args, **kw)

    return wrapper


def style() -> dict:
    """The --width and --layout of the running command ({} outside one, or where not offered)."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(STYLE_KEY, {})) if ctx is not None else {}


def check(out, save=None, figure_suffixes=None):
    """Check the figure path and the result path (npz and sidecar) before the model is loaded."""
    from cnnviz.files import FIGURE_SUFFIXES, check_outputs

    return check_outputs(out, save, figure_suffixes or FIGURE_SUFFIXES)


def write(result, out, save=None, echo: bool = True, **render_options):
    """Draw `result`, write the figure `out` and (when given) the result `save` as one. Returns
    nothing: the figure is closed."""
    import matplotlib.pyplot as plt

    from cnnviz.results import save_outputs

    fig = result.render(None, **{**style(), **render_options})
    try:
        save_outputs(result if save else None, save, fig, out)
    finally:
        plt.close(fig)
    if echo:
        click.echo(wrote(out, save))


def wrote(out, save=None) -> str:
    return f"wrote {out}" + (f" and {save} (+ {Path(save).with_suffix('.json').name})" if save else "")


PROGRESS_KEY = "cnnviz.progress_files"


def keeps_progress(*paths) -> None:
    """Name the progress files this command writes (resumable commands), so that a Ctrl-C says what
    was kept and how to continue (`interrupted_notes`)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta.setdefault(PROGRESS_KEY, []).extend(Path(p) for p in paths if p is not None)


def _kept(path: Path) -> str:
    """What a progress file holds, as far as it says: images (an audit) or batches (a scan) done."""
    try:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            if "top5" in z.files:
                rows = z["top5"]
                return f"{int((rows[:, 0] >= 0).sum())} of {len(rows)} images kept"
            if "batches_done" in z.files:
                return f"{int(z['batches_done'])} batches kept"
    except Exception:  # noqa: BLE001 - a note, never an error of its own
        pass
    return f"{path.stat().st_size / 1e6:.1f} MB kept"


def interrupted_notes(ctx) -> list[str]:
    """For each progress file the interrupted command left: where it is, what it holds, and how to
    continue; nothing when no progress was written yet."""
    notes = []
    for path in dict.fromkeys(ctx.meta.get(PROGRESS_KEY, [])):
        if path.is_file():
            notes.append(f"Progress kept in {path} ({_kept(path)}): run the same command with --resume to continue, "
                         "or delete the file to start over.")
    return notes
