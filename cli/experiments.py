"""Commands for the experiments of the papers beyond the single-image maps: `cnnviz invariance`
(Zeiler & Fergus Fig. 5). Wire with `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

TRANSFORMS = ("translate", "scale", "rotate")


def _names(text: str, what: str, allowed=None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise click.BadParameter(f"no {what} in {text!r}")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise click.BadParameter(f"unknown {what} {bad[0]!r}; use {', '.join(allowed)}")
    return items


def register(cli):
    from cnnviz_cli.main import model_options
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="Feature distance and class probability under translation, scale, rotation (ZF Fig. 5).")
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @click.option("--transform", "transforms", default="translate,scale,rotate", show_default=True,
                  metavar="T1,T2", help="Transforms, each a row of the figure: translate, scale, rotate.")
    @click.option("--layers", default=None, metavar="L1,L2",
                  help="Layers whose features are compared [default: the first convolution and the features "
                       "entering the last linear layer]. See `cnnviz layers`.")
    @click.option("--target", "-t", default=None, metavar="CLASS",
                  help="Class whose probability is followed, for every image [default: each image's top-1].")
    @click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda.")
    @click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                  help="Figure file: .png, .pdf or .svg [default: FIRST-IMAGE-STEM_invariance.png here].")
    @click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz",
                  help="Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`.")
    @figure_options
    def invariance(images, model_spec, transforms, layers, target, device, out, save):
        """Transform each image over the ranges of Zeiler & Fergus Fig. 5 (vertical shifts of -60..60
        pixels, scales 1..1.8, rotations 0..350 degrees, inside the model's input crop, new pixels
        gray) and plot, per transform, the relative distance ||f(Tx) - f(x)|| / ||f(x)|| of each
        layer's features and the probability of the image's class, one curve per image."""
        import numpy as np

        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.invariance import invariance as run
        from cnnviz.images import load_image
        from cnnviz_cli import output

        kinds = _names(transforms, "transform", TRANSFORMS)
        layer_list = _names(layers, "layer") if layers is not None else None
        out = out or f"{Path(images[0]).stem}_invariance.png"
        output.check(out, save)
        resolve_device(device)
        pics = [load_image(p) for p in images]  # unreadable images: one line before the model loads
        lm = _main._load(model_spec)
        result = run(lm, pics, transforms=kinds, layers=layer_list, target=target, device=device)
        result.params["names"] = [Path(p).name for p in images]
        output.write(result, out, save, echo=False)
        p = result.params
        for name, cls, d, prob in zip(p["names"], p["class_names"], result.distance, result.prob):
            parts = [f"{kind}: last-layer distance up to {np.nanmax(d[r, -1]):.2f}, P(class) {np.nanmin(prob[r]):.2f}"
                     f"-{np.nanmax(prob[r]):.2f}" for r, kind in enumerate(kinds)]
            click.echo(f"{name} ({cls}): " + "; ".join(parts))
        click.echo(output.wrote(out, save))

    return cli
