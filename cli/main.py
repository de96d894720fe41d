"""The `cnnviz` command: one subcommand per engine. Commands parse options, call the library, save
and render; every library error becomes a one-line message and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys


def _abort_while_starting(signum, frame):
    """Ctrl-C while the command is still importing: `Aborted.` and exit status 130, as later on,
    instead of a traceback from whatever module was loading."""
    sys.stderr.write("Aborted.\n")
    sys.stderr.flush()
    # Not SystemExit: an exception raised while importlib runs a module-lock callback is "ignored"
    # (printed with a traceback, and the import goes on). Nothing has been written yet.
    os._exit(130)


# Until this module has finished importing (restored at its end, so that importing it from Python
# changes nothing); from then on CnnvizGroup.invoke and main() turn KeyboardInterrupt into the same.
try:
    _sigint_before = signal.signal(signal.SIGINT, _abort_while_starting) \
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
except ValueError:  # imported from a thread other than the main one: signals are not ours to set
    _sigint_before = None

import functools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from cnnviz_cli.output import figure_options  # noqa: E402

EXIT_USER_ERROR = 1
EXIT_INTERNAL = 3


class CnnvizGroup(click.Group):
    """Turns library errors into `Error: ...` on one line, never a traceback."""

    def invoke(self, ctx):
        try:
            from cnnviz.errors import CnnvizError  # imports torch: seconds in which Ctrl-C is likely
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            ctx.exit(130)
        try:
            return super().invoke(ctx)
        except CnnvizError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except click.UsageError as e:  # bad option values: one line too, not usage + hint + error
            click.echo(f"Error: {e.format_message()}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Aborted.", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug or an environment problem: still one line unless asked
            if os.environ.get("CNNVIZ_DEBUG"):
                raise
            msg = str(e).splitlines()[0] if str(e) else ""
            if "out of memory" in msg.lower():
                click.echo(f"Error: out of memory ({msg}); lower --batch-size or use --device cpu", err=True)
                ctx.exit(EXIT_USER_ERROR)
            click.echo(f"Error: internal error, {type(e).__name__}: {msg} (set CNNVIZ_DEBUG=1 for the traceback)",
                       err=True)
            ctx.exit(EXIT_INTERNAL)


def _version() -> str:
    """The installed package's version, read from its metadata: importing cnnviz (and torch) just
    for `--version` would cost seconds at every start. A checkout that is not installed falls
    back to cnnviz.__version__."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnviz")
    except PackageNotFoundError:
        from cnnviz import __version__

        return __version__


def _print_version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        click.echo(f"cnnviz, version {_version()}")
        ctx.exit()


