"""Commands for the experiments over a whole data set: `cnnviz probe` (Zeiler & Fergus Table 7 /
Fig. 9), `cnnviz semantics` (Zhou et al. 2015, Bau et al. 2017) and `cnnviz neighbours`
(Krizhevsky et al. 2012 Fig. 4). Wire with `register(cli)`.

Each streams DATA (a folder, class folders or a CSV list) through the model once per scan; with
--save the scan's progress goes to RESULT.npz.partial meanwhile, and a rerun with the same
arguments resumes from there."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import result_options, use

IMAGE_LABELS_HELP = ("CSV with a file column (file or path: relative path or file name) and a class_index or label "
                     "column [default: class folders]. ImageNet class indices are grouped into coarse families "
                     "(see --group).")
SCAN_PROGRESS = "the scan's progress goes to RESULT.npz.partial meanwhile."
GROUP_HELP = ("family: the coarse family of an ImageNet-1k class index (cnnviz.taxonomy: dogs, birds, vehicles, ...); "
              "label: the label itself; auto: family when every label is an ImageNet class index.")


def label_options(image_labels: str = IMAGE_LABELS_HELP):
    """--image-labels CSV (help: `image_labels`) and --group: how a scan reads the images' labels
    and groups them."""
    def decorate(f):
        f = click.option("--group", "grouping", default="auto", show_default=True,
                         type=click.Choice(["auto", "family", "label"]), help=GROUP_HELP)(f)
        return click.option("--image-labels", default=None, type=click.Path(dir_okay=False), metavar="CSV",
                            help=image_labels)(f)
    return decorate


def _layers(text):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise click.BadParameter(f"no layer in {text!r}")
    return items


def _prepare(save, figure_path, data):
    """Check every output and the data before the model loads; the progress file beside --save."""
    from cnnviz.engines.units.features import check_data
    from cnnviz.engines.units.topk import remove_stale_temporaries
    from cnnviz.files import check_output, check_outputs, sidecar_of

    check_outputs(figure_path, save)
    checkpoint = None
    outputs = [Path(figure_path)]
    if save:
        checkpoint = Path(f"{save}.partial")
        check_output(checkpoint, (".partial",))
        from cnnviz_cli.output import keeps_progress

        keeps_progress(checkpoint)
        outputs += [Path(save), sidecar_of(save)]
    root, files, _ = check_data(data)
    for path in outputs:
        remove_stale_temporaries(path)
    return checkpoint, root, files


def _write(result, out, save):
    from cnnviz_cli import output

    output.write(result, out, save, echo=False)
    click.echo(output.wrote(out, save))


def _skipped(p):
    reasons = p.get("skipped_reasons") or []
    if reasons:
        click.echo(f"skipped {len(reasons)} unreadable file(s):")
        for why in reasons[:10]:
            click.echo(f"  {why}")


def register(cli):
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.main import model_options
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="Linear-probe accuracy of each layer's features (ZF Table 7 / Fig. 9).")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--layers", default=None, metavar="L1,L2,...",
                  help="Layers probed, shallow to deep [default: the first convolution and the last stage at each "
                       "resolution]. See `cnnviz layers`.")
    @label_options()
    @click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2),
                  help="Cross-validation folds (stratified); groups with fewer images are left out.")
    @click.option("--penalty-c", "C", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Inverse L2 regularization strength of the logistic regression.")
    @use("batch_size", "device", "quiet")
    @result_options("probe.png", progress=SCAN_PROGRESS)
    @figure_options
    def probe(data, model_spec, layers, image_labels, grouping, folds, C, batch_size, device, quiet, out, save, resume):
        """Pool each layer's output over positions for every image of DATA (a folder, class folders or
        a CSV list), fit a logistic regression on it by stratified k-fold cross-validation, and plot
        the held-out accuracy against depth, as Zeiler & Fergus did with their network's layers.

        \b
        Example (the ImageNet sample, 18 coarse families):
          cnnviz probe imagenet-sample/images --image-labels imagenet-sample/labels.csv
        """
        from cnnviz.engines.units.features import group_labels, read_labels
        from cnnviz.engines.experiments.probe import probe as run

        out = out or "probe.png"
        checkpoint, _, files = _prepare(save, out, data)
        group_labels(read_labels(files, image_labels), grouping)  # bad labels: before the model loads
        lm = _main._load(model_spec)

        def finish(result):
            p = result.params
            click.echo(f"{p['num_images']} images in {len(p['groups'])} {p['grouping']} groups, {p['folds']}-fold; "
                       f"chance {p['chance']:.3f}; {p['seconds']:.1f} s on {result.provenance['device']}")
            for a, acc, sd in zip(p["layers"], result.accuracy, result.fold_accuracy.std(1)):
                click.echo(f"  {a}: {acc:.3f} ± {sd:.3f}")
            if p["dropped_groups"]:
                click.echo(f"left out (fewer than {p['folds']} images): {', '.join(p['dropped_groups'])}")
            _skipped(p)
            _write(result, out, save)

        run(lm, data, layers=_layers(layers), labels=image_labels, grouping=grouping, folds=folds, C=C,
            batch_size=batch_size, device=device, checkpoint=checkpoint, resume=resume,
            progress=False if quiet else None, finish=finish)

    @cli.command(short_help="The images nearest to a query in a layer's feature space (Krizhevsky Fig. 4).")
    @click.argument("query", nargs=-1, required=True, type=click.Path())
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--layer", "-l", default=None, metavar="NAME",
                  help="Layer whose pooled output is the feature vector [default: the features entering the last "
                       "linear layer, as Krizhevsky et al. used]. See `cnnviz layers`.")
    @click.option("-k", "k", default=6, show_default=True, type=int, help="Neighbours per query.")
    @click.option("--metric", default="euclidean", show_default=True, type=click.Choice(["euclidean", "cosine"]),
                  help="Distance between feature vectors.")
    @label_options("Optional: " + IMAGE_LABELS_HELP.replace(" [default: class folders]", "") +
                   " Frames the neighbours of the query's group and measures how often the data set's images have "
                   "neighbours of their own group.")
    @use("batch_size", "device", "quiet")
    @result_options("FIRST-QUERY-STEM_neighbours.png", progress=SCAN_PROGRESS)
    @figure_options
    def neighbours(query, data, model_spec, layer, k, metric, image_labels, grouping, batch_size, device, quiet, out,
                   save, resume):
        """Find, for each QUERY image, the k images of DATA (a folder, class folders or a CSV list)
        whose feature vectors at --layer (averaged over positions) are nearest, and draw them in a
        row after the query, as Krizhevsky et al. did with their last hidden layer.

        \b
        Example:
          cnnviz neighbours my_dog.jpg imagenet-sample/images -k 6
        """
        from cnnviz.engines.units.features import group_labels, read_labels
        from cnnviz.engines.experiments.neighbours import neighbours as run
        from cnnviz.errors import ParameterError
        from cnnviz.images import load_image

        if k <= 0:
            raise ParameterError(f"-k must be a positive whole number, got {k}")
        out = out or f"{Path(query[0]).stem}_neighbours.png"
        checkpoint, root, files = _prepare(save, out, data)
        pics = [load_image(q) for q in query]  # not an image: one line before the model loads
        del pics
        own = sum(1 for f in files if any((Path(root) / f).resolve() == Path(q).resolve() for q in query))
        if k > len(files) - min(own, 1):
            raise ParameterError(f"-k {k} is larger than the {len(files) - min(own, 1)} image(s) a query can have as "
                                 "neighbours in DATA; use a smaller -k")
        if image_labels:
            group_labels(read_labels(files, image_labels), grouping)
        lm = _main._load(model_spec)

        def finish(result):
            p = result.params
            from cnnviz.layers import readable_name

            click.echo(f"{p['num_scanned']} of {p['num_files']} images of DATA at {readable_name(p['layer'], p.get('layer_type'))} "
                       f"({p['layer_shape'][0]} features, {p['metric']}) in {p['seconds']:.1f} s on "
                       f"{result.provenance['device']}")
            for q, name in enumerate(p["query_names"]):
                near = ", ".join(f"{Path(str(result.files[i])).name} ({d:.3g})"
                                 for i, d in zip(result.index[q], result.distance[q]))
                click.echo(f"{name}: {near}")
            if p.get("hit_rate") is not None:
                click.echo(f"leave-one-out over DATA: {100 * p['hit_rate']:.1f}% of the {p['k']} nearest share the "
                           f"image's {p['grouping']} (chance {100 * p['hit_chance']:.1f}%)")
            _skipped(p)
            _write(result, out, save)

        run(lm, list(query), data, layer, k=k, metric=metric, labels=image_labels, grouping=grouping,
            batch_size=batch_size, device=device, checkpoint=checkpoint, resume=resume,
            progress=False if quiet else None, finish=finish)

    @cli.command(short_help="Label each unit of a layer from its top images (Zhou et al. 2015, Bau et al. 2017).")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--layer", "-l", required=True, metavar="NAME", help="Layer whose units are labelled. See `cnnviz layers`.")
    @click.option("--units", "-u", default=None, metavar="A:B|I,J,...",
                  help="Channels to label, e.g. 0:64 or 3,7,9 [default: all].")
    @click.option("-k", "k", default=10, show_default=True, type=int, help="Top images per unit.")
    @label_options()
    @click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
                  help="A unit's map segments an image where it exceeds this share of the unit's largest activation.")
    @click.option("--significance", "alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
                  help="A unit is labelled by its top images' commonest group when so common a group has at most "
                       "this chance among random images.")
    @click.option("--colour-iou", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                  help="Otherwise by a colour when its thresholded maps overlap the colour's pixels this much (IoU).")
    @use("batch_size", "device", "quiet")
    @result_options("semantics.png", progress="the scans' progress goes to RESULT.npz.partial and "
                                              "RESULT.npz.features.partial meanwhile.", resume_from="the progress files")
    @figure_options
    def semantics(data, model_spec, layer, units, k, image_labels, grouping, threshold, alpha, colour_iou, batch_size,
                  device, quiet, out, save, resume):
        """Label every unit of --layer from its k top images in DATA (a folder, class folders or a CSV
        list): the class and coarse family most common among them and how unlikely that is by
        chance, a class-selectivity index, and a colour measured on the unit's thresholded map, which
        also segments its top images (Zhou et al. 2015 Fig. 9); the figure gives the layer's
        histogram of label types (Bau et al. 2017).

        \b
        Example:
          cnnviz semantics imagenet-sample/images --image-labels imagenet-sample/labels.csv --layer _blocks.15
        """
        from cnnviz.engines.units.features import group_labels, read_labels
        from cnnviz.engines.units.semantics import semantics as run
        from cnnviz.engines.units.topk import check_units
        from cnnviz.errors import ParameterError
        from cnnviz.files import check_output

        if k <= 0:
            raise ParameterError(f"-k must be a positive whole number, got {k}")
        if units is not None:
            check_units(units)
        out = out or "semantics.png"
        checkpoint, _, files = _prepare(save, out, data)
        if checkpoint is not None:
            from cnnviz.engines.units.semantics import _features_path
            from cnnviz.engines.units.topk import remove_stale_temporaries

            check_output(_features_path(checkpoint), (".partial",))
            from cnnviz_cli.output import keeps_progress

            keeps_progress(_features_path(checkpoint))
            remove_stale_temporaries(_features_path(checkpoint))
        if k > len(files):
            raise ParameterError(f"-k {k} is larger than the {len(files)} images of DATA; use -k {len(files)} or fewer")
        group_labels(read_labels(files, image_labels), grouping)
        lm = _main._load(model_spec)

        def finish(result):
            p = result.params
            from cnnviz.layers import readable_name

            click.echo(f"{p['num_scanned']} of {p['num_files']} images, {p['num_units']} units of {readable_name(p['layer'], p.get('layer_type'))}, "
                       f"k={p['k']}, in {p['topk_seconds'] + p['seconds']:.1f} s on {result.provenance['device']}")
            click.echo(f"{p['num_group_units']} units whose top images share a {p['grouping']} (p < {p['alpha']:g}; "
                       f"{p['expected_by_chance']:.1f} expected by chance), {p['num_colour_units']} colour units; "
                       f"mean purity {p['mean_purity']:.2f} (chance {p['chance_purity']:.2f})")
            for e in result.example_units[:5]:
                click.echo(f"  unit {int(result.units[e])}: {p['top_group'][e]} {p['top_count'][e]}/{p['k']} "
                           f"(p={result.p_value[e]:.1g}), {p['top_class'][e]}, SI {result.selectivity[e]:.2f}")
            _skipped(p)
            _write(result, out, save)

        run(lm, data, layer, units=units, k=k, labels=image_labels, grouping=grouping, threshold=threshold, alpha=alpha,
            colour_iou=colour_iou, batch_size=batch_size, device=device, checkpoint=checkpoint, resume=resume,
            progress=False if quiet else None, finish=finish)

    return cli
