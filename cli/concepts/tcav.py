"""`cnnviz tcav`: Testing with Concept Activation Vectors (Kim et al. 2018). Wire with `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import result_options, use

PROGRESS = "progress goes to RESULT.npz.partial after every run of CAVs and chunk of class images, and a rerun resumes."


def parse_concepts(values) -> dict[str, str]:
    """{name: folder} from NAME=FOLDER options; a one-line error for anything else."""
    from cnnviz.errors import ParameterError

    if not values:
        raise ParameterError("no concept given: add --concept NAME=FOLDER (a folder of example images), e.g. "
                             "--concept striped=stripes/")
    out: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ParameterError(f"--concept {value!r} is not NAME=FOLDER; write e.g. --concept striped=stripes/")
        if name.strip() in out:
            raise ParameterError(f"concept {name.strip()!r} is given twice; give each concept one folder")
        out[name.strip()] = folder.strip()
    return out


def _names(text):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise click.BadParameter(f"nothing named in {text!r}")
    return items


def register(cli):
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.main import model_options
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="Does a concept (a folder of examples) move a class's score? TCAV (Kim et al. 2018).")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--concept", "concept_specs", multiple=True, metavar="NAME=FOLDER",
                  help="A concept and its folder of example images (at least 5; repeat for more concepts).")
    @click.option("--classes", default=None, metavar="C1,C2",
                  help="Classes tested (names or indices) [default: every labelled class of DATA, at most 8; "
                       "required for DATA without labels, whose every image then counts for each class].")
    @click.option("--layers", default=None, metavar="L1,L2",
                  help="Layers whose activations the CAVs live in [default: the last block before the last convolution, "
                       "e.g. _blocks.15 of EfficientNet-Lite0, layer3 of a ResNet]. See "
                       "`cnnviz layers`.")
    @click.option("--random-runs", default=10, show_default=True, type=click.IntRange(min=10, max=1000),
                  help="CAVs per concept, each against another random set, and as many random-vs-random runs: "
                       "the t-test's samples (Kim et al.: at least 10).")
    @click.option("--random-from", default=None, type=click.Path(), metavar="FOLDER",
                  help="Where the random images come from: a folder or CSV list [default: DATA].")
    @click.option("--random-size", default=None, type=click.IntRange(min=5), metavar="N",
                  help="Images per random set [default: the largest concept's count, at most half the pool].")
    @click.option("--significance", "alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
                  help="Significance level, Bonferroni-corrected for concepts x classes x layers tests.")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
                  help="Seed of the random sets, the CAVs' splits and their SGD.")
    @use("batch_size", batch_size={"help": "Images per forward (and backward) pass [default: 16]; results do not "
                                           "depend on it on a CPU."})
    @use("device", "quiet")
    @result_options("tcav.png", progress=PROGRESS)
    @figure_options
    def tcav(data, model_spec, concept_specs, classes, layers, random_runs, random_from, random_size, alpha, seed,
             batch_size, device, quiet, out, save, resume):
        """TCAV (Kim et al., ICML 2018) of each --concept for each class of DATA (a folder, class folders
        or a CSV list): a concept activation vector (CAV) from a linear classifier (SGD, hinge loss,
        as captum's TCAV) separating the layer's activations of the concept's examples from random
        images'; the TCAV score = the share of the class's images whose class-logit gradient points
        along the CAV; significance by a two-sided t-test of --random-runs concept runs against as
        many random-vs-random runs, Bonferroni-corrected.

        \b
        Example:
          cnnviz tcav zebras/ --classes zebra --concept striped=stripes/ --concept dotted=dots/ \\
              --random-from imagenet-sample/images
        """
        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.concepts.tcav import tcav as run
        from cnnviz.engines.concepts.tcav_scan import read_inputs
        from cnnviz.engines.units.features import resolve_layers
        from cnnviz_cli.experiments.scans import _prepare, _write

        concepts = parse_concepts(concept_specs)
        out = out or "tcav.png"
        checkpoint, _, _ = _prepare(save, out, data)
        resolve_device(device)
        structure = _main._load(model_spec, structure_only=True)  # class names and layers, no weights read yet
        read_inputs(data, concepts, _names(classes), structure, random_runs=random_runs, random_from=random_from,
                    random_size=random_size, seed=seed)  # folders, labels, classes, the random pool: one line each
        if layers is not None:
            resolve_layers(structure, _names(layers))
        lm = _main._load(model_spec)

        def finish(result):
            p = result.params
            click.echo(f"TCAV of {len(p['concepts'])} concept(s) for {len(p['classes'])} class(es) at "
                       f"{len(p['layers'])} layer(s): {p['random_runs']} runs against random sets of "
                       f"{p['random_size']} from {p['random_from']}; Bonferroni over {p['tests']} tests")
            for row in result.table():
                mark = f"significant ({row['direction']} random)" if row["significant"] else "not significant"
                click.echo(f"  {row['concept']} -> {row['class']} @ {row['layer']}: {row['score']:.2f} ± {row['std']:.2f} "
                           f"(random {row['random']:.2f}), p {row['p']:.2g}, corrected {row['p_corrected']:.2g}: {mark}")
            for note in p.get("notes") or []:
                click.echo(f"note: {note}")
            if p["skipped"]:
                click.echo(f"skipped {len(p['skipped'])} unreadable file(s): {', '.join(p['skipped'][:5])}")
            _write(result, out, save)

        run(lm, data, concepts, _names(classes), _names(layers), random_runs=random_runs, random_from=random_from,
            random_size=random_size, alpha=alpha, seed=seed, batch_size=batch_size or 16, device=device,
            checkpoint=checkpoint, resume=resume, progress=False if quiet else None, finish=finish)

    return cli