@click.group(cls=CnnvizGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli():
    """See what a convolutional network reacts to.

    \b
    Start here:
      cnnviz predict photo.jpg                   top-5 classes (checks model + preprocessing)
      cnnviz occlusion photo.jpg                 occlusion sensitivity figure (Zeiler & Fergus)
      cnnviz featvis --layer _blocks.10          images that drive 8 units of a layer
      cnnviz layers --model alexnet              layer names to pass as --layer
      cnnviz models                              models that can be loaded here

    The default model is efficientnet_lite0, whose ImageNet weights come with cnnviz (no network).
    """


def model_options(f):
    """--model, --weights, --weights-file, --labels, --trust-checkpoint."""
    @click.option("--model", "-m", default="efficientnet_lite0", show_default=True, metavar="NAME",
                  help="A torchvision model (alexnet, vgg16, resnet50, ...), efficientnet_lite0/1/2, or your "
                       "own model as package.module:factory (importable from the installed packages; the "
                       "working directory is not searched) or path/to/file.py:factory, with --weights-file. "
                       "CAUTION: a factory is code that runs (the module is imported, the file executed); "
                       "name only code you trust, as with --trust-checkpoint.")
    @click.option("--weights", default=None, metavar="ENTRY",
                  help="torchvision weights entry, e.g. IMAGENET1K_V1 [default: the model's DEFAULT]; "
                       "'none' for random weights.")
    @click.option("--weights-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                  help="Load this checkpoint (a state dict) instead of downloading weights.")
    @click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                  help="Text file with one class name per line (for your own models).")
    @click.option("--trust-checkpoint", is_flag=True, default=False,
                  help="Allow full unpickling of --weights-file. DANGEROUS: a pickled checkpoint can run "
                       "arbitrary code when loaded; use only for files you made or fully trust.")
    @functools.wraps(f)
    def wrapper(*args, model, weights, weights_file, labels, trust_checkpoint, **kw):
        from cnnviz.models import check_weights_options

        check_weights_options(weights, weights_file, trust_checkpoint)  # before any work
        spec = dict(name=model, weights=weights, weights_file=weights_file, labels=labels,
                    trust_checkpoint=trust_checkpoint)
        return f(*args, model_spec=spec, **kw)

    return wrapper


def _load(spec: dict, structure_only: bool = False):
    from cnnviz.models import load_model

    if structure_only and spec["weights_file"] is None:
        spec = {**spec, "weights": "none"}
    return load_model(**spec)


def _given(*names: str) -> list[str]:
    """Which of these parameters (python names) the user set (command line or environment), as
    opposed to left at their defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [n for n in names if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE,
                                                                 ParameterSource.ENVIRONMENT)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _reject(names, why: str) -> None:
    """A one-line error for options the command would silently ignore."""
    from cnnviz.errors import ParameterError

    if names:
        given = ", ".join(_flag(n) for n in names)
        raise ParameterError(f"{given} {'has' if len(names) == 1 else 'have'} no effect {why}; drop "
                             f"{'it' if len(names) == 1 else 'them'}")


def _architecture_only(spec: dict, command: str) -> None:
    """Commands that read only the architecture: weights and labels options would be ignored."""
    unused = [n for n, v in (("weights_file", spec["weights_file"]), ("labels", spec["labels"]),
                             ("trust_checkpoint", spec["trust_checkpoint"])) if v]
    if spec["weights"] is not None and spec["weights"].strip().lower() != "none":
        unused.insert(0, "weights")
    _reject(unused, f"on `cnnviz {command}`, which reads only the architecture (no weights, no class names)")


def _no_labels(spec: dict, command: str) -> None:
    if spec["labels"]:
        _reject(["labels"], f"on `cnnviz {command}`, which shows no class names")


def _check_amp(amp: bool | None, device: str) -> None:
    """--amp is float16 autocast on CUDA; on another device it would be silently off."""
    if amp:
        from cnnviz.engines.common import resolve_device

        dev = resolve_device(device)
        if dev.type != "cuda":
            from cnnviz.errors import ParameterError

            raise ParameterError(f"--amp is float16 mixed precision on CUDA; this run is on {dev.type}: drop --amp "
                                 "or use --device cuda")


def _parse_pair(value: str, what: str):
    parts = value.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a whole number (or HxW)", param_hint=what) from None
    if len(nums) not in (1, 2) or min(nums) <= 0:
        raise click.BadParameter(f"{value!r} must be positive (one number, or HxW)", param_hint=what)
    return nums[0] if len(nums) == 1 else tuple(nums)


@cli.command()
def models():
    """List the models that can be loaded here."""
    from cnnviz.models import available_models

    rows = available_models()
    w = max(len(r["name"]) for r in rows)
    click.echo(f"{'model':<{w}}  source                  weights")
    for r in rows:
        star = " (default)" if r["default"] else ""
        click.echo(f"{r['name']:<{w}}  {r['source']:<22}  {r['weights']}{star}")
    click.echo("\nAlso, for your own model: package.module:factory or path/to/file.py:factory, with --weights-file "
               "checkpoint.pt [--labels labels.txt]; the factory is code that runs, name only code you trust.")


@cli.command()
@model_options
def layers(model_spec):
    """List every layer of a model: address (for --layer), type and output shape.

    Needs only the architecture: no weights are loaded or downloaded. A module that runs several
    times per forward pass is listed once per call as NAME@K.
    """
    import torch

    from cnnviz.layers import format_layers, trace_layers

    _architecture_only(model_spec, "layers")
    lm = _load(model_spec, structure_only=True)
    h, w = lm.input_size
    click.echo(f"# {lm.name}, input 3x{h}x{w}")
    click.echo(format_layers(trace_layers(lm.model, torch.zeros(1, 3, h, w))))


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@click.option("--top", "-k", default=5, show_default=True, type=click.IntRange(min=1), help="How many classes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def predict(images, model_spec, top, as_json, batch_size, device):
    """Print the top classes for IMAGES (files or folders): the quickest check that a model and its
    preprocessing are right."""
    import torch

    from cnnviz.errors import ImageError
    from cnnviz.images import find_images

    files = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise click.ClickException(f"no image files in folder {item!r}")
            files += found
        else:
            files.append(p)
    from cnnviz.engines.common import resolve_device

    resolve_device(device)  # a bad --device fails before the model loads
    lm = _load(model_spec)
    if top > len(lm.categories) and _given("top"):  # the default (5) is cut to a small model's classes
        from cnnviz.errors import ParameterError

        raise ParameterError(f"--top {top} is more than the {len(lm.categories)} classes of {lm.name}; use "
                             f"--top {len(lm.categories)} or less")
    skipped = 0
    for lo in range(0, len(files), batch_size):
        chunk, tensors = [], []
        for f in files[lo: lo + batch_size]:
            try:
                tensors.append(lm.prepare(f)[1])
                chunk.append(f)
            except ImageError as e:
                if len(files) == 1:
                    raise
                click.echo(f"skipped: {e}", err=True)
                skipped += 1
        if not tensors:
            continue
        for f, preds in zip(chunk, lm.predict(torch.cat(tensors), top=top, device=device)):
            if as_json:
                click.echo(json.dumps({"file": str(f), "top": [{"index": i, "name": n, "prob": round(p, 6)}
                                                                for i, n, p in preds]}))
            else:
                click.echo(f"{f}")
                for rank, (i, n, p) in enumerate(preds, 1):
                    click.echo(f"  {rank}. {n:<32} {p:6.1%}  (class {i})")
    if skipped:
        click.echo(f"{skipped} file(s) skipped", err=True)
        sys.exit(EXIT_USER_ERROR)


@cli.command()
@click.argument("image", type=click.Path())
@model_options
@click.option("--window", "-w", default="32", show_default=True, metavar="N|HxW",
              help="Occluder size in input pixels.")
@click.option("--stride", "-s", default="8", show_default=True, metavar="N|HxW",
              help="Step between occluder positions, in input pixels.")
@click.option("--fill", default="mean", show_default=True,
              help="Occluder colour: mean (gray, the dataset mean), black, white, a gray level in [0,1], "
                   "or R,G,B in [0,1].")
@click.option("--target", "-t", default=None, metavar="CLASS",
              help="Class index or name to follow [default: top-1 class of the unoccluded image].")
@click.option("--layer", "-l", default=None, metavar="NAME",
              help="Layer whose feature map is followed [default: last convolutional block]. "
                   "See `cnnviz layers`.")
@click.option("--channel", "-c", default=None, type=int,
              help="Channel of --layer [default: the one with the strongest response to the unoccluded image].")
@click.option("--batch-size", "-b", default=None, type=int,
              help="Occluded images per forward pass [default: chosen by timing the first positions at 4, 8, "
                   "16... (16, 32... on a GPU), within free memory]. Results do not depend on it on a CPU.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda.")
@click.option("--amp/--no-amp", default=None, help="float16 mixed precision on CUDA [default: on with CUDA].")
@click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
              help="Figure file; .png, .pdf or .svg [default: IMAGE-STEM_occlusion.png here].")
@click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz",
              help="Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`.")
@click.option("--full-image", is_flag=True,
              help="Draw on the whole original photo: the model's crop dashed, the rest hatched (not analysed).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@figure_options
def occlusion(image, model_spec, window, stride, fill, target, layer, channel, batch_size, device, amp, out, save,
              full_image, quiet):
    """Slide a gray square over IMAGE and re-run the network at every position (Zeiler & Fergus
    2014, Fig. 7). The figure shows the input with the occluder, the chosen feature map, its total
    activation per position, the target-class probability per position, and the most probable
    class per position.

    \b
    Example:
      cnnviz occlusion assets/rocket.jpg --window 48 --stride 8 --out fig.pdf --save occ.npz
    """
    import cnnviz
    from cnnviz.batching import summary as batch_summary
    from cnnviz.images import load_image
    from cnnviz_cli import output

    out = out or f"{Path(image).stem}_occlusion.png"
    output.check(out, save)
    win, step = _parse_pair(window, "--window"), _parse_pair(stride, "--stride")
    _check_amp(amp, device)
    from cnnviz.models import Preprocessing

    Preprocessing().fill_value(fill)  # the fill's syntax, before the model loads
    img = load_image(image)  # before the model: a bad file fails fast
    lm = _load(model_spec)
    _check_stride(win, step, lm.input_size)
    result = cnnviz.occlusion(lm, img, window=win, stride=step, fill=fill, target=target, layer=layer, channel=channel,
                              batch_size=batch_size, device=device, amp=amp, progress=False if quiet else None)
    result.params["image_file"] = str(image)
    output.write(result, out, save, echo=False, full_image=full_image)
    p = result.params
    click.echo(f"target '{p['target_name']}' (class {p['target']}): p = {p['baseline_prob']:.3f} unoccluded, "
               f"{float(result.true_class_prob.min()):.3f} at the strongest occlusion; {p['num_positions']} positions "
               f"in {p['seconds']:.1f} s on {result.provenance['device']}")
    click.echo(batch_summary(p))
    click.echo(output.wrote(out, save))


def _check_stride(window, stride, size) -> None:
    """A stride longer than the room the occluder has to move would leave it one position on that
    axis, and the rest of the image never occluded."""
    from cnnviz.errors import ParameterError

    window = window if isinstance(window, tuple) else (window, window)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    if all(wn == n for wn, n in zip(window, size)):
        raise ParameterError(f"--window {window[0]}x{window[1]} is the whole {size[0]}x{size[1]} px input: the occluder "
                             f"has one position and every map one value; use a smaller --window, e.g. "
                             f"{max(8, min(size) // 4)}")
    for axis, wn, st, n in zip(("rows", "columns"), window, stride, size):
        room = n - wn
        if 0 < room < st:
            raise ParameterError(f"--stride {st} is longer than the {room} px the {wn} px window can move over the "
                                 f"{n} px {axis} of the input: the occluder would take one position there; use "
                                 f"--stride {room} or less")


class _MethodCommand(click.Command):
    """A backprop command: an option it does not list is refused naming the command, since the
    same option may exist on a sibling (`gradcam --unit` vs `deconv --unit`)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            raise click.UsageError(f"{self.name} does not take {e.option_name}; its options: "
                                   f"`cnnviz {self.name} --help`", ctx=ctx) from None


def _gradient_command(method: str, short: str, summary: str):
    """One CLI command per backprop method. Each lists only the options its method uses: --layer
    and --unit where a unit can be projected (Grad-CAM: --layer alone), the SmoothGrad options
    where copies can be averaged; a combination the method cannot use is a one-line error before
    the model loads."""
    engine = "saliency" if method == "smoothgrad" else method
    units = engine in ("saliency", "guided", "deconv")
    layers = units or engine == "gradcam"
    smooths = engine in ("saliency", "guided", "deconv", "ig")
    always_smooth = method == "smoothgrad"

    def command(images, model_spec, target, device, out, save, shared_scale, full_image, layer=None, unit=None,
                samples=None, noise=None, seed=None, smooth=None):
        from cnnviz.engines.gradients import attribute, check_options
        from cnnviz.images import load_image
        from cnnviz_cli import output

        check_options(engine, target=target, layer=layer, unit=unit, smooth=samples or 0, noise=noise, seed=seed,
                      smooth_mode=smooth)
        out = out or f"{Path(images[0]).stem}_{method}.png"
        output.check(out, save)
        pics = [load_image(p) for p in images]
        lm = _load(model_spec)
        result = attribute(lm, pics, engine, target=target, layer=layer, unit=unit, smooth=samples or 0, noise=noise,
                           seed=seed, smooth_mode=smooth, device=device)
        result.params["image_files"] = [str(p) for p in images]
        result.params["class_names"] = {str(int(t)): lm.class_name(int(t)) for t in result.top1}
        output.write(result, out, save, echo=False, shared_scale=shared_scale, full_image=full_image)
        for f, t in zip(images, result.target_names):
            click.echo(f"{f}: {method} for {t}")
        if result.params.get("uninformative"):
            click.echo(f"note: uninformative map: {result.params['uninformative_reason']}")
        click.echo(output.wrote(out, save))

    options = [
        click.argument("images", nargs=-1, required=True, type=click.Path()),
        model_options,
        click.option("--target", "-t", default=None, metavar="CLASS",
                     help="Class index or name [default: each image's top-1 class]."
                          + (" Not with --unit." if units else "")),
    ]
    if units:
        options += [
            click.option("--layer", "-l", default=None, metavar="NAME",
                         help="The layer of --unit (needed with --unit, refused without). See `cnnviz layers`."),
            click.option("--unit", "-u", default=None, metavar="C[:max|:map|:Y,X]",
                         help="Project a unit of --layer instead of a class: channel C at its strongest activation "
                              "(C or C:max), the whole map (C:map) or one position (C:Y,X)."),
        ]
    elif layers:
        options.append(click.option("--layer", "-l", default=None, metavar="NAME",
                                    help="Grad-CAM's layer [default: last convolutional block]. See `cnnviz layers`."))
    if smooths:
        if always_smooth:
            options.append(click.option("--samples", default=25, show_default=True, type=click.IntRange(min=1),
                                        help="Noisy copies of each image to average over."))
        else:
            options.append(click.option("--samples", default=None, type=click.IntRange(min=1), metavar="N",
                                        help="SmoothGrad: average over N noisy copies of each image [default: off]."))
        options += [
            click.option("--noise", default=None, type=float, metavar="STD",
                         help="SmoothGrad noise std, as a fraction of the input's range [default: 0.15]"
                              + ("" if always_smooth else "; needs --samples") + "."),
            click.option("--seed", default=None, type=int,
                         help="Seed of the SmoothGrad noise [default: 0]" + ("" if always_smooth else "; needs --samples")
                              + "."),
        ]
        if engine not in ("ig",):
            options.append(click.option(
                "--smooth", default=None, type=click.Choice(["mean", "mean-abs"]),
                help="How the copies are averaged: mean = signed signals averaged, |.| taken for the map (Smilkov "
                     "et al. 2017, Eq. 3) [default]; mean-abs = |signal| averaged (captum's NoiseTunnel; steadier "
                     "from seed to seed)" + ("" if always_smooth else "; needs --samples") + "."))
    options += [
        click.option("--shared-scale", is_flag=True, help="One colour scale for all images."),
        click.option("--full-image", is_flag=True,
                     help="Draw on the whole original photos: the model's crop dashed, the rest hatched (not analysed)."),
        click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda."),
        click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                     help=f"Figure file: .png, .pdf or .svg [default: FIRST-IMAGE-STEM_{method}.png here]."),
        click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz",
                     help="Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`."),
        figure_options,
    ]
    for decorate in reversed(options):
        command = decorate(command)
    command.__doc__ = summary
    return cli.command(name=method, short_help=short, cls=_MethodCommand)(command)


