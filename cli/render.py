"""`cnnviz render`: redraw a saved result's figure (or an audit's whole HTML report) without the model.
Wire with `register(cli)`."""

from __future__ import annotations

import os

import click

from cnnviz_cli.output import figure_options


def register(cli) -> None:
    @cli.command()
    @click.argument("result", type=click.Path())
    @click.option("--out", "-o", required=True, type=click.Path(), metavar="FIG",
                  help="Figure file: .png, .pdf or .svg; for an audit's result also a folder (no extension): its HTML "
                       "report.")
    @click.option("--full-image", is_flag=True,
                  help="Occlusion and backprop results: draw on the whole original photo (crop dashed, rest hatched).")
    @figure_options
    def render(result, out, full_image):
        """Redraw a figure from a saved result (RESULT.npz + its .json sidecar) without recomputing,
        e.g. at another --width for a one-column figure. An audit's result (report/audit.npz) with
        --out DIR/ (no extension) writes the whole HTML report again into DIR."""
        from cnnviz.errors import CnnvizError, ResultError
        from cnnviz.files import FIGURE_SUFFIXES, check_output
        from cnnviz.results import load_result

        if not os.path.splitext(out.rstrip("/" + os.sep))[1] or out.endswith(("/", os.sep)):
            from cnnviz_cli.audit import render_folder

            return render_folder(result, out)
        check_output(out, FIGURE_SUFFIXES)
        loaded = load_result(result)
        try:
            from cnnviz_cli import output

            fig = loaded.render(out, **output.style(), **({"full_image": True} if full_image else {}))
        except CnnvizError:
            raise
        except Exception as e:  # the schema passed but the values still do not fit together (an edited file)
            raise ResultError(f"cannot draw {result!r}: its contents do not fit together ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); save the result again with --save") from None
        click.echo(f"wrote {out}")
        import matplotlib.pyplot as plt

        plt.close(fig)
