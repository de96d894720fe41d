"""`cnnviz compare` and `cnnviz sanity`: several maps of one image per figure. Both take image
files and folders; with several images, one figure per image (--out-dir)."""

from __future__ import annotations

from pathlib import Path

import click

from ..inputs import expand_images, make_folder, plan_figures, wrote
from ..options import model_options, use
from ..output import figure_options


DEFAULT_METHODS = "saliency,guided,deconv,gradcam,ig"  # = cnnviz.engines.attribution.api.DEFAULT_COMPARE (no torch here)


def _methods(text: str) -> list[str]:
    from cnnviz.engines.attribution.gradients import METHODS
    from cnnviz.engines.attribution.methods import canonical

    names = [canonical(m.strip()) for m in text.split(",") if m.strip()]  # either separator
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise click.BadParameter(f"{', '.join(bad) or text!r} not known; choose from {', '.join(METHODS)}",
                                 param_hint="--methods")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise click.BadParameter(f"{', '.join(twice)} given twice", param_hint="--methods")
    return names


def _header(files, f) -> None:
    if len(files) > 1:
        click.echo(f"== {f}")


def register(cli) -> None:
    from .methods import MethodCommand, _load

    @cli.command(short_help="Several attribution methods side by side, a figure per image.", cls=MethodCommand)
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @use("methods", "target", "layer", "batch_size", "shared_scale", "device", "out", "out_dir", "save", cmd="compare",
         methods={"default": None, "show_default": False,
                  "help": f"Comma-separated: saliency, guided, deconv, gradcam, guided_gradcam, ig [default: "
                          f"{DEFAULT_METHODS}, less any map that cnnviz flags as uninformative for the model, e.g. the "
                          "deconvnet on a model without max pooling; named here, it is drawn, flagged]."},
         target={"help": "Class index or name [default: each image's top-1]."},
         shared_scale={"help": "One colour scale for all methods."},
         out={"help": "Figure file: .png, .pdf or .svg [default: IMAGE-STEM_compare.png here]; one image."},
         save={"help": "Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`; one image."})
    @figure_options
    def compare(images, model_spec, methods, target, layer, batch_size, shared_scale, device, out, out_dir, save):
        """Draw several attribution maps of each image side by side, for the same class.

        IMAGES: image files and folders (their images, subfolders included); with several images,
        one figure per image in --out-dir DIR."""
        from cnnviz.engines.attribution.api import compare as compare_maps
        from cnnviz.engines.attribution.gradients import CAM, check_options
        from cnnviz.images import load_image
        from cnnviz.results import save_outputs

        asked = methods is not None  # the defaults leave out what cnnviz flags as uninformative
        names = _methods(methods if asked else DEFAULT_METHODS)
        if layer is not None and not any(m in CAM for m in names):
            raise click.BadParameter(f"{layer!r} is Grad-CAM's layer, but --methods has no gradcam or guided_gradcam; "
                                     "drop --layer", param_hint="--layer")
        if batch_size is not None and names == ["ig"]:
            raise click.BadParameter("ig batches its scaled copies itself; drop --batch-size", param_hint="--batch-size")
        for m in names:
            check_options(m, target=target, layer=layer if m in CAM else None,
                          batch_size=batch_size if m != "ig" else None)
        files = expand_images(images)
        figures = plan_figures(files, out, out_dir, save, "compare", max_in_one=1, save_per_image=True)
        figures = [figures] if isinstance(figures, Path) else figures
        pics = [load_image(p) for p in files]
        lm = _load(model_spec)
        compared = compare_maps(lm, pics, names if asked else None, shared_scale=shared_scale, target=target,
                                layer=layer, device=device, batch_size=batch_size if names != ["ig"] else None)
        import matplotlib.pyplot as plt

        from cnnviz_cli import output

        for f, path, result in zip(files, figures, compared):
            result.params["image_file"] = str(f)
            fig = result.render(**output.style())
            try:
                make_folder(path)
                save_outputs(result if save else None, save, fig, path)
            finally:
                plt.close(fig)
            if len(files) > 1:
                click.echo(f"{f}: compare for {result.target_names[0]} -> {path}")
        first = compared[0].params
        for m, why in first.get("left_out", {}).items():
            click.echo(f"note: {m} left out of the default methods: {why}; name it in --methods to draw it anyway")
        for p in first["method_params"]:
            if p.get("uninformative"):
                click.echo(f"note: uninformative {p['method']} map: {p['uninformative_reason']}")
            if p.get("layer_note"):
                click.echo(f"note: {p['method']}: {p['layer_note']}")
        click.echo(wrote(figures if len(figures) > 1 else figures[0], save))

    @cli.command(short_help="Do the maps depend on the weights? (Adebayo et al. 2018)")
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @use("methods", cmd="sanity", methods={"default": "saliency,guided,gradcam",
                                           "help": "Comma-separated methods to check."})
    @click.option("--steps", default=8, show_default=True, type=click.IntRange(min=1, max=1024),
                  help="Cumulative randomization steps, from the top layer down.")
    @click.option("--classes", default=4, show_default=True, type=click.IntRange(min=0),
                  help="Class randomization: compare the top-1 map with the maps for this many other classes "
                       "(the runner-up, then random ones); 0: off.")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random weights and classes.")
    @use("device", "out", "out_dir", "save", cmd="sanity",
         out={"help": "Figure file: .png, .pdf or .svg [default: IMAGE-STEM_sanity.png here]; one image."},
         save={"help": "Also save the result (npz + JSON sidecar); one image."})
    @figure_options
    def sanity(images, model_spec, methods, steps, classes, seed, device, out, out_dir, save):
        """Randomize the model's layers cumulatively from the top (on a copy) and report, per step and
        method, the Spearman rank correlation between the original map and the randomized model's map
        (Adebayo et al. 2018). A method whose correlation stays high shows the image, not the model.

        Then the class-randomization test: each method's map for the top-1 class against its maps for
        other classes (Spearman ρ and Pearson r). A method whose maps stay the same for every class
        does not explain the class decision.

        IMAGES: image files and folders; with several images, one figure (and table) per image in
        --out-dir DIR."""
        from cnnviz.engines.attribution.sanity import sanity as run_sanity
        from cnnviz.images import load_image
        from cnnviz_cli import output

        names = _methods(methods)
        files = expand_images(images)
        figures = plan_figures(files, out, out_dir, save, "sanity", max_in_one=1, save_per_image=True)
        figures = [figures] if isinstance(figures, Path) else figures
        pics = [load_image(p) for p in files]
        lm = _load(model_spec)
        for f, pic, path in zip(files, pics, figures):
            result = run_sanity(lm, pic, methods=tuple(names), seed=seed, device=device, steps=steps, classes=classes)
            make_folder(path)
            output.write(result, path, save, echo=False)
            _header(files, f)
            _table(result)
        click.echo(wrote(figures if len(figures) > 1 else figures[0], save))


def _table(result) -> None:
    from cnnviz.layers import readable_name

    steps = [str(s) if str(s) == "original" else readable_name(str(s)) for s in result.steps]
    w = max(len(s) for s in steps + ["randomized down to"])
    click.echo(f"{'randomized down to':<{w}}  " + "  ".join(f"{m:>9}" for m in result.methods))
    for j, step in enumerate(steps):
        click.echo(f"{step:<{w}}  " + "  ".join(f"{result.spearman[i, j]:>9.3f}"
                                                    for i in range(len(result.methods))))
    if len(result.class_targets):
        labels = [f"{n} ({int(c)})" for n, c in zip(result.class_names, result.class_targets)]
        w = max([len(s) for s in labels] + [18])
        click.echo(f"\nclass randomization: map for top-1 '{result.params['target_name']}' vs other classes "
                   "(Spearman ρ / Pearson r)")
        click.echo(f"{'other class':<{w}}  " + "  ".join(f"{m:>15}" for m in result.methods))
        for k, label in enumerate(labels):
            click.echo(f"{label:<{w}}  " + "  ".join(
                f"{result.class_spearman[i, k]:>7.3f}/{result.class_pearson[i, k]:<7.3f}"
                for i in range(len(result.methods))))
