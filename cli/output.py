"""The tail every command shares: check the outputs before any work, then write the figure and the
saved result together (both land, or neither does) and say what was written."""

from __future__ import annotations

from pathlib import Path

import click


def check(out, save=None, figure_suffixes=None):
    """Check the figure path and the result path (npz and sidecar) before the model is loaded."""
    from cnnviz.files import FIGURE_SUFFIXES, check_outputs

    return check_outputs(out, save, figure_suffixes or FIGURE_SUFFIXES)


def write(result, out, save=None, echo: bool = True, **render_options):
    """Draw `result`, write the figure `out` and (when given) the result `save` as one. Returns
    nothing: the figure is closed."""
    import matplotlib.pyplot as plt

    from cnnviz.results import save_outputs

    fig = result.render(None, **render_options)
    try:
        save_outputs(result if save else None, save, fig, out)
    finally:
        plt.close(fig)
    if echo:
        click.echo(wrote(out, save))


def wrote(out, save=None) -> str:
    return f"wrote {out}" + (f" and {save} (+ {Path(save).with_suffix('.json').name})" if save else "")
