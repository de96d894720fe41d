"""The attribution commands: saliency, guided, deconv, smoothgrad, gradcam, gradcampp, layercam,
scorecam, rise, lrp, ig (one command per backprop method), compare and sanity. Each takes image
files and folders; options come from `cnnviz_cli.options`, figure paths from `cnnviz_cli.inputs`
(checked before the model loads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..inputs import expand_images, make_folder, plan_figures, wrote
from ..output import figure_options
from ..options import model_options, use


def _load(spec):
    from cnnviz_cli import main  # looked up at each call: tests hand the CLI a model already loaded

    return main._load(spec)


class MethodCommand(click.Command):
    """A backprop command: an option it does not list is refused naming the command, since the
    same option may exist on a sibling (`gradcam --unit` vs `deconv --unit`)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            raise click.UsageError(f"{self.name} does not take {e.option_name}; its options: "
                                   f"`cnnviz {self.name} --help`", ctx=ctx) from None


def one_image(result, i: int):
    """Image `i` of a GradientResult, as a result of its own (for a figure per image)."""
    import numpy as np

    from cnnviz.engines.attribution.dependence import UNINFORMATIVE_R

    p = dict(result.params)
    for key in ("geometry", "gray_image_r", "image_files", "relevance_share", "relevance_score"):
        if isinstance(p.get(key), list) and len(p[key]) == len(result.map):
            p[key] = p[key][i:i + 1]
    if p.get("gray_image_r"):
        p["uninformative"] = bool(p["gray_image_r"][0] >= UNINFORMATIVE_R)
        if not p["uninformative"]:
            p["uninformative_reason"] = None
    arrays = {f.name: getattr(result, f.name)[i:i + 1] for f in dataclasses.fields(result)
              if isinstance(getattr(result, f.name), np.ndarray) and f.name in result.array_schema}
    if result.original is not None:
        arrays["original"] = result.original[i:i + 1]
    return dataclasses.replace(result, params=p, **arrays)


def _leak_warning():
    from cnnviz.engines.attribution.lrp import RelevanceLeakWarning

    return RelevanceLeakWarning


def _refuse_shared_scale(shared_scale, figures) -> None:
    if shared_scale and isinstance(figures, list):
        from cnnviz.errors import ParameterError

        raise ParameterError("--shared-scale has no effect with --out-dir (one image per figure); drop it, or draw "
                             "up to 8 images in one figure with --out")


# What each method takes, as its entry in the registry (`cnnviz.engines.attribution.methods.REGISTRY`) says:
# (projects a unit of --layer, needs a --layer of maps, SmoothGrad can average it). Written out
# here because building the commands must not import cnnviz (and torch): `cnnviz --help` stays
# fast. tests/test_methods.py checks that it agrees with the registry; the engine's
# `check_options`, which every command calls, reads the registry itself.
METHOD_FLAGS = {
    "saliency": (True, False, True), "guided": (True, False, True), "deconv": (True, False, True),
    "gradcam": (False, True, False), "guided_gradcam": (False, True, False), "ig": (False, False, True),
    "gradcampp": (False, True, False), "layercam": (False, True, False), "scorecam": (False, True, False),
    "rise": (False, False, False), "lrp-epsilon": (False, False, True), "lrp-zplus": (False, False, True),
    "lrp-alphabeta": (False, False, True), "lrp-alpha1beta0": (False, False, True)}
CAM_LAYER = tuple(m for m, (_, layer, _) in METHOD_FLAGS.items() if layer)  # take a --layer of maps
LRP_RULES = {"epsilon": "lrp-epsilon", "zplus": "lrp-zplus", "alphabeta": "lrp-alphabeta",
             "alpha1beta0": "lrp-alpha1beta0"}  # `cnnviz lrp --rule`: the method of each rule


