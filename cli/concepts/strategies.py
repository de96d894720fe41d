"""`cnnviz strategies`: Spectral Relevance Analysis (SpRAy) of a model's maps over a data set.
Registered by `register(cli)`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnviz_cli.options import result_options, use


def register(cli) -> None:
    from cnnviz_cli import main as _main  # looked up at each call: tests hand over a loaded model
    from cnnviz_cli.main import model_options
    from cnnviz_cli.output import figure_options

    @cli.command(short_help="Cluster each class's maps (SpRAy): the model's strategies, shortcuts flagged.")
    @click.argument("data", type=click.Path())
    @model_options
    @click.option("--classes", default=None, metavar="C1,C2",
                  help="Classes to analyse, by name or index [default: every class with enough images, by label "
                       "where DATA has labels, else by prediction].")
    @click.option("--method", default=None, metavar="M",
                  help="Attribution method of the maps, any of `cnnviz.attribute` (gradcam, saliency, guided, "
                       "ig, lrp-epsilon, ...) [default: the most faithful of --audit, else gradcam].")
    @click.option("--audit", "audit_file", default=None, type=click.Path(dir_okay=False), metavar="AUDIT.npz",
                  help="A saved audit of this model (report/audit.npz): its most faithful method is the default "
                       "--method.")
    @click.option("--limit", default=None, type=click.IntRange(min=1), metavar="N", help="Read the first N files only.")
    @click.option("--size", default=32, show_default=True, type=click.IntRange(min=2, max=256),
                  help="Side the maps are downsized to (area averaging) before clustering.")
    @click.option("--clusters", default=None, type=click.IntRange(min=1), metavar="K",
                  help="Clusters per class [default: chosen by the eigengap].")
    @click.option("--max-clusters", default=8, show_default=True, type=click.IntRange(min=1),
                  help="The most clusters the eigengap may choose.")
    @click.option("--neighbours", default=10, show_default=True, type=click.IntRange(min=1),
                  help="Neighbours of the k-nearest-neighbour affinity graph (CoRelAy's default).")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed of k-means and t-SNE.")
    @use("device")
    @result_options("strategies.png", progress="progress goes to RESULT.npz.partial meanwhile, and a rerun "
                                                 "resumes from it.")
    @use("quiet")
    @figure_options
    def strategies(data, model_spec, classes, method, audit_file, limit, size, clusters, max_clusters, neighbours,
                   seed, device, out, save, resume, quiet):
        """Spectral Relevance Analysis (Lapuschkin et al. 2019): for each class of DATA (a folder, a
        folder of class folders, or a CSV with a `file` column and optionally a `label` column), the
        map of every image for its class (its label, or its prediction without labels), downsized,
        normalized and clustered spectrally (k-nearest-neighbour graph, number of clusters by the
        eigengap); per cluster its size, accuracy and mean map; clusters whose maps sit on a small
        region in the same place across many images are flagged as possible shortcuts.

        \b
        Example:
          cnnviz strategies photos/ --classes goldfinch,daisy --save strategies.npz
        """
        from cnnviz.engines.common import resolve_device
        from cnnviz.engines.concepts.strategies import check_request, strategies as run
        from cnnviz.errors import ParameterError
        from cnnviz.files import check_output
        from cnnviz_cli import output

        if method is not None and audit_file is not None:
            raise ParameterError("--method and --audit both choose the method; drop one")
        if clusters is not None and _main._given("max_clusters"):
            raise ParameterError("--max-clusters bounds the eigengap's choice, which --clusters replaces; drop one")
        out = out or "strategies.png"
        output.check(out, save)
        if save:
            check_output(Path(f"{save}.partial"), (".partial",))
            output.keeps_progress(Path(f"{save}.partial"))
        resolve_device(device)
        if audit_file is not None and not Path(audit_file).is_file():
            raise ParameterError(f"audit file not found: {audit_file!r}; give the audit.npz of `cnnviz audit`")
        check_request(data, classes, method, limit)  # bad method, data or class: before the model loads
        lm = _main._load(model_spec)

        def write(result):
            output.write(result, out, save, echo=False)

        result = run(lm, data, classes, method, limit=limit, size=size, n_clusters=clusters, max_clusters=max_clusters,
                     k_neighbours=neighbours, audit=audit_file, seed=seed, device=device,
                     progress=False if quiet else None, checkpoint=f"{save}.partial" if save else None, resume=resume,
                     finish=write)
        p = result.params
        click.echo(f"{p['num_images']} images of {len(result.classes)} class(es), {p['method_label']} maps "
                   f"({p['method_choice']}), in {p['seconds_maps']:.1f} s; clustering {p['seconds_clustering']:.1f} s")
        for c, k in zip(result.classes, result.class_k):
            qs = [q for q in range(len(result.cluster_class)) if result.cluster_class[q] == c]
            sizes = ", ".join(str(int(result.cluster_size[q])) for q in qs)
            click.echo(f"{p['class_names'][str(int(c))]}: {int(k)} cluster(s) of {sizes} images")
        for f in p["flags"]:
            click.echo(f"flag: {f['class_name']}, cluster {f['cluster_in_class'] + 1}: {f['reason']}")
        for s in p["skipped_classes"]:
            click.echo(f"note: {s['name']} has {s['images']} image(s), fewer than the {p['min_images']} SpRAy needs; "
                       "not analysed")
        if len(result.skipped):
            click.echo(f"skipped {len(result.skipped)} unreadable file(s):")
            for why in p["skipped_reasons"]:
                click.echo(f"  {why}")
        if p["resumed_from_chunk"]:
            click.echo(f"resumed after {p['resumed_from_chunk']} chunk(s) from {save}.partial")
        click.echo(output.wrote(out, save))
