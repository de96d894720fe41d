"""`cnnviz featvis`, `dream`, `classviz`, `invert`: feature visualization. Wire with `register(cli)`.

Every command checks its output paths and option values before the model loads and the
optimization starts, so a bad value fails in a second with one line and writes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cnnviz_cli.options import result_options, use

PRIORS = click.Choice(["full", "none"])
SIZE = click.IntRange(16, 4096)


def _model_stem(model_spec: dict) -> str:
    return Path(model_spec["name"]).name.replace(":", "_")


def _require(value, option: str, what: str):
    if not value:
        raise click.UsageError(f"{option} is required: {what}")
    return value


def _outputs(out: str, save: str | None):
    from cnnviz_cli.output import check

    check(out, save)


def _finish(result, out: str, save: str | None, columns, history, summary: str) -> None:
    """Draw, write the figure and the result together, and report."""
    from cnnviz_cli.output import wrote, write

    write(result, out, save, echo=False, columns=columns, history=history)
    click.echo(summary)
    click.echo(wrote(out, save))


def _split(values) -> list[str]:
    return [s.strip() for v in values for s in str(v).split(",") if s.strip()]


def _no_repeats(items, option: str, shown=str) -> None:
    """The same unit, class or layer twice would only draw the same image twice."""
    from cnnviz.errors import ParameterError

    seen = set()
    for item in items:
        if item in seen:
            raise ParameterError(f"{option} names {shown(item)} twice; give each once")
        seen.add(item)


def _range_text(units: list[int]) -> str:
    if len(units) > 1 and units == list(range(units[0], units[-1] + 1)):
        return f"units {units[0]}-{units[-1]}"
    shown = ", ".join(map(str, units[:6])) + (", ..." if len(units) > 6 else "")
    return f"unit{'s' if len(units) > 1 else ''} {shown}"


def optimization_options(f):
    """Options shared by `featvis` and `classviz`: the optimization, the priors, the outputs."""
    options = [
        click.option("--steps", default=256, show_default=True, type=click.IntRange(min=1, max=100_000),
                     help="Gradient steps (Adam)."),
        click.option("--size", default=None, type=SIZE, metavar="N",
                     help="Image side in pixels [default: the model's input size]."),
        click.option("--priors", default="full", show_default=True, type=PRIORS,
                     help="full: Fourier 1/f parameterization, decorrelated colour and random pad, jitter, scale "
                          "and rotation every step (Olah et al. 2017); none: plain pixels, no transforms."),
        click.option("--param", default=None, type=click.Choice(["fourier", "pixel"]),
                     help="Override the parameterization chosen by --priors."),
        click.option("--transforms", default=None, metavar="SPEC",
                     help="Override the random transforms: standard, none, or e.g. "
                          "pad=16,jitter=8,scale=0.9-1.1,rotate=10 (missing keys: off)."),
        click.option("--lr", default=0.05, show_default=True, type=float, help="Adam learning rate."),
        click.option("--l2-decay", default=0.0, show_default=True, type=float,
                     help="Yosinski et al. 2015: shrink pixels towards the mean colour by this fraction each "
                          "step (pixel parameterization only; 0.0001-0.01 is usual)."),
        click.option("--blur-every", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Yosinski: Gaussian blur every this many steps (0: off; pixels only)."),
        click.option("--blur-sigma", default=0.5, show_default=True, type=float,
                     help="Yosinski: blur width in pixels."),
        click.option("--clip-percentile", default=0.0, show_default=True, type=float,
                     help="Yosinski: reset pixels whose colour norm is below this percentile (0: off; pixels only)."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed of the starting noise and transforms."),
        use("batch_size", batch_size={"help": "Optimize at most N images at once (less memory); batch k is seeded "
                                              "with --seed + k [default: all images in one batch]."}),
        use("device"),
        use("amp"),
        click.option("--columns", default=None, type=click.IntRange(min=1), metavar="N",
                     help="Images per row of the figure [default: up to 8]."),
        click.option("--history", is_flag=True, help="Add a plot of the objective against the step to the figure."),
        use("save"),
        use("quiet"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _check_optimization(o: dict) -> None:
    """The option values the engine would reject only after loading the model, rejected now."""
    from cnnviz.engines.featvis import Regularizers, Transforms
    from cnnviz.errors import ParameterError

    if o["lr"] <= 0:
        raise ParameterError(f"--lr {o['lr']:g} must be positive")
    if o["transforms"] is not None:
        Transforms.parse(o["transforms"])
    regs = Regularizers(o["l2_decay"], o["blur_every"], o["blur_sigma"], o["clip_percentile"])
    regs.check()
    param = o["param"] or ("fourier" if o["priors"] == "full" else "pixel")
    if regs.active and param != "pixel":
        raise ParameterError("--l2-decay, --blur-every and --clip-percentile act on plain pixels, not on the "
                             f"{param} parameterization: add --param pixel")
    from cnnviz_cli.main import _check_amp, _given, _reject

    if not o["blur_every"]:
        _reject(_given("blur_sigma"), "without --blur-every N (the blur is off)")
    _check_amp(o["amp"], o["device"])


def _engine_options(o: dict) -> dict:
    return dict(steps=o["steps"], size=o["size"], priors=o["priors"], param=o["param"], transforms=o["transforms"],
                lr=o["lr"], l2_decay=o["l2_decay"], blur_every=o["blur_every"], blur_sigma=o["blur_sigma"],
                clip_percentile=o["clip_percentile"], seed=o["seed"], batch_size=o["batch_size"],
                device=o["device"], amp=o["amp"],
                progress=False if o["quiet"] else None)


def register(cli):
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.main import _check_amp, _given, _no_labels, _reject, model_options
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="Images that drive units of a layer (feature visualization).")
    @model_options
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Layer whose units to draw (required). `cnnviz layers` lists them.")
    @click.option("--units", "-u", default="0:8", show_default=True, metavar="A:B|I,J,...",
                  help="Units (channels) of --layer: 5, 0:16 (start:stop) or 3,7,9; one image each.")
    @click.option("--neuron", is_flag=True,
                  help="Maximize each unit at the centre of its map instead of the mean of the whole map.")
    @click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                  help="Figure file: .png, .pdf or .svg [default: MODEL_featvis.png here].")
    @optimization_options
    @figure_options
    def featvis(model_spec, layer, units, neuron, out, **o):
        """Optimize one image per unit of --layer, all in one batch, so that the unit's mean
        activation (or, with --neuron, its activation at the centre of the map) is as large as
        possible. With --priors full (the default) the image is a Fourier spectrum with decorrelated
        colour seen through random transforms (Olah et al. 2017); --priors none ascends plain pixels.

        \b
        Example:
          cnnviz featvis --layer _blocks.6 --units 0:8 --steps 256 --out units.pdf --save units.npz
        """
        from cnnviz.engines.featvis import parse_units, visualize_units
        from cnnviz.render.featvis import sig

        _require(layer, "--layer", f"name the layer whose units to draw, e.g. --layer _blocks.6; "
                                   f"`cnnviz layers --model {model_spec['name']}` lists every layer")
        _no_labels(model_spec, "featvis")
        out = out or f"{_model_stem(model_spec)}_featvis.png"
        _outputs(out, o["save"])
        _no_repeats(parse_units(units), "--units", lambda u: f"unit {u}")  # syntax errors before the model loads
        _check_optimization(o)
        lm = _main._load(model_spec)
        t0 = time.perf_counter()
        result = visualize_units(lm, layer, units, neuron_centre=neuron, **_engine_options(o))
        seconds = time.perf_counter() - t0
        p = result.params
        s = result.score
        reached = sig(s[0]) if len(s) == 1 else f"{sig(s.min())} to {sig(s.max())}"
        from cnnviz.layers import readable_name

        summary = (f"{readable_name(p['layer'], p.get('layer_type'))}, {_range_text(p['units'])}: {p['score_label']} {reached} after {p['steps']} steps "
                   f"(priors {p['priors']}, {p['param']}) in {seconds:.1f} s on {result.provenance['device']}")
        _finish(result, out, o["save"], o["columns"], o["history"], summary)

    @cli.command(short_help="Class models: images scored as a class (Simonyan et al. 2014).")
    @model_options
    @click.option("--target", "-t", multiple=True, metavar="CLASS",
                  help="Class name or index; repeat it or separate with commas for several (one image each).")
    @click.option("--prob", is_flag=True,
                  help="Maximize the softmax probability instead of the logit (can win by pushing the other "
                       "classes down).")
    @click.option("--out", "-o", default=None, type=click.Path(), metavar="FIG",
                  help="Figure file: .png, .pdf or .svg [default: MODEL_classviz.png here].")
    @optimization_options
    @figure_options
    def classviz(model_spec, target, prob, out, **o):
        """Optimize one image per --target class so that the network's score for the class (its
        logit, or with --prob its probability) is as large as possible. The figure prints the
        probability the model gives each final image for its class.

        \b
        Example:
          cnnviz classviz --target goldfinch --target 'tree frog' --steps 256 --out classes.png
        """
        from cnnviz.engines.featvis import visualize_classes
        from cnnviz.errors import ParameterError
        from cnnviz.render.featvis import score_text

        _require(target, "--target", "a class name or index, e.g. --target goldfinch --target 11")
        out = out or f"{_model_stem(model_spec)}_classviz.png"
        _outputs(out, o["save"])
        _check_optimization(o)
        lm = _main._load(model_spec)
        lowered = {c.lower() for c in lm.categories}
        names = []
        for t in target:  # a class name holding a comma stays whole
            names += [t.strip()] if t.strip().lower() in lowered else _split([t])
        if not names:
            raise ParameterError("--target holds no class; give a class name or index")
        classes = [lm.class_index(t) for t in names]
        _no_repeats(classes, "--target", lambda c: f"class {c} ({lm.class_name(c)})")
        t0 = time.perf_counter()
        result = visualize_classes(lm, classes, prob=prob, **_engine_options(o))
        seconds = time.perf_counter() - t0
        p = result.params
        each = ", ".join(f"{lm.class_name(c)} ({c}) {score_text('probability', v)}"
                         for c, v in zip(classes, result.score))
        summary = (f"class models ({p['objective_kind']}): {each} after {p['steps']} steps in {seconds:.1f} s "
                   f"on {result.provenance['device']}")
        _finish(result, out, o["save"], o["columns"], o["history"], summary)

    @cli.command(short_help="DeepDream: amplify what a layer sees in an image.")
    @click.argument("image", type=click.Path())
    @model_options
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Layer whose activations to amplify (required). `cnnviz layers` lists them.")
    @click.option("--octaves", default=4, show_default=True, type=click.IntRange(min=1, max=12),
                  help="Levels of the image pyramid, smallest first.")
    @click.option("--octave-scale", default=1.4, show_default=True, type=float,
                  help="Size ratio between neighbouring octaves (> 1).")
    @click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1, max=10_000),
                  help="Gradient steps per octave.")
    @click.option("--step-size", default=0.01, show_default=True, type=float,
                  help="Step in [0, 1] pixel units, along the gradient divided by its mean size.")
    @click.option("--jitter", default=32, show_default=True, type=click.IntRange(min=0),
                  help="Random shift of up to this many pixels before each step.")
    @click.option("--size", default=None, type=SIZE, metavar="N",
                  help="Shorter side of the image in pixels (the whole image, not cropped) "
                       "[default: the model's input size].")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of the jitter.")
    @use("device")
    @use("amp")
    @click.option("--history/--no-history", default=True, show_default=True,
                  help="Plot the objective against the step under the images.")
    @result_options("IMAGE-STEM_dream.png")
    @use("quiet")
    @figure_options
    def dream(image, model_spec, layer, octaves, octave_scale, steps, step_size, jitter, size, seed, device, amp,
              history, out, save, quiet):
        """DeepDream (Mordvintsev et al. 2015): change IMAGE so that the squared activations of
        --layer grow, over an image pyramid of --octaves levels with random jitter. Low layers
        paint strokes and textures, higher ones eyes, fur and animal parts.

        \b
        Example:
          cnnviz dream assets/rocket.jpg --layer _blocks.8 --octaves 4 --steps 10 --out dream.png
        """
        from cnnviz.engines.featvis import deep_dream
        from cnnviz.render.featvis import sig
        from cnnviz.errors import ParameterError
        from cnnviz.images import load_image

        _require(layer, "--layer", f"name the layer to amplify, e.g. --layer _blocks.8; "
                                   f"`cnnviz layers --model {model_spec['name']}` lists every layer")
        out = out or f"{Path(image).stem}_dream.png"
        _outputs(out, save)
        if octave_scale <= 1.0:
            raise ParameterError(f"--octave-scale {octave_scale:g} must be larger than 1 (1.4 is usual)")
        if step_size <= 0:
            raise ParameterError(f"--step-size {step_size:g} must be positive (0.01 is usual)")
        if octaves == 1:
            _reject(_given("octave_scale"), "with --octaves 1 (one scale, no pyramid)")
        _no_labels(model_spec, "dream")
        _check_amp(amp, device)
        pic = load_image(image)  # before the model: a bad file fails fast
        lm = _main._load(model_spec)
        t0 = time.perf_counter()
        result = deep_dream(lm, pic, layer, size=size, octaves=octaves, octave_scale=octave_scale, steps=steps,
                            step_size=step_size, jitter=jitter, seed=seed, device=device, amp=amp,
                            progress=False if quiet else None)
        seconds = time.perf_counter() - t0
        result.params["image_file"] = str(image)
        p = result.params
        h, w = p["size"]
        from cnnviz.layers import readable_name

        summary = (f"dream at {readable_name(p['layer'], p.get('layer_type'))}: {p['score_label']} {sig(p['start_objective'])} -> "
                   f"{sig(result.score[0])} ({octaves} octaves x {steps} steps, {h}x{w} px) in {seconds:.1f} s "
                   f"on {result.provenance['device']}")
        _finish(result, out, save, None, history, summary)

    @cli.command(short_help="Reconstruct an image from a layer (Mahendran & Vedaldi 2015).")
    @click.argument("image", type=click.Path())
    @model_options
    @click.option("--layer", "-l", "layers", multiple=True, metavar="NAME",
                  help="Layer to invert (required); repeat it or separate with commas for several "
                       "(one reconstruction each).")
    @click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1, max=100_000),
                  help="Gradient steps (Adam).")
    @click.option("--priors", default="full", show_default=True, type=PRIORS,
                  help="full: Fourier parameterization with decorrelated colour, total variation, alpha-norm "
                       "and a 4-pixel jitter; none: plain pixels and the feature distance alone.")
    @click.option("--param", default=None, type=click.Choice(["pixel", "fourier"]),
                  help="Parameterization of the image [default: fourier with full priors, pixel without].")
    @click.option("--transforms", default=None, metavar="SPEC",
                  help="Override the random transforms: none, standard, or e.g. jitter=2 "
                       "[default: jitter=4 with full priors, none without].")
    @click.option("--lr", default=None, type=float, help="Adam learning rate [default: 0.02 pixel, 0.05 fourier].")
    @click.option("--tv", default=2.0, show_default=True, type=click.FloatRange(min=0),
                  help="Weight of the total-variation prior.")
    @click.option("--beta", default=2.0, show_default=True, type=float, help="Power of the total variation.")
    @click.option("--alpha", default=6.0, show_default=True, type=float, help="Power of the alpha-norm prior.")
    @click.option("--alpha-weight", default=0.1, show_default=True, type=click.FloatRange(min=0),
                  help="Weight of the alpha-norm prior.")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of the starting noise.")
    @use("device")
    @use("amp")
    @click.option("--columns", default=None, type=click.IntRange(min=1), metavar="N",
                  help="Images per row of the figure [default: up to 8].")
    @click.option("--history", is_flag=True, help="Add a plot of the objective against the step to the figure.")
    @result_options("IMAGE-STEM_invert.png")
    @use("quiet")
    @figure_options
    def invert(image, model_spec, layers, steps, priors, param, transforms, lr, tv, beta, alpha, alpha_weight, seed,
               device, amp, columns, history, out, save, quiet):
        """Start from noise and change it until its representation at each --layer matches that
        of IMAGE (its input crop): what the layer keeps of the image, and what it throws away.
        The figure prints each reconstruction's relative feature distance (0: identical).

        \b
        Example:
          cnnviz invert assets/cat.jpg --layer _blocks.2,_blocks.6,_blocks.12 --steps 300 --out cat_inv.png
        """
        from cnnviz.engines.featvis import Transforms, invert as run_invert
        from cnnviz.errors import ParameterError
        from cnnviz.images import load_image

        names = _split(layers)
        _require(names, "--layer", f"name the layer(s) to invert, e.g. --layer _blocks.2,_blocks.6; "
                                   f"`cnnviz layers --model {model_spec['name']}` lists every layer")
        _no_repeats(names, "--layer", lambda n: f"layer {n!r}")
        out = out or f"{Path(image).stem}_invert.png"
        _outputs(out, save)
        if transforms is not None:
            Transforms.parse(transforms)
        if lr is not None and lr <= 0:
            raise ParameterError(f"--lr {lr:g} must be positive")
        for name, v in (("--beta", beta), ("--alpha", alpha)):
            if v <= 0:
                raise ParameterError(f"{name} {v:g} must be positive (--beta 2 and --alpha 6 are usual)")
        if priors == "none":
            _reject(_given("tv", "beta", "alpha", "alpha_weight"),
                    "with --priors none (no total variation, no alpha-norm)")
        if tv == 0:
            _reject(_given("beta"), "with --tv 0 (the total-variation prior is off)")
        if alpha_weight == 0:
            _reject(_given("alpha"), "with --alpha-weight 0 (the alpha-norm prior is off)")
        _no_labels(model_spec, "invert")
        _check_amp(amp, device)
        pic = load_image(image)  # before the model: a bad file fails fast
        lm = _main._load(model_spec)
        t0 = time.perf_counter()
        result = run_invert(lm, pic, names, steps=steps, priors=priors, param=param, transforms=transforms, lr=lr,
                            tv=tv, beta=beta, alpha=alpha, alpha_weight=alpha_weight, seed=seed, device=device,
                            amp=amp, progress=False if quiet else None)
        seconds = time.perf_counter() - t0
        result.params["image_file"] = str(image)
        p = result.params
        each = ", ".join(f"{n} {float(d):.3f} (noise {s:.3f})"
                         for n, d, s in zip(p["layers"], result.score, p["start_distance"]))
        summary = (f"relative feature distance: {each} after {steps} steps (priors {priors}) in {seconds:.1f} s "
                   f"on {result.provenance['device']}")
        _finish(result, out, save, columns, history, summary)

    return cli
