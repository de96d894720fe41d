"""Every option of the attribution commands (and the model options of every command), declared
once: flags, type, default, help and check. A command builds its options from this table with
`use("target", "device", ...)`, so its --help, its default and its validation cannot disagree
with a sibling's. A few options read differently per command (the layer's purpose, the default
figure name): those take `help=` (or other click settings) as an override; the rest is shared.

No torch here: `cnnviz --help` must stay fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import click

MAX_FIGURE_IMAGES = 8  # images one --out figure may hold; beyond, --out-dir (one figure per image)


def _check_baseline(ctx, param, value):
    """--baseline: the engine's own check, at parse time (one line naming the value)."""
    if value is None:
        return value
    from cnnviz.engines.attribution.ig import check_baseline
    from cnnviz.errors import ParameterError

    try:
        check_baseline(value)
    except ParameterError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _check_fill(ctx, param, value):
    from cnnviz.errors import ParameterError
    from cnnviz.models import Preprocessing

    try:
        Preprocessing().fill_value(value)
    except ParameterError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _check_mode(ctx, param, value):
    """--mode: the engine's own check (one line naming the value and the modes)."""
    from cnnviz.engines.occlusion.incremental import check_mode
    from cnnviz.errors import ParameterError

    try:
        return check_mode(value)
    except ParameterError as e:
        raise click.BadParameter(str(e)) from None


def _check_tau(ctx, param, value):
    from cnnviz.engines.occlusion.incremental import check_tau
    from cnnviz.errors import ParameterError

    try:
        return check_tau(value)
    except ParameterError as e:
        raise click.BadParameter(str(e)) from None


def _batch(what: str):
    """A positive whole number or None, checked as the engines check it (one line, the fix)."""
    def check(ctx, param, value):
        if value is None:
            return value
        from cnnviz.batching import check_batch_size
        from cnnviz.errors import ParameterError

        try:
            return check_batch_size(value, what)
        except ParameterError as e:
            raise click.BadParameter(str(e)) from None
    return check


@dataclass(frozen=True)
class Option:
    """One declaration: click's parameter declarations and settings."""

    decls: tuple[str, ...]
    settings: dict = field(default_factory=dict)

    def decorator(self, **override):
        return click.option(*self.decls, **{**self.settings, **override})


def _opt(*decls, **settings) -> Option:
    return Option(decls, settings)


POSITIVE = click.IntRange(min=1)

