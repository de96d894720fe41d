"""`cnnviz occlusion`: a gray square slid over each image (Zeiler & Fergus 2014, Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import click

from .inputs import expand_images, make_folder, plan_figures, wrote
from .options import model_options, use
from .output import figure_options


def mode_summary(p: dict) -> str:
    """'mode full', or 'mode incremental: 2.41 of 15.47 G multiply-accumulates per position
    (6.4x fewer, counted)', or the fallback and its reason."""
    if p.get("mode_fallback"):
        return f"mode full (incremental unavailable: {p['mode_fallback']})"
    if p.get("mode", "full") == "full" or "macs_full" not in p:
        return f"mode {p.get('mode', 'full')}"
    text = (f"mode {p['mode']}: {p['macs_incremental'] / 1e9:.2f} of {p['macs_full'] / 1e9:.2f} G "
            f"multiply-accumulates per position ({p['macs_ratio']:.1f}x fewer, counted)")
    drill = p.get("drill_down")
    if drill:
        done = drill["computed_positions"]
        auto = " (auto)" if p.get("tau_auto") else ""
        text += (f"; tau {p.get('tau', 1.0)}{auto}, {done} of {done + drill['filled_positions']} positions computed "
                 f"({(done + drill['filled_positions']) / max(1, done) * p['macs_ratio']:.1f}x fewer in all)")
    return text


def register(cli) -> None:
    from .attribution.methods import _load

    @cli.command()
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @model_options
    @use("window", "stride", "mode", "tau", "fill", "target", "layer", "channel", "batch_size", "device", "amp", "out", "out_dir",
         "save", "full_image", "quiet", cmd="occlusion",
         target={"help": "Class index or name to follow [default: top-1 class of the unoccluded image]."},
         layer={"help": "Layer whose feature map is followed [default: last convolutional block]. "
                        "See `cnnviz layers`."},
         batch_size={"help": "Occluded images per forward pass [default: chosen by timing the first positions at "
                             "4, 8, 16... (16, 32... on a GPU), within free memory]. Results do not depend on it "
                             "on a CPU."},
         out={"help": "Figure file; .png, .pdf or .svg [default: IMAGE-STEM_occlusion.png here]; one image."},
         save={"help": "Also save the result (npz + JSON sidecar) to redraw it with `cnnviz render`; one image."},
         full_image={"help": "Draw on the whole original photo: the model's crop dashed, the rest hatched "
                             "(not analysed)."})
    @figure_options
    def occlusion(images, model_spec, window, stride, mode, tau, fill, target, layer, channel, batch_size, device, amp, out,
                  out_dir, save, full_image, quiet):
        """Slide a gray square over each image and re-run the network at every position (Zeiler &
        Fergus 2014, Fig. 7). The figure shows the input with the occluder, the chosen feature map,
        its total activation per position, the target-class probability per position, and the most
        probable class per position.

        IMAGES: image files and folders; with several images, one figure per image in --out-dir DIR.

        \b
        Example:
          cnnviz occlusion assets/rocket.jpg --window 48 --stride 8 --out fig.pdf --save occ.npz
        """
        import cnnviz
        from cnnviz.batching import summary as batch_summary
        from cnnviz.images import load_image
        from cnnviz_cli import output
        from cnnviz_cli.main import _check_amp, _check_stride, _parse_pair

        from cnnviz.errors import ParameterError
        from cnnviz_cli.main import _given

        if mode != "approximate" and _given("tau"):
            raise ParameterError(f"--tau applies to --mode approximate only (the mode is {mode}); drop --tau or add "
                                 "--mode approximate")
        files = expand_images(images)
        figures = plan_figures(files, out, out_dir, save, "occlusion", max_in_one=1, save_per_image=True)
        figures = [figures] if isinstance(figures, Path) else figures
        win, step = _parse_pair(window, "--window"), _parse_pair(stride, "--stride")
        _check_amp(amp, device)
        pics = [load_image(f) for f in files]  # before the model: a bad file fails fast
        lm = _load(model_spec)
        _check_stride(win, step, lm.input_size)
        for f, img, path in zip(files, pics, figures):
            result = cnnviz.occlusion(lm, img, window=win, stride=step, fill=fill, target=target, layer=layer,
                                      channel=channel, batch_size=batch_size, device=device, amp=amp,
                                      progress=False if quiet else None, mode=mode, tau=tau)
            result.params["image_file"] = str(f)
            make_folder(path)
            output.write(result, path, save, echo=False, full_image=full_image)
            p = result.params
            click.echo((f"{f}: " if len(files) > 1 else "")
                       + f"target '{p['target_name']}' (class {p['target']}): p = {p['baseline_prob']:.3f} "
                       f"unoccluded, {float(result.true_class_prob.min()):.3f} at the strongest occlusion; "
                       f"{p['num_positions']} positions in {p['seconds']:.1f} s on {result.provenance['device']}")
            click.echo(batch_summary(p))
            if mode != "full":
                click.echo(mode_summary(p))
        click.echo(wrote(figures if len(figures) > 1 else figures[0], save))
