"""`cnnviz scoremap`: a class's probability at every crop position of a larger view of the photo."""

from __future__ import annotations

import click

from ..options import model_options, use
from ..output import figure_options


def register(cli) -> None:
    @cli.command()
    @click.argument("image", type=click.Path())
    @model_options
    @use("target", "batch_size", "device", "out", "save", "quiet", cmd="scoremap",
         out={"help": "Figure file; .png, .pdf or .svg [default: IMAGE-STEM_scoremap.png here]."})
    @click.option("--scale", default=2.0, show_default=True, type=float,
                  help="The photo's shorter side becomes SCALE x the model's resize (256 for ImageNet models; 1: "
                       "the usual input, whose centre crop is what `predict` sees).")
    @click.option("--stride", default=None, type=int,
                  help="Pixels between crop positions [default: a sixteenth of the crop, at least 8].")
    @figure_options
    def scoremap(image, model_spec, target, batch_size, device, out, save, quiet, scale, stride):
        """Slide the model's input crop over a larger view of IMAGE and draw the probability of a
        class at every position (OverFeat-style dense evaluation of a classifier): where in the
        photo the class is found, and how much context it needs."""
        from pathlib import Path

        from cnnviz.engines.experiments.scoremap import scoremap as run
        from cnnviz.images import load_image
        from cnnviz_cli import main as _main
        from cnnviz_cli import output

        out = out or f"{Path(image).stem}_scoremap.png"
        output.check(out, save)
        photo = load_image(image)  # before the model: a bad file fails fast
        lm = _main._load(model_spec)
        result = run(lm, photo, target=target, scale=scale, stride=stride, batch_size=batch_size, device=device,
                     progress=False if quiet else None)
        result.params["image_file"] = str(image)
        output.write(result, out, save, echo=False)
        p = result.params
        click.echo(f"'{p['target_name']}' (class {p['target']}): p up to {p['best_prob']:.3f} at crop "
                   f"{p['best_position']} of {p['image_size'][0]}x{p['image_size'][1]} px; {p['num_positions']} crops "
                   f"in {p['seconds']:.1f} s on {result.provenance['device']}")
        click.echo(output.wrote(out, save))
