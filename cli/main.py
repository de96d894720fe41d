"""The `cnnviz` command: one subcommand per engine. Commands parse options, call the library, save
and render; every library error becomes a one-line message and a non-zero exit."""

from __future__ import annotations

import os
import signal
import warnings
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

import json  # noqa: E402

import click  # noqa: E402


EXIT_USER_ERROR = 1
EXIT_INTERNAL = 3


class CnnvizGroup(click.Group):
    """Turns library errors into `Error: ...` on one line, never a traceback; takes a command's
    name with either separator (`lrp_epsilon` is `lrp-epsilon`, `guided-gradcam` is `guided_gradcam`)."""

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and isinstance(cmd_name, str):
            for other in (cmd_name.replace("_", "-"), cmd_name.replace("-", "_")):
                if other != cmd_name and (cmd := super().get_command(ctx, other)) is not None:
                    break
        return cmd

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
            from cnnviz_cli.output import interrupted_notes

            for note in interrupted_notes(ctx):
                click.echo(note, err=True)
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
    # while a command runs, progress written to a log (output not a terminal) is a few plain lines
    # (cnnviz.engines.common.progress_bar); a library call from a script writes none
    global IN_COMMAND
    IN_COMMAND = True

    def done():
        global IN_COMMAND
        IN_COMMAND = False

    click.get_current_context().call_on_close(done)


IN_COMMAND = False


from cnnviz_cli.options import model_options, use  # noqa: E402  (model_options: re-exported for the command modules)


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
@model_options(architecture_only=True)
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
@use("batch_size", batch_size={"default": 32, "show_default": True, "help": "Images per forward pass."})
@use("device")
def predict(images, model_spec, top, as_json, batch_size, device):
    """Print the top classes for IMAGES (files or folders): the quickest check that a model and its
    preprocessing are right."""
    import torch

    from cnnviz.errors import ImageError
    from cnnviz_cli.inputs import expand_images

    files = expand_images(images)
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


def _register_modules():
    """Every module of this package with a `register(cli)` adds its commands (an analysis declares
    its command where it is defined, see cnnviz.analyses), then every plug-in of the
    `cnnviz.analyses` entry point group that has one."""
    import importlib
    import pkgutil
    import warnings
    from importlib.metadata import entry_points

    import cnnviz_cli

    # the command modules: one per family of analysis, or a package of them (cnnviz_cli.attribution, ...)
    for info in pkgutil.walk_packages(cnnviz_cli.__path__, "cnnviz_cli."):
        if info.name != __name__ and info.name != "cnnviz_cli.main" and not info.ispkg:
            module = importlib.import_module(info.name)
            if callable(getattr(module, "register", None)):
                module.register(cli)
    # the plug-ins (cnnviz.analyses.ENTRY_POINT_GROUP; read here without importing cnnviz, which
    # would import torch before any command needs it)
    for ep in entry_points(group="cnnviz.analyses"):
        try:
            module = ep.load()
            if callable(getattr(module, "register", None)):
                module.register(cli)
        except Exception as e:  # a broken plug-in must not break the built-in commands
            warnings.warn(f"cnnviz analysis plug-in {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                          stacklevel=2)


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


def _importing() -> bool:
    """A module is being imported right now (importlib marks its spec while the module runs)."""
    return any(getattr(getattr(m, "__spec__", None), "_initializing", False) for m in list(sys.modules.values()))


def _interrupt(signum, frame):
    """Ctrl-C during a command: KeyboardInterrupt (cleanups run, `Aborted.`, exit 130), except while
    a module is still importing. torch's import calls back into Python from C++, where an exception
    ends the process with a C++ abort ("terminate called after throwing ... KeyboardInterrupt");
    imports come before anything is written, so ending at once is the same as at start-up."""
    if _importing():
        _abort_while_starting(signum, frame)
    raise KeyboardInterrupt


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings on the command line: one line each, without the source line Python repeats."""
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


def main():
    def terminate(signum, frame):  # kill / a scheduler's SIGTERM ends like Ctrl-C: cleanups run, exit 130
        _interrupt(signum, frame)

    signal.signal(signal.SIGTERM, terminate)
    warnings.showwarning = _one_line_warning
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    sys.unraisablehook = _defer_interrupt
    try:
        cli(prog_name="cnnviz")
    except KeyboardInterrupt:  # between the imports and the command (parsing): as within a command
        click.echo("Aborted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