_gradient_command("saliency", "Saliency map: gradient of the class score w.r.t. the pixels.", """Gradient of the class score w.r.t. the pixels (Simonyan et al. 2014): the map is
    the maximum of |gradient| over colour channels. IMAGES are processed in one batch.""")
_gradient_command("guided", "Guided backprop map.", """Guided backprop (Springenberg et al. 2015): the gradient with only positive
    signals passed through each rectifier (ReLU, ReLU6, LeakyReLU, Hardtanh, also F.relu).""")
_gradient_command("deconv", "Zeiler-Fergus deconvnet projection of a class or a unit.", """Zeiler & Fergus deconvnet: project a class score or a unit (--layer L --unit C)
    back to pixels through rectification, unpooling with switches and transposed filters. Only the
    max-pool switches carry the image into it: on a model without max pooling (EfficientNet-Lite)
    every image gets the same map, and the output and the figure say so.""")
_gradient_command("smoothgrad", "Saliency averaged over noisy copies of the image.", """SmoothGrad (Smilkov et al. 2017): the saliency map averaged over noisy copies
    of the image (--samples, default 25; --noise; --smooth mean, the paper's signed average, or
    mean-abs, captum's average of magnitudes).""")
_gradient_command("gradcam", "Grad-CAM heat map of a class.", """Grad-CAM (Selvaraju et al. 2017): feature maps of --layer weighted by the
    mean gradient of the class score, rectified and upsampled to the image.""")