OPTIONS: dict[str, Option] = {
    "target": _opt("--target", "-t", default=None, metavar="CLASS",
                   help="Class index or name [default: each image's top-1 class]."),
    "layer": _opt("--layer", "-l", default=None, metavar="NAME",
                  help="Grad-CAM's layer [default: the last convolutional block]. See `cnnviz layers`."),
    "unit": _opt("--unit", "-u", default=None, metavar="C[:max|:map|:Y,X]",
                 help="Project a unit of --layer instead of a class: channel C at its strongest activation "
                      "(C or C:max), the whole map (C:map) or one position (C:Y,X)."),
    "samples": _opt("--samples", default=None, type=click.IntRange(min=1, max=10_000), metavar="N",
                    help="SmoothGrad: average over N noisy copies of each image [default: off]."),
    "noise": _opt("--noise", default=None, type=float, metavar="STD",
                  help="SmoothGrad noise std, as a fraction of the input's range [default: 0.15]; needs --samples."),
    "seed": _opt("--seed", default=None, type=int,
                 help="Seed of the SmoothGrad noise [default: 0]; needs --samples."),
    "smooth": _opt("--smooth", default=None, type=click.Choice(["mean", "mean-abs"]),
                   help="How the copies are averaged: mean = signed signals averaged, |.| taken for the map "
                        "(Smilkov et al. 2017, Eq. 3) [default]; mean-abs = |signal| averaged (captum's "
                        "NoiseTunnel; steadier from seed to seed); needs --samples."),
    "steps": _opt("--steps", default=50, show_default=True, type=click.IntRange(min=1, max=10_000),
                  help="Integrated Gradients: steps from the baseline to the image."),
    "baseline": _opt("--baseline", default="black", show_default=True, callback=_check_baseline,
                     metavar="black|mean|white|blur|GRAY|R,G,B",
                     help="Integrated Gradients' starting image: black, mean (the dataset mean, gray), white, "
                          "blur (the image blurred, sigma 10 px), a gray level in [0,1] or R,G,B in [0,1]."),
    "internal_batch": _opt("--internal-batch", default=None, type=int, metavar="N",
                           callback=_batch("the internal batch (scaled copies per pass)"),
                           help="Integrated Gradients: scaled copies per forward + backward pass [default: as many "
                                "as fit in 1 GiB (and half the free memory), at most --steps]. Results agree "
                                "to float rounding."),
    "batch_size": _opt("--batch-size", "-b", default=None, type=int, metavar="N", callback=_batch("the batch size"),
                       help="Images (SmoothGrad: noisy copies) per forward + backward pass [default: chosen by "
                            "timing the first batches at 4, 8, 16... (16, 32... on a GPU), within free memory]. "
                            "Results do not depend on it on a CPU."),
    "masks": _opt("--masks", default=None, type=int, metavar="N",
                  help="RISE: random masks per image [default: 2000; at most 100000]. Fewer: faster, noisier."),
    "max_channels": _opt("--max-channels", default=None, type=int, metavar="N",
                         help="Score-CAM over only the N channels of --layer with the largest spatial mean "
                              "activation (an approximation: one masked pass per channel kept) [default: every "
                              "channel]."),
    "shared_scale": _opt("--shared-scale", is_flag=True, help="One colour scale for all images."),
    "full_image": _opt("--full-image", is_flag=True,
                       help="Draw on the whole original photos: the model's crop dashed, the rest hatched "
                            "(not analysed)."),
    "device": _opt("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda."),
    "amp": _opt("--amp/--no-amp", default=None, help="float16 mixed precision on CUDA [default: on with CUDA]."),
    "out": _opt("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                help="Figure file: .png, .pdf or .svg, for up to 8 images [default: IMAGE-STEM_{cmd}.png here]."),
    "out_dir": _opt("--out-dir", default=None, type=click.Path(), metavar="DIR",
                    help="One figure per image, DIR/IMAGE-STEM_{cmd}.png (created if missing; equal stems get "
                         "-2, -3...). For folders and many images."),
    "save": _opt("--save", default=None, type=click.Path(), metavar="RESULT.npz",
                 help="Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`."),
    "quiet": _opt("--quiet", "-q", is_flag=True, help="No progress bar."),
    "window": _opt("--window", "-w", default="32", show_default=True, metavar="N|HxW",
                   help="Occluder size in input pixels."),
    "stride": _opt("--stride", "-s", default="8", show_default=True, metavar="N|HxW",
                   help="Step between occluder positions, in input pixels."),
    "fill": _opt("--fill", default="mean", show_default=True, callback=_check_fill,
                 help="Occluder colour: mean (gray, the dataset mean), black, white, a gray level in [0,1], "
                      "or R,G,B in [0,1]."),
    "channel": _opt("--channel", "-c", default=None, type=int,
                    help="Channel of --layer [default: the one with the strongest response to the unoccluded "
                         "image]."),
    "mode": _opt("--mode", default="full", show_default=True, callback=_check_mode,
                 metavar="full|incremental|approximate",
                 help="full: every occluded image through the whole network; incremental: run the image once, "
                      "then recompute only the region each occluder changes, layer by layer (same maps up to "
                      "float rounding, fewer multiply-accumulates; a model torch.fx cannot trace runs full); "
                      "approximate: incremental with the changed regions of deep layers cut to --tau of the map "
                      "and the fine grid computed only near the largest drops of a coarse one."),
    "tau": _opt("--tau", default="auto", show_default=True, type=str, callback=_check_tau, metavar="T|auto",
                help="--mode approximate: a changed region longer than this fraction of its feature map is cut "
                     "to its centre (0 < T <= 1; 1 cuts nothing). auto: 0.75, then 0.5, the smallest whose "
                     "map stays close to the exact one at 16 positions computed both ways, else 1."),
    "methods": _opt("--methods", default="saliency,guided,deconv,gradcam,ig", show_default=True,
                    help="Comma-separated: saliency, guided, deconv, gradcam, guided_gradcam, ig."),
}


def use(*names: str, cmd: str = "", **overrides: dict):
    """A decorator adding OPTIONS[name] for each name, in the order given (as --help lists them).
    `overrides[name]` replaces click settings of that option for this command; `{cmd}` in a help
    text becomes the command's name."""
    def decorate(f):
        for name in reversed(names):
            settings = dict(overrides.get(name, {}))
            text = settings.get("help", OPTIONS[name].settings.get("help"))
            if text and "{cmd}" in text:
                settings["help"] = text.replace("{cmd}", cmd)
            f = OPTIONS[name].decorator(**settings)(f)
        return f
    return decorate


def model_options(f=None, *, weights_from: str | None = None, architecture_only: bool = False):
    """--model, --weights, --weights-file, --labels, --trust-checkpoint. With `weights_from` (the
    option a command takes its weights from, e.g. "--checkpoints"), --weights and --weights-file
    are left out of --help (still parsed, for the command's one-line refusal) and
    --trust-checkpoint applies to the files of `weights_from`. With `architecture_only` (a command
    that reads no weights and no class names), only --model is listed; the others are still
    parsed, for the command's one-line refusal (and --weights none, which changes nothing)."""
    if f is None:
        return functools.partial(model_options, weights_from=weights_from, architecture_only=architecture_only)
    own = " with --weights-file" if weights_from is None and not architecture_only else ""
    trusted = "--weights-file" if weights_from is None else f"the {weights_from} files"

    @click.option("--model", "-m", default="efficientnet_lite0", show_default=True, metavar="NAME",
                  help="A torchvision model (alexnet, vgg16, resnet50, ...), efficientnet_lite0/1/2, or your "
                       "own model as package.module:factory (importable from the installed packages; the "
                       f"working directory is not searched) or path/to/file.py:factory{',' if own else ''}{own}. "
                       "CAUTION: a factory is code that runs (the module is imported, the file executed); "
                       f"name only code you trust{'' if architecture_only else ', as with --trust-checkpoint'}.")
    @click.option("--weights", default=None, metavar="ENTRY", hidden=weights_from is not None or architecture_only,
                  help="torchvision weights entry, e.g. IMAGENET1K_V1 [default: the model's DEFAULT]; "
                       "'none' for random weights.")
    @click.option("--weights-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                  hidden=weights_from is not None or architecture_only,
                  help="Load this checkpoint (a state dict) instead of downloading weights.")
    @click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="PATH", hidden=architecture_only,
                  help="Text file with one class name per line (for your own models).")
    @click.option("--trust-checkpoint", is_flag=True, default=False, hidden=architecture_only,
                  help=f"Allow full unpickling of {trusted}. DANGEROUS: a pickled checkpoint can run "
                       "arbitrary code when loaded; use only for files you made or fully trust.")
    @functools.wraps(f)
    def wrapper(*args, model, weights, weights_file, labels, trust_checkpoint, **kw):
        from cnnviz.models import check_weights_options

        # before any work; --trust-checkpoint of `weights_from` is the command's to use
        check_weights_options(weights, weights_file, trust_checkpoint and weights_from is None)
        spec = dict(name=model, weights=weights, weights_file=weights_file, labels=labels,
                    trust_checkpoint=trust_checkpoint)
        return f(*args, model_spec=spec, **kw)

    return wrapper


def result_options(figure: str, progress: str | None = None, resume_from: str = "RESULT.npz.partial",
                   save: str | None = None):
    """--out FIG (its default: `figure` here) and --save RESULT.npz, for a command that draws one
    figure; for a resumable one (`progress`: where --save's progress goes, as its help says) also
    --resume/--no-resume, which continues from `resume_from`. `save` replaces --save's help."""
    if save is None:
        save = (f"Save the result (npz + JSON sidecar); {progress}" if progress is not None else
                "Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`.")

    def decorate(f):
        if progress is not None:
            f = click.option("--resume/--no-resume", default=True, show_default=True,
                             help=f"Continue from {resume_from} when a previous run with the same arguments was "
                                  "stopped.")(f)
        f = click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz", help=save)(f)
        return click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                            help=f"Figure file: .png, .pdf or .svg [default: {figure} here].")(f)
    return decorate