def _gradient_command(cli, method: str, short: str, summary: str):
    """One CLI command per backprop method. Each lists only the options its method uses: --layer
    and --unit where a unit can be projected (Grad-CAM: --layer alone), the SmoothGrad options
    where copies can be averaged, the Integrated Gradients options on ig; a combination the method
    cannot use is a one-line error before the model loads."""
    engine = {"smoothgrad": "saliency", "lrp": "lrp-zplus"}.get(method, method)
    units, _, smooths = METHOD_FLAGS[engine]
    always = method == "smoothgrad"

    def command(images, model_spec, target, device, out, out_dir, save, shared_scale, full_image, batch_size=None,
                layer=None, unit=None, samples=None, noise=None, seed=None, smooth=None, steps=None, baseline=None,
                internal_batch=None, rule=None, masks=None, max_channels=None, quiet=False):
        import warnings

        from cnnviz.engines.attribution.gradients import attribute, check_options, relevance_note
        from cnnviz.images import load_image
        from cnnviz_cli import output

        engine_now = LRP_RULES[rule] if rule is not None else engine
        kw = dict(target=target, layer=layer, unit=unit, smooth=samples or 0, noise=noise, seed=seed,
                  smooth_mode=smooth)
        if engine == "ig":
            kw.update(ig_steps=steps, baseline=baseline, ig_internal_batch=internal_batch)
        else:
            kw.update(batch_size=batch_size)
        if engine == "rise":
            kw.update(masks=masks)
        if engine == "scorecam":
            kw.update(max_channels=max_channels)
        check_options(engine_now, **kw)
        if engine in ("rise", "scorecam"):
            kw.update(progress=False if quiet else None)
        files = expand_images(images)
        figures = plan_figures(files, out, out_dir, save, method)
        _refuse_shared_scale(shared_scale, figures)
        pics = [load_image(p) for p in files]  # every file read before the model loads
        lm = _load(model_spec)
        with warnings.catch_warnings():  # said below as one line, not as a Python warning
            warnings.filterwarnings("ignore", category=_leak_warning())
            result = attribute(lm, pics, engine_now, device=device, **kw)
        note = relevance_note(result.params) if result.params.get("relevance_share") else None
        per_image = [f"; {relevance_note(result.params, i, detail=False)}" if note else "" for i in range(len(files))]
        result.params["image_files"] = [str(p) for p in files]
        result.params["class_names"] = {str(int(t)): lm.class_name(int(t)) for t in result.top1}
        if isinstance(figures, Path):
            output.write(result, figures, save, echo=False, shared_scale=shared_scale, full_image=full_image)
        else:
            if save:
                from cnnviz.results import save_outputs

                save_outputs(result, save)
            for i, path in enumerate(figures):  # each line as its figure lands
                make_folder(path)
                output.write(one_image(result, i), path, echo=False, full_image=full_image)
                click.echo(f"{files[i]}: {method} for {result.target_names[i]} -> {path}{per_image[i]}")
        if isinstance(figures, Path):
            for f, t, more in zip(files, result.target_names, per_image):
                click.echo(f"{f}: {method} for {t}{more}")
        if note and min(result.params["relevance_share"]) < result.params["relevance_min_share"]:
            click.echo(f"warning: {note}; the map's colour scale is not a decomposition of the score")
        if result.params.get("uninformative"):
            click.echo(f"note: uninformative map: {result.params['uninformative_reason']}")
        if result.params.get("layer_note"):
            click.echo(f"note: {result.params['layer_note']}")
        if result.params.get("batch_size_auto") and len(files) > 1:
            from cnnviz.batching import summary

            click.echo(summary(result.params))
        click.echo(wrote(figures, save))

    names = ["target"]
    layer_help = {}
    if units:
        names += ["layer", "unit"]
        layer_help = {"layer": {"help": "The layer of --unit (needed with --unit, refused without). "
                                        "See `cnnviz layers`."},
                      "target": {"help": "Class index or name [default: each image's top-1 class]. Not with --unit."}}
    elif engine in CAM_LAYER:
        names += ["layer"]
    if engine == "ig":
        names += ["steps", "baseline", "internal_batch"]
    if smooths:
        names += ["samples", "noise", "seed"] + (["smooth"] if engine != "ig" else [])
    if engine == "rise":
        names += ["masks"]
    if engine == "scorecam":
        names += ["max_channels"]
    if engine != "ig":
        names += ["batch_size"]
    names += ["shared_scale", "full_image", "device", "out", "out_dir", "save"]
    if engine in ("rise", "scorecam"):
        names += ["quiet"]
    overrides = dict(layer_help)
    if always:
        overrides.update(
            samples={"default": 25, "show_default": True, "help": "Noisy copies of each image to average over."},
            noise={"help": "SmoothGrad noise std, as a fraction of the input's range [default: 0.15]."},
            seed={"help": "Seed of the SmoothGrad noise [default: 0]."},
            smooth={"help": OPTIONS_HELP_SMOOTH_ALWAYS})
    command = use(*names, cmd=method, **overrides)(figure_options(command))
    if method == "lrp":
        command = click.option("--rule", type=click.Choice(list(LRP_RULES)), default="zplus", show_default=True,
                               help="LRP rule on the convolutions: epsilon (ε everywhere), zplus (z⁺; ε on linear "
                                    "layers), alphabeta (α2β1; ε on linear layers) or alpha1beta0.")(command)
    command = model_options(command)
    command = click.argument("images", nargs=-1, required=True, type=click.Path())(command)
    command.__doc__ = summary
    return cli.command(name=method, short_help=short, cls=MethodCommand)(command)


