"""`cnnviz rf`: theoretical receptive field of every layer (architecture only, no weights)."""

from __future__ import annotations

import click

from cnnviz_cli.options import use


def register(cli):
    from .main import _architecture_only, _given, _parse_pair, _reject, model_options
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.output import figure_options, style

    @cli.command(short_help="Receptive field size, stride and padding of every layer (no weights needed).")
    @model_options
    @click.option("--input-size", default=None, metavar="N|HxW",
                  help="Input size to trace with [default: the model's own].")
    @click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                  help="Also draw a figure (.png, .pdf or .svg): RF size per layer; with --layer, the theoretical, "
                       "effective and empirical RF side by side.")
    @use("save")
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Measure this layer's RF on images (needs --images) and compare it with the theory.")
    @click.option("--images", "images", multiple=True, metavar="DIR_OR_FILE",
                  help="With --layer: a folder of images, or image files (repeat the option).")
    @click.option("--measure", type=click.Choice(["effective", "empirical", "both"]), default="both",
                  show_default=True, help="With --layer: gradient-based effective RF (Luo et al. 2016), "
                                          "occlusion-based empirical RF (Zhou et al. 2015), or both.")
    @click.option("--channel", "-c", default=None, type=int,
                  help="With --layer: the unit (channel) [default: the largest mean activation over the images].")
    @click.option("--max-images", default=8, show_default=True, type=int,
                  help="With --layer: use the unit's top-activating N images among those given.")
    @click.option("--occluder", default=None, type=int, metavar="PX",
                  help="Empirical RF: occluder side [default: 11 for RFs of 66 px and more, about RF/6 below].")
    @click.option("--stride", default=None, type=int, metavar="PX",
                  help="Empirical RF: occluder step [default: about a third of the occluder].")
    @use("device")
    @click.option("--figure", default=None, type=click.Path(), hidden=True)  # the old name of --out with --layer
    @figure_options
    def rf(model_spec, input_size, out, save, layer, images, measure, channel, max_images, occluder, stride, device,
           figure):
        """Print the theoretical receptive field of every layer: RF size (height x width),
        effective stride and effective padding, so that unit (i, j) of a layer covers input rows
        i*S-P ... i*S-P+r-1 (and the same for columns). Dilation, asymmetric and functional
        padding and pooling, and branches (additions, concatenations: the union of the branches'
        regions) are followed through the actual forward pass.

        Needs only the architecture: no weights are loaded or downloaded.

        With --layer and --images, measures that layer's RF for one unit on real images instead
        (weights needed): the effective RF (Luo et al. 2016: |d unit / d input| of the layer's
        central unit, all channels, averaged over the images) and the empirical RF (Zhou et al.
        2015: a gray occluder slid around the unit at its maximum on each top-activating image;
        the discrepancy maps are aligned on the unit and averaged), and prints their sizes next
        to the theoretical one.

        \b
        Examples:
          cnnviz rf --model vgg16 --out vgg16_rf.png
          cnnviz rf --layer _blocks.2 --images photos/ --measure both --out blocks2_rf.png
        """
        if figure is not None:
            from cnnviz.errors import ParameterError

            if out is not None:
                raise ParameterError("--figure is the old name of --out; give only --out")
            out, figure = figure, None
        if layer is not None:
            return _measure(model_spec, layer, images, measure, channel, max_images, occluder, stride, device,
                            out, input_size, save)
        if images or channel is not None or occluder is not None or stride is not None:
            from cnnviz.errors import ParameterError

            raise ParameterError("--images, --channel, --occluder and --stride go with --layer")
        _reject(_given("measure", "max_images", "device"), "on the theoretical table (it measures nothing): "
                                                                  "--measure, --max-images and --device go with --layer")
        _architecture_only(model_spec, "rf")
        from cnnviz.engines.receptive_field.theory import format_table, receptive_field
        from cnnviz.files import check_outputs

        check_outputs(out, save)
        size = None
        if input_size is not None:
            size = _parse_pair(input_size, "--input-size")
            size = size if isinstance(size, tuple) else (size, size)
        lm = _main._load(model_spec, structure_only=True)
        try:
            result = receptive_field(lm, size)
        except RuntimeError as e:  # an input too small for a kernel, or a size the model cannot take
            if size is None:
                raise
            raise _size_error(lm, size, e) from None
        h, w = result.params["input_size"]
        click.echo(f"# {lm.name}, input 3x{h}x{w}; unit (i, j) covers rows i*S-P ... i*S-P+r-1")
        click.echo(format_table(result.infos()))
        if out or save:
            from cnnviz.render.style import plt
            from cnnviz.results import save_outputs

            fig = result.render(None, **style()) if out else None
            try:  # the table's figure and result land together, or neither does
                save_outputs(result if save else None, save, fig, out)
            finally:
                if fig is not None:
                    plt.close(fig)
            click.echo("wrote " + " and ".join(p for p in (out, save) if p))

    def _measure(model_spec, layer, images, measure, channel, max_images, occluder, stride, device, figure,
                 input_size, save):
        from pathlib import Path

        from cnnviz.engines.receptive_field.empirical import empirical_receptive_field, select_images
        from cnnviz.errors import ImageError, ParameterError
        from cnnviz.files import FIGURE_SUFFIXES, check_output
        from cnnviz.images import find_images

        if input_size is not None or save:
            raise ParameterError("--input-size and --save are for the per-layer table; drop them with --layer "
                                 "(--out draws the measured RF)")
        if not images:
            raise ParameterError("--layer needs --images: a folder of images or image files")
        if measure == "effective":
            _reject(_given("occluder", "stride"), "with --measure effective (gradients, no occluder): "
                                                  "--occluder and --stride set the empirical RF")
        for name, v in (("--max-images", max_images), ("--occluder", occluder), ("--stride", stride)):
            if v is not None and v <= 0:
                raise ParameterError(f"{name} must be a positive whole number, got {v}")
        if channel is not None and channel < 0:
            raise ParameterError(f"--channel must be >= 0, got {channel}")
        if figure:
            check_output(figure, FIGURE_SUFFIXES)
        files = []
        for item in images:
            p = Path(item)
            if p.is_dir():
                found = find_images(p)
                if not found:
                    raise ImageError(f"no images found in {str(p)!r}")
                files += found
            elif p.is_file():
                files.append(p)
            else:
                raise ImageError(f"image or folder not found: {str(p)!r}")
        lm = _main._load(model_spec)
        skipped = []
        x, names, channel = select_images(lm, layer, files, channel, max_images, device, skipped=skipped)
        for _, why in skipped:  # unreadable files are skipped; none readable is an error
            click.echo(f"skipped: {why}")
        names = [Path(n).name for n in names]
        emp = eff = None
        if measure in ("empirical", "both"):
            emp = empirical_receptive_field(lm, layer, channel, x, occluder=occluder, stride=stride, device=device,
                                            names=names)
            theo = emp.theoretical
        else:
            from cnnviz.engines.receptive_field.theory import receptive_fields

            theo = {i.address: i for i in receptive_fields(lm.model, tuple(x.shape[-2:]))}.get(layer)
            if theo is None or theo.rf is None:
                raise ParameterError(f"layer {layer!r} has no spatial receptive field; name a convolutional "
                                     "layer (with @K for a module that runs several times)")
        if measure in ("effective", "both"):
            from cnnviz.engines.receptive_field.effective import effective_receptive_field

            eff = effective_receptive_field(lm.model, theo.address, x)
        click.echo(f"# {lm.name}, layer {theo.address}, channel {channel}, {len(names)} image(s): "
                   + ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
        click.echo(f"theoretical RF: {theo.rf[0]}x{theo.rf[1]} px (stride {theo.stride[0]}, padding {theo.padding[0]})")
        if eff is not None:
            click.echo(f"effective RF (Luo et al., central unit, all channels): {eff.size[0]}x{eff.size[1]} px "
                       f"holding {round(100 * eff.mass)}% of the gradient")
        if emp is not None:
            click.echo(f"empirical RF (Zhou et al., occluder {emp.occluder} px, stride {emp.stride} px): "
                       f"{emp.size[0]}x{emp.size[1]} px at >= {round(100 * emp.threshold)}% of peak "
                       f"({emp.seconds:.1f} s)")
        if figure:
            from cnnviz.render.receptive_field.compare import compare_figure
            from cnnviz.render.style import RC, plt, save_figure

            fig = compare_figure(theo, eff, emp, **style())
            with plt.rc_context(RC):  # its dpi
                save_figure(fig, check_output(figure, FIGURE_SUFFIXES))
            plt.close(fig)
            click.echo(f"wrote {figure}")

    return rf


def _runs(model, size: tuple[int, int]) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
        return True
    except RuntimeError:
        return False


def _size_error(lm, size: tuple[int, int], error: RuntimeError):
    """The one-line error for an --input-size the model cannot run: the smallest square side it
    runs at (found by bisection between 1 and its own input size), or, where sizes below its own
    all fail, that it takes only its own size."""
    from cnnviz.errors import ParameterError

    h, w = size
    why = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    own = max(lm.input_size)
    was_training = lm.model.training
    lm.model.eval()
    try:
        if not _runs(lm.model, (own, own)):
            return ParameterError(f"--input-size {h}x{w} does not run through {lm.name} ({why})")
        lo, hi = 1, own  # hi runs; find the smallest side that runs
        while lo < hi:
            mid = (lo + hi) // 2
            if _runs(lm.model, (mid, mid)):
                hi = mid
            else:
                lo = mid + 1
    finally:
        lm.model.train(was_training)
    if min(h, w) < lo:
        return ParameterError(f"--input-size {h}x{w} is too small for {lm.name}: the smallest input it runs is "
                              f"{lo}x{lo} px (below that a feature map shrinks smaller than a kernel: {why})")
    return ParameterError(f"--input-size {h}x{w} does not run through {lm.name} ({why}); its own input size "
                          f"{lm.input_size[0]}x{lm.input_size[1]} does")
