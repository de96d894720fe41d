"""Commands for the experiments of the papers beyond the single-image maps: `cnnviz invariance`
(Zeiler & Fergus Fig. 5), `cnnviz correspondence` (ZF Table 1), `cnnviz evolution` (ZF Fig. 4) and
`cnnviz simplify` (Zhou et al. 2015, Fig. 2). Wire with `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import result_options, use

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
    @result_options("FIRST-IMAGE-STEM_invariance.png")
    @figure_options
    def invariance(images, model_spec, transforms, layers, target, device, out, save):
        """Transform each image over the ranges of Zeiler & Fergus Fig. 5 (vertical shifts of -60..60
        pixels, scales 1..1.8, rotations 0..350 degrees, inside the model's input crop, new pixels
        gray) and plot, per transform, the relative distance ||f(Tx) - f(x)|| / ||f(x)|| of each
        layer's features and the probability of the image's class, one curve per image."""
        import numpy as np

        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.experiments.invariance import invariance as run
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

    @cli.command(short_help="Does occluding the same part change the features alike across images? (ZF Table 1)")
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @click.option("--parts", "parts_file", required=True, type=click.Path(), metavar="PARTS.json",
                  help='Boxes of each part in each image, in the photo\'s pixels: {"dog1.jpg": {"left eye": '
                       '[x0, y0, x1, y1], "nose": [...]}, "dog2.jpg": {...}}; every image names the same parts.')
    @click.option("--layers", default=None, metavar="L1,L2",
                  help="Layers whose feature changes are compared [default: the last convolutional block and the "
                       "features entering the last linear layer, as ZF's layers 5 and 7]. See `cnnviz layers`.")
    @click.option("--draws", default=20, show_default=True, type=click.IntRange(min=2, max=1000),
                  help="Random draws of boxes of the parts' size (the random row and its spread).")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random boxes.")
    @click.option("--random-within", default=None, metavar="PART",
                  help="A part of the parts file (e.g. head) whose box bounds the random boxes, as ZF drew random "
                       "parts of the object; it is not a row of the table [default: anywhere in the crop].")
    @use("fill")
    @click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda.")
    @result_options("FIRST-IMAGE-STEM_correspondence.png")
    @figure_options
    def correspondence(images, model_spec, parts_file, layers, draws, seed, random_within, fill, device, out, save):
        """Occlude each part (e.g. the left eye) in every image and measure how consistently the sign
        of the feature change agrees across image pairs, Zeiler & Fergus' Delta = sum over pairs i != j
        of the Hamming distance between sign(x_i - x~_i) and sign(x_j - x~_j), as a share of the
        features; compare with boxes of the same size placed at random. Lower = the layer changes
        alike wherever the part is: an implicit correspondence."""
        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.experiments.correspondence import correspondence as run, read_parts
        from cnnviz.images import load_image
        from cnnviz_cli import output

        layer_list = _names(layers, "layer") if layers is not None else None
        out = out or f"{Path(images[0]).stem}_correspondence.png"
        output.check(out, save)
        resolve_device(device)
        if len(images) < 2:
            from cnnviz.errors import ParameterError

            raise ParameterError(f"one image given; correspondence compares images in pairs, give at least 2 "
                                 "(Zeiler & Fergus used 5)")
        for p in images:  # unreadable images: one line before the model loads
            load_image(p)
        parts = read_parts(parts_file, list(images))  # a bad parts file too
        if random_within is not None and random_within not in parts:
            from cnnviz.errors import ParameterError

            raise ParameterError(f"--random-within {random_within!r} is not a part of {parts_file!r}, which names "
                                 f"{', '.join(repr(n) for n in parts)}")
        lm = _main._load(model_spec)
        result = run(lm, [str(p) for p in images], parts, layers=layer_list, draws=draws, seed=seed, fill=fill,
                     random_within=random_within, device=device)
        output.write(result, out, save, echo=False)
        p = result.params
        labels = list(p["parts"]) + ["random"]
        w = max(len(x) for x in labels)
        heads = list(p.get("layer_labels") or p["layers"])  # each layer by what and where
        cw = max([22] + [len(a) for a in heads])
        click.echo(f"{'Delta':<{w}}  " + "  ".join(f"{a:>{cw}}" for a in heads))
        for k, name in enumerate(labels):
            cells = [f"{result.delta[k, li]:.4f} +- {result.spread[k, li]:.4f}"
                     + (f" p={result.p_value[k, li]:.2f}" if k < len(p["parts"]) else "")
                     for li in range(len(p["layers"]))]
            click.echo(f"{name:<{w}}  " + "  ".join(f"{c:>{cw}}" for c in cells))
        click.echo(output.wrote(out, save))

    @cli.command(short_help="Each unit's strongest activation at each training checkpoint, projected (ZF Fig. 4).")
    @click.argument("args", nargs=-1, required=True, type=click.Path(), metavar="[CHECKPOINTS]... DATA")
    @model_options(weights_from="--checkpoints")
    @click.option("--checkpoints", "patterns", multiple=True, metavar="'ckpt_*.pt'",
                  help="State dicts saved during training, for the architecture of --model (a glob pattern, quoted "
                       "or not, or files; repeatable); natural order (ckpt_2 before ckpt_10) is training order.")
    @click.option("--layer", "-l", required=True, metavar="NAME", help="Layer whose units are followed. See `cnnviz layers`.")
    @click.option("--units", "-u", default="0:8", show_default=True, metavar="A:B|I,J,...",
                  help="Channels of --layer, one row each.")
    @click.option("--input-size", default=None, metavar="N|HxW",
                  help="The model's input size, for your own small models (the images are resized to it) "
                       "[default: the model's own, 224 for a factory].")
    @use("batch_size", batch_size={"help": "Images per forward pass [default: chosen by measuring; 32 with --save, "
                                           "whose progress files count batches of one size]."})
    @use("device")
    @result_options("evolution_LAYER.png", progress="progress goes to RESULT.npz.partial meanwhile, and a rerun "
                                                     "resumes from it.")
    @click.option("--patches", is_flag=True, help="Show each activation's image patch beside its projection.")
    @click.option("--projection", type=click.Choice(["auto", "deconv", "guided"]), default="auto", show_default=True,
                  help="auto: the deconvnet, or guided backprop where cnnviz's check (at the first checkpoint) finds "
                       "that the deconvnet's projections do not depend on the image; the figure says which.")
    @click.option("--crop", type=click.Choice(["auto", "rf", "activation"]), default="auto", show_default=True,
                  help="rf: the theoretical receptive field; activation: where the unit's upsampled map is >= half "
                       "its peak; auto: rf where it fits in the image, else activation.")
    @use("quiet")
    @figure_options
    def evolution(args, model_spec, patterns, layer, units, input_size, batch_size, device, out, save, resume,
                  patches, projection, crop, quiet):
        """For each checkpoint (in training order), scan DATA (a folder, class folders or a CSV) for
        the strongest activation of each unit of --layer and project it to pixels (the deconvnet, or
        guided backprop where the deconvnet shows no image: --projection), as `cnnviz topk --figure`
        does with k = 1; draw one row per unit, one column per checkpoint.

        \b
        Example:
          cnnviz evolution --model net.py:make_net --checkpoints 'ckpt_*.pt' --layer features.3 \\
              --units 0:8 --input-size 32 digits/
        """
        import dataclasses

        from cnnviz.engines.experiments.evolution import evolution as run, find_checkpoints, load_checkpoint_into
        from cnnviz.engines.units.topk import check_units, list_files
        from cnnviz.errors import ParameterError
        from cnnviz.files import check_output
        from cnnviz_cli import output

        data, extra = args[-1], list(args[:-1])
        if not patterns and not extra:
            raise ParameterError("no checkpoints given; pass --checkpoints 'ckpt_*.pt' (state dicts saved during "
                                 "training) before DATA")
        weights = model_spec["weights"] if (model_spec["weights"] or "none").lower() != "none" else None
        _main._reject([n for n, v in (("weights", weights), ("weights_file", model_spec["weights_file"])) if v],
                      "on `cnnviz evolution`, whose weights come from --checkpoints")
        check_units(units)
        out = out or f"evolution_{layer.replace('/', '_')}.png"
        output.check(out, save)
        if save:
            check_output(Path(f"{save}.partial"), (".partial",))
            output.keeps_progress(Path(f"{save}.partial"))
        paths = find_checkpoints(list(patterns) + extra)  # nothing matched: one line before the model loads
        list_files(data)  # an empty or missing folder too
        lm = _main._load({**model_spec, "trust_checkpoint": False}, structure_only=True)  # for the checkpoints
        if input_size is not None:
            size = _main._parse_pair(input_size, "--input-size")
            h, w = (size, size) if isinstance(size, int) else size
            lm.preprocessing = dataclasses.replace(lm.preprocessing, crop=(h, w), resize=min(h, w))
        load_checkpoint_into(lm, paths[0], model_spec["trust_checkpoint"])  # the first misfit before the scans

        def said(c, total, row):
            click.echo(f"{paths[c].name} ({c + 1}/{total}): strongest "
                       + ", ".join(f"{int(u)}: {v:.3g}" for u, v in zip(row["units"][:6], row["values"][:6]))
                       + (" ..." if len(row["units"]) > 6 else ""))

        result = run(lm, [str(p) for p in paths], data, layer, units=units, batch_size=batch_size, device=device,
                     progress=f"{save}.partial" if save else None, show_progress=False if quiet else None,
                     trust_checkpoint=model_spec["trust_checkpoint"], on_checkpoint=said, resume=resume,
                     finish=lambda r: output.write(r, out, save, echo=False, patches=patches),
                     projection=projection, crop=crop)
        if result.params.get("projection_note"):
            click.echo(f"note: {result.params['projection_note']}")
        if result.params["resumed_checkpoints"]:
            click.echo(f"resumed after {result.params['resumed_checkpoints']} checkpoint(s) from {save}.partial")
        click.echo(output.wrote(out, save))

    @cli.command(short_help="Remove superpixels while the class holds: the minimal image (Zhou et al. 2015).")
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @click.option("--segments", default=50, show_default=True, type=click.IntRange(2, 1000),
                  help="Superpixels to split each image into (SLIC; it may make a few more or fewer).")
    @click.option("--compactness", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="SLIC compactness: higher = squarer superpixels, lower = closer to the edges.")
    @use("fill", fill={"help": "Colour of removed superpixels: mean (gray, the dataset mean), black, white, a gray "
                                "level in [0,1], or R,G,B in [0,1]."})
    @click.option("--target", "-t", default=None, metavar="CLASS",
                  help="Class kept [default: each image's top-1]; the image must be classified as it.")
    @use("batch_size", batch_size={"help": "Candidate removals per forward pass [default: chosen by measuring]."})
    @use("device")
    @result_options("FIRST-IMAGE-STEM_simplify.png")
    @use("quiet")
    @figure_options
    def simplify(images, model_spec, segments, compactness, fill, target, batch_size, device, out, save, quiet):
        """Split each image (its input crop) into superpixels and remove them greedily, the one whose
        removal lowers the probability of the image's class least first, until any further removal
        would change the top-1 class (Zhou et al. 2015, Sec. 3.1). Draws each image above its minimal
        image, and the probability against the fraction of the image removed."""
        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.experiments.simplify import simplify as run
        from cnnviz.images import load_image
        from cnnviz_cli import output

        out = out or f"{Path(images[0]).stem}_simplify.png"
        output.check(out, save)
        resolve_device(device)
        for p in images:  # unreadable images: one line before the model loads
            load_image(p)
        lm = _main._load(model_spec)
        result = run(lm, [str(p) for p in images], n_segments=segments, compactness=compactness, fill=fill,
                     target=target, batch_size=batch_size, device=device, progress=False if quiet else None)
        output.write(result, out, save, echo=False)
        p = result.params
        for n, name in enumerate(p["names"]):
            k = p["removed"][n]
            nxt = (f"; removing one more changes it to {p['next_class_names'][n]!r}" if p["next_class"][n] is not None
                   else "; every superpixel removed")
            click.echo(f"{name} ({p['class_names'][n]}): removed {k} of {p['num_segments'][n]} superpixels, "
                       f"{100 * result.fraction[n, k]:.0f} % of the image, P {result.prob[n, 0]:.2f} -> "
                       f"{result.prob[n, k]:.2f}{nxt}")
        click.echo(output.wrote(out, save))

    return cli