_gradient_command("ig", "Integrated Gradients (signed map).", """Integrated Gradients (Sundararajan et al. 2017, via captum) from a black image:
    a signed map (diverging colours, centred on zero).""")


def _methods(text: str) -> list[str]:
    from cnnviz.engines.gradients import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise click.BadParameter(f"{', '.join(bad) or text!r} not known; choose from {', '.join(METHODS)}",
                                 param_hint="--methods")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise click.BadParameter(f"{', '.join(twice)} given twice", param_hint="--methods")
    return names


@cli.command(short_help="Several attribution methods side by side for one image.")
@click.argument("image", type=click.Path())
@model_options
@click.option("--methods", default="saliency,guided,deconv,gradcam,ig", show_default=True,
              help="Comma-separated: saliency, guided, deconv, gradcam, guided_gradcam, ig.")
@click.option("--target", "-t", default=None, metavar="CLASS", help="Class index or name [default: top-1].")
@click.option("--layer", "-l", default=None, metavar="NAME", help="Grad-CAM's layer [default: last conv block].")
@click.option("--shared-scale", is_flag=True, help="One colour scale for all methods.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
              help="Figure file: .png, .pdf or .svg [default: IMAGE-STEM_compare.png here].")
@figure_options
def compare(image, model_spec, methods, target, layer, shared_scale, device, out):
    """Draw several attribution maps of IMAGE side by side, for the same class."""
    from cnnviz.engines.gradients import attribute
    from cnnviz.files import FIGURE_SUFFIXES, check_output
    from cnnviz.images import load_image
    from cnnviz.render.gradients import compare_figure
    from cnnviz.render.style import save_figure

    from cnnviz.engines.gradients import CAM

    names = _methods(methods)
    if layer is not None and not any(m in CAM for m in names):
        raise click.BadParameter(f"{layer!r} is Grad-CAM's layer, but --methods has no gradcam or guided_gradcam; "
                                 "drop --layer", param_hint="--layer")
    out = check_output(out or f"{Path(image).stem}_compare.png", FIGURE_SUFFIXES)
    pic = load_image(image)
    lm = _load(model_spec)
    results = [attribute(lm, pic, m, target=target, layer=layer if m in CAM else None, device=device)
               for m in names]
    from cnnviz_cli import output

    for r in results:
        r.params["class_names"] = {str(int(t)): lm.class_name(int(t)) for t in r.top1}
    fig = compare_figure(results, shared_scale=shared_scale, **output.style())
    save_figure(fig, out)
    for r in results:
        if r.params.get("uninformative"):
            click.echo(f"note: uninformative {r.params['method']} map: {r.params['uninformative_reason']}")
    click.echo(f"wrote {out}")
    import matplotlib.pyplot as plt

    plt.close(fig)


