"""`cnnviz topk`: the top-k activating images of each unit of a layer over a folder or CSV list.
Registered on the main group by `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import use


def register(cli) -> None:
    from cnnviz_cli.main import model_options
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.output import figure_options, style

    @cli.command(short_help="The k images that activate each unit of a layer most.")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--layer", "-l", required=True, metavar="NAME", help="Layer to scan. See `cnnviz layers`.")
    @click.option("--units", "-u", default=None, metavar="A:B|I,J,...",
                  help="Channels to scan, e.g. 0:64 or 3,7,9 [default: all].")
    @click.option("-k", "k", default=9, show_default=True, type=int, help="Images kept per unit.")
    @use("batch_size", batch_size={"help": "Images per forward pass [default: chosen by measuring the first batches; "
                                           "32 with --save, --workers or torchrun, whose progress files and shares "
                                           "count batches of one size]."})
    @click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
                  help="DataLoader worker processes decoding images.")
    @use("device")
    @click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz",
                  help="Save the result (npz + JSON sidecar); progress goes to RESULT.npz.partial meanwhile.")
    @click.option("--resume/--no-resume", default=True, show_default=True,
                  help="Continue from RESULT.npz.partial when a previous run with the same arguments was stopped.")
    @click.option("--checkpoint-every", default=10, show_default=True, type=click.IntRange(min=1),
                  help="Write progress every this many batches.")
    @click.option("--figure", "figure_path", default=None, type=click.Path(), metavar="FIG.png|pdf|svg",
                  help="Draw Zeiler & Fergus Fig. 2: per unit, projections of its top activations beside the image "
                       "patches at its receptive field (or where its map is high: --crop).")
    @click.option("--project/--no-project", default=True, show_default=True,
                  help="With --figure: include the projections (--no-project: patches only).")
    @click.option("--projection", type=click.Choice(["auto", "deconv", "guided"]), default="auto", show_default=True,
                  help="With --figure: the projection. auto: the deconvnet, or guided backprop where cnnviz's check "
                       "finds that the deconvnet's projections do not depend on the image (a model without max "
                       "pooling, e.g. EfficientNet-Lite); the caption says which.")
    @click.option("--crop", type=click.Choice(["auto", "rf", "activation"]), default="auto", show_default=True,
                  help="With --figure: the patch. rf: the theoretical receptive field; activation: where the unit's "
                       "upsampled map is >= half its peak; auto: rf where it fits in the image, else activation.")
    @click.option("--figure-columns", default=None, type=click.IntRange(min=1), metavar="N",
                  help="With --figure: units per row [default: 4, or 6 without projections].")
    @use("quiet")
    @figure_options
    def topk(data, model_spec, layer, units, k, batch_size, workers, device, save, resume, checkpoint_every,
             figure_path, project, projection, crop, figure_columns, quiet):
        """Stream the images in DATA (a folder, a folder of class folders, or a CSV with a `file`
        column) through the network and keep, for each unit of --layer, the k images with the
        largest activation (maximum over positions), with the position. Unreadable images are
        skipped and listed. Runs under torchrun too (each process scans a shard; results merge).

        \b
        Example:
          cnnviz topk images/ --layer _blocks.6 --units 0:64 -k 9 --save topk.npz
        """
        import os

        from cnnviz.engines.units.topk import check_units, list_files, remove_stale_temporaries, scan
        from cnnviz.errors import ParameterError
        from cnnviz.files import check_output, check_outputs, sidecar_of

        if k <= 0:
            raise ParameterError(f"-k must be a positive whole number, got {k}")
        if batch_size is not None and batch_size <= 0:
            raise ParameterError(f"--batch-size must be a positive whole number, got {batch_size}")
        if units is not None:
            check_units(units)  # syntax errors before the model loads
        # every file this run may write is checked before any work: the figure, the result and its
        # sidecar, the progress file beside them
        check_outputs(figure_path, save)
        checkpoint = None
        outputs = [Path(figure_path)] if figure_path else []
        if save:
            checkpoint = Path(f"{save}.partial")
            check_output(checkpoint, (".partial",))
            from cnnviz_cli.output import keeps_progress

            keeps_progress(checkpoint)
            outputs += [Path(save), sidecar_of(save)]
        list_files(data)  # an empty folder fails before the model loads
        rank0 = int(os.environ.get("RANK", "0")) == 0
        if rank0:
            for path in outputs:  # what a kill -9 in a previous run's write left behind
                remove_stale_temporaries(path)
        lm = _main._load(model_spec)

        def write(result):  # on rank 0, before the progress file goes: see scan()
            import matplotlib.pyplot as plt

            from cnnviz.results import save_outputs

            from cnnviz.layers import readable_name

            p = result.params
            resumed = f", resumed at batch {p['resumed_from_batch']}" if p["resumed_from_batch"] else ""
            click.echo(f"{p['num_scanned']} of {p['num_files']} images scanned at {readable_name(p['layer'], p.get('layer_type'))} ({p['num_units']} "
                       f"units, k={p['k']}) in {p['seconds']:.1f} s on {result.provenance['device']}"
                       f"{' by ' + str(p['world_size']) + ' processes' if p['world_size'] > 1 else ''}{resumed}")
            from cnnviz.batching import summary as batch_summary

            fixed_for = p.get("batch_fixed_for")
            click.echo(batch_summary(p) + (f" (fixed for {fixed_for})" if fixed_for else ""))
            for r in range(min(3, len(result.units))):
                best = result.top(int(result.units[r]))[:3]
                click.echo(f"unit {int(result.units[r])}: "
                           + ", ".join(f"{f} ({v:.3g} at {y},{x})" for f, v, (y, x) in best))
            if len(result.skipped):
                click.echo(f"skipped {len(result.skipped)} unreadable file(s):")
                for why in p["skipped_reasons"]:
                    click.echo(f"  {why}")
            fig = None
            if figure_path:
                from cnnviz.engines.units.patches import unit_patches

                patches = unit_patches(lm, result, project=project, device=device, projection=projection, crop=crop)
                fig = patches.render(None, columns=figure_columns, **style())
            try:  # the figure and the result land together, or neither does
                save_outputs(result if save else None, save, fig, figure_path)
            finally:
                if fig is not None:
                    plt.close(fig)
            if save:
                click.echo(f"wrote {save} (+ {sidecar_of(save).name})")
            if figure_path:
                pp = patches.params
                what = f"{pp['projection']} projections and patches" if project else "patches"
                crop_text = (f"RF {pp['rf'][0]} px" if pp["crop"] == "rf" else
                             f"cropped at the unit's activation, RF {pp['rf'][0]} px exceeds the image")
                click.echo(f"wrote {figure_path} ({len(patches.units)} units, {what}, {crop_text})")
                if pp.get("projection_note"):
                    click.echo(f"note: {pp['projection_note']}")

        scan(lm, data, layer, units=units, k=k, batch_size=batch_size, num_workers=workers, device=device,
             checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=False if quiet else None,
             resume=resume, finish=write)