OPTIONS_HELP_SMOOTH_ALWAYS = ("How the copies are averaged: mean = signed signals averaged, |.| taken for the map "
                              "(Smilkov et al. 2017, Eq. 3) [default]; mean-abs = |signal| averaged (captum's "
                              "NoiseTunnel; steadier from seed to seed).")

IMAGES_NOTE = """

    IMAGES: image files and folders (their images, subfolders included). Up to 8 images share one
    figure (--out); with more, or for a figure per image, give --out-dir DIR."""


def register(cli) -> None:
    _gradient_command(cli, "saliency", "Saliency map: gradient of the class score w.r.t. the pixels.",
                      """Gradient of the class score w.r.t. the pixels (Simonyan et al. 2014): the map is
    the maximum of |gradient| over colour channels.""" + IMAGES_NOTE)
    _gradient_command(cli, "guided", "Guided backprop map.", """Guided backprop (Springenberg et al. 2015): the gradient with only positive
    signals passed through each rectifier (ReLU, ReLU6, LeakyReLU, Hardtanh, also F.relu).""" + IMAGES_NOTE)
    _gradient_command(cli, "deconv", "Zeiler-Fergus deconvnet projection of a class or a unit.", """Zeiler & Fergus deconvnet: project a class score or a unit (--layer L --unit C)
    back to pixels through rectification, unpooling with switches and transposed filters. Only the
    max-pool switches carry the image into it: on a model without max pooling (EfficientNet-Lite)
    every image gets the same map, and the output and the figure say so.""" + IMAGES_NOTE)
    _gradient_command(cli, "smoothgrad", "Saliency averaged over noisy copies of the image.", """SmoothGrad (Smilkov et al. 2017): the saliency map averaged over noisy copies
    of the image (--samples, default 25; --noise; --smooth mean, the paper's signed average, or
    mean-abs, captum's average of magnitudes).""" + IMAGES_NOTE)
    _gradient_command(cli, "gradcam", "Grad-CAM heat map of a class.", """Grad-CAM (Selvaraju et al. 2017): feature maps of --layer weighted by the
    mean gradient of the class score, rectified and upsampled to the image. A model whose last
    convolution is flattened into tokens (a vision transformer) has no default layer.""" + IMAGES_NOTE)
    _gradient_command(cli, "gradcampp", "Grad-CAM++ heat map of a class.", """Grad-CAM++ (Chattopadhyay et al. 2018): each
    position of a feature map weighted by 1 / (2 + g * sum of the map), g its gradient, times the
    positive gradient; rectified and upsampled. Sharper than Grad-CAM where a class has several
    instances.""" + IMAGES_NOTE)
    _gradient_command(cli, "layercam", "LayerCAM heat map of a class.", """LayerCAM (Jiang et al. 2021): every position of
    every map weighted by its own positive gradient, so that early layers give fine maps
    (--layer).""" + IMAGES_NOTE)
    _gradient_command(cli, "scorecam", "Score-CAM heat map of a class (no gradients).", """Score-CAM (Wang et al. 2020): each feature
    map of --layer, upsampled and scaled to [0, 1], masks the image; its weight is the class
    probability of that masked image. One forward pass per channel, 16 to a batch (minutes on a
    CPU for a 1280-channel layer; a progress bar after one second); --max-channels N keeps only
    the N channels with the largest spatial mean activation, an approximation the figure
    states.""" + IMAGES_NOTE)
    _gradient_command(cli, "rise", "RISE saliency of a class (black box).", """RISE (Petsiuk et al. 2018): --masks
    random masks (default 2000; 7x7 cells, each kept with probability 0.5, upsampled and shifted) weighted by
    the class probability of the masked image; needs no gradients and no layer. One forward pass
    per mask, 16 to a batch (a progress bar after one second); fewer masks, a noisier
    map.""" + IMAGES_NOTE)
    _gradient_command(cli, "lrp", "Layer-wise relevance propagation (signed map).", """Layer-wise relevance
    propagation (Bach et al. 2015): the class score sent back layer by layer, each convolution and
    linear layer splitting its output's relevance among its inputs by --rule; batch norms folded into
    their convolutions first, activations pass relevance, max pooling to the maximum, average
    pooling and residual additions in proportion. A signed map (diverging colours): red for evidence
    for the class, blue against.""" + IMAGES_NOTE)
    _gradient_command(cli, "ig", "Integrated Gradients (signed map).", """Integrated Gradients (Sundararajan et al. 2017, via captum) from a baseline image
    (--baseline, black by default) in --steps steps: a signed map (diverging colours, centred on
    zero). Each image in turn, its scaled copies --internal-batch at a time (memory bounded).""" + IMAGES_NOTE)
