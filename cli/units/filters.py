"""`cnnviz filters` (first-layer filters as images) and `cnnviz activations` (a layer's feature maps,
strongest first). Wire with `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import result_options, use


def register(cli):
    from cnnviz_cli.main import _given, _no_labels, model_options
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="The first convolution's filters as images (Zeiler & Fergus Fig. 6).")
    @model_options
    @result_options("MODEL_filters.png")
    @figure_options
    def filters(model_spec, out, save):
        """Draw every filter of the model's first convolution (the first Conv2d it runs) as an RGB
        image, each scaled to [0, 1] by its own min and max, as Krizhevsky et al. and Zeiler & Fergus
        show them; a model whose first layer does not take 3 channels shows input channel 0 in gray."""
        from cnnviz.engines.units.filters import first_layer_filters
        from cnnviz_cli import output

        _no_labels(model_spec, "filters")
        out = out or f"{Path(model_spec['name']).name.replace(':', '_')}_filters.png"
        output.check(out, save)
        lm = _main._load(model_spec)
        result = first_layer_filters(lm)
        output.write(result, out, save, echo=False)
        p = result.params
        from cnnviz.layers import readable_name

        click.echo(f"{readable_name(p['layer'], p.get('layer_type'))}: {p['out_channels']} filters of {p['in_channels']}x{p['kernel'][0]}x{p['kernel'][1]}")
        click.echo(output.wrote(out, save))

    @cli.command(short_help="A layer's feature maps for one image, strongest first.")
    @click.argument("image", type=click.Path())
    @model_options
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Layer whose maps to show [default: last convolutional block]. See `cnnviz layers`.")
    @click.option("--top", default=32, show_default=True, type=click.IntRange(min=1),
                  help="Show this many maps, the strongest by maximum activation.")
    @use("device")
    @result_options("IMAGE-STEM_activations.png",
                    save="Also save the result (the --top maps) to redraw it with `cnnviz render`.")
    @figure_options
    def activations(image, model_spec, layer, top, device, out, save):
        """Draw the feature maps of --layer for IMAGE as a grid, strongest first (by each map's
        maximum activation, ties by the mean), after the input crop, on one shared colour scale."""
        from cnnviz.engines.units.filters import feature_maps
        from cnnviz.images import load_image
        from cnnviz_cli import output

        out = out or f"{Path(image).stem}_activations.png"
        output.check(out, save)
        from cnnviz.engines.common import resolve_device

        resolve_device(device)
        pic = load_image(image)
        lm = _main._load(model_spec)
        if _given("top"):  # the default (32) is cut to the layer's channels
            _check_top(lm, layer, top)
        result = feature_maps(lm, pic, layer=layer, top=top, device=device)
        result.params["image_file"] = str(image)
        output.write(result, out, save, echo=False, top=top)
        p = result.params
        chans = ", ".join(f"{int(c)} ({float(s):.3g})" for c, s in zip(result.channels[:5], result.strength[:5]))
        from cnnviz.layers import readable_name

        click.echo(f"{readable_name(p['layer'], p.get('layer_type'))} ({'x'.join(map(str, p['layer_shape']))}): strongest channels {chans}")
        click.echo(output.wrote(out, save))

    return cli


def _check_top(lm, layer: str | None, top: int) -> None:
    """--top larger than the layer's channel count: an error before the maps are computed and drawn
    (drawing a thousand maps takes minutes). The layer is resolved on a zero image of the input size."""
    import torch

    from cnnviz.errors import ParameterError
    from cnnviz.layers import default_feature_layer, require_maps, resolve_layer

    h, w = lm.input_size
    example = torch.zeros(1, 3, h, w)
    was_training = lm.model.training
    lm.model.eval()
    try:
        info = default_feature_layer(lm.model, example) if layer is None else resolve_layer(lm.model, layer, example)
    finally:
        lm.model.train(was_training)
    require_maps(info)
    if top > info.shape[0]:
        explicit = "" if layer is not None else " (the default layer)"
        raise ParameterError(f"--top {top} is more than the {info.shape[0]} channels of {info.address!r}{explicit}; "
                             f"use --top {info.shape[0]} or less")