@cli.command(short_help="Do the maps depend on the weights? (Adebayo et al. 2018)")
@click.argument("image", type=click.Path())
@model_options
@click.option("--methods", default="saliency,guided,gradcam", show_default=True,
              help="Comma-separated methods to check.")
@click.option("--steps", default=8, show_default=True, type=click.IntRange(min=1),
              help="Cumulative randomization steps, from the top layer down.")
@click.option("--classes", default=4, show_default=True, type=click.IntRange(min=0),
              help="Class randomization: compare the top-1 map with the maps for this many other classes "
                   "(the runner-up, then random ones); 0: off.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random weights and classes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
              help="Figure file: .png, .pdf or .svg [default: IMAGE-STEM_sanity.png here].")
@click.option("--save", default=None, type=click.Path(), metavar="RESULT.npz", help="Also save the result.")
@figure_options
def sanity(image, model_spec, methods, steps, classes, seed, device, out, save):
    """Randomize the model's layers cumulatively from the top (on a copy) and report, per step and
    method, the Spearman rank correlation between the original map and the randomized model's map
    (Adebayo et al. 2018). A method whose correlation stays high shows the image, not the model.

    Then the class-randomization test: each method's map for the top-1 class against its maps for
    other classes (Spearman ρ and Pearson r). A method whose maps stay the same for every class
    does not explain the class decision."""
    from cnnviz.engines.sanity import sanity as run_sanity
    from cnnviz.images import load_image
    from cnnviz_cli import output

    names = _methods(methods)
    out = out or f"{Path(image).stem}_sanity.png"
    output.check(out, save)
    pic = load_image(image)
    lm = _load(model_spec)
    result = run_sanity(lm, pic, methods=tuple(names), seed=seed, device=device, steps=steps, classes=classes)
    output.write(result, out, save, echo=False)
    w = max(len(str(s)) for s in result.steps)
    click.echo(f"{'randomized down to':<{w}}  " + "  ".join(f"{m:>9}" for m in result.methods))
    for j, step in enumerate(result.steps):
        click.echo(f"{str(step):<{w}}  " + "  ".join(f"{result.spearman[i, j]:>9.3f}"
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
    click.echo(output.wrote(out, save))


@cli.command()
@click.argument("result", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), metavar="FIG", help="Figure file: .png, .pdf or .svg.")
@click.option("--full-image", is_flag=True,
              help="Occlusion and backprop results: draw on the whole original photo (crop dashed, rest hatched).")
@figure_options
def render(result, out, full_image):
    """Redraw a figure from a saved result (RESULT.npz + its .json sidecar) without recomputing,
    e.g. at another --width for a one-column figure."""
    from cnnviz.errors import CnnvizError, ResultError
    from cnnviz.files import FIGURE_SUFFIXES, check_output
    from cnnviz.results import load_result

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


def _register_modules():
    # commands that live in their own modules of this package
    from cnnviz_cli.experiments import register as register_experiments
    from cnnviz_cli.featvis import register as register_featvis
    from cnnviz_cli.filters import register as register_filters
    from cnnviz_cli.rf import register as register_rf
    from cnnviz_cli.topk import register as register_topk

    register_filters(cli)
    register_rf(cli)
    register_topk(cli)
    register_featvis(cli)
    register_experiments(cli)


_register_modules()
if _sigint_before is not None:
    signal.signal(signal.SIGINT, _sigint_before)


def _defer_interrupt(unraisable, _default=sys.unraisablehook):
    """A Ctrl-C that lands where Python cannot raise it (a weakref callback of importlib's module
    locks, a __del__) would be printed as "Exception ignored ... Traceback" and then lost. Deliver it
    again from a helper thread instead: it arrives in the main thread once the callback is over, where
    the command's cleanups run and it ends as `Aborted.` with status 130."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread
        import time

        def later():  # a bare thread: threading.Thread.start() would wait here, where it would land again
            time.sleep(0.01)
            _thread.interrupt_main()

        _thread.start_new_thread(later, ())
        return
    _default(unraisable)


def main():
    def terminate(signum, frame):  # kill / a scheduler's SIGTERM ends like Ctrl-C: cleanups run, exit 130
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    sys.unraisablehook = _defer_interrupt
    try:
        cli(prog_name="cnnviz")
    except KeyboardInterrupt:  # between the imports and the command (parsing): as within a command
        click.echo("Aborted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
