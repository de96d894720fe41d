"""What every engine needs: device choice, running the user's model on a device and handing it
back exactly as it was, mixed precision, progress bars."""

from __future__ import annotations

import sys

import contextlib
import itertools
from typing import Iterator

import torch
from torch import nn

from ..errors import ParameterError
from ..layers import eval_mode


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` where there is none is an error."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ParameterError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ParameterError(f"device {device!r} is not available here; use --device cpu or auto")
    return dev


def _device_of(model: nn.Module) -> torch.device | None:
    for t in itertools.chain(model.parameters(), model.buffers()):  # the first one: no lists built
        return t.device
    return None


@contextlib.contextmanager
def model_on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run the block with the model in eval mode on `device`; afterwards (also on error) it is back
    on its own device with its own training flags. Parameters are moved in place, so references
    the user holds stay valid."""
    home = _device_of(model)
    moved = home is not None and home != device
    with eval_mode(model):
        if moved:
            model.to(device)
        try:
            yield model
        finally:
            if moved:
                model.to(home)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision (float16) on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


PROGRESS_DELAY = 1.0  # seconds of work before a bar with enabled=None appears
PROGRESS_LINES = 4  # where the output is a log, not a terminal: at most this many lines (at 25, 50, 75, 100 %)


class _ProgressLines:
    """Progress for a log (output captured, redirected, a notebook's stored output): a plain line
    at each quarter of the work, once the work has lasted `delay` seconds; never a carriage return
    (a terminal bar written to a log is one line that grows with every update)."""

    def __init__(self, total: int, desc: str, unit: str, delay: float, stream=None):
        import time

        self.total, self.desc, self.unit, self.delay = max(int(total), 0), desc, unit, delay
        self.n, self.start, self.shown = 0, time.monotonic(), 0
        self.stream = stream if stream is not None else sys.stderr

    def update(self, k: int = 1) -> None:
        import time

        self.n += k
        if not self.total:
            return
        quarter = min(PROGRESS_LINES, self.n * PROGRESS_LINES // self.total)
        elapsed = time.monotonic() - self.start
        if quarter > self.shown and elapsed >= self.delay:
            self.shown = quarter
            rate = self.n / elapsed if elapsed > 0 else float("inf")
            self.stream.write(f"{self.desc}: {100 * self.n // self.total:3d}% {self.n}/{self.total} {self.unit} "
                              f"[{elapsed:.0f} s, {rate:.1f} {self.unit}/s]\n")
            self.stream.flush()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_notebook_with_widgets() -> bool:
    """A Jupyter kernel that can draw tqdm's widget bar (ipywidgets installed)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is None or "ipykernel" not in sys.modules:
        return False
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def _delay() -> float:
    """PROGRESS_DELAY, or $CNNVIZ_PROGRESS_DELAY seconds when set to a number >= 0."""
    import os

    try:
        value = float(os.environ.get("CNNVIZ_PROGRESS_DELAY", "nan"))
    except ValueError:
        return PROGRESS_DELAY
    return value if value >= 0 else PROGRESS_DELAY


def _in_notebook() -> bool:
    """Running inside a Jupyter kernel (not merely with ipykernel imported, as a test runner may)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def in_command() -> bool:
    """Whether a `cnnviz` command is running in this process (its group sets the flag for the
    command's duration)."""
    main = sys.modules.get("cnnviz_cli.main")
    return bool(getattr(main, "IN_COMMAND", False))


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "pos"):
    """Progress of `total` steps on stderr: never (`enabled=False`); else, where stderr is a
    terminal, a tqdm bar that appears once the work has lasted PROGRESS_DELAY seconds
    (`enabled=None`) or at once (`True`); in a Jupyter kernel with ipywidgets, tqdm's widget; where
    the output is a log (captured, redirected, a notebook without widgets), a few plain lines
    (`_ProgressLines`) when a command runs or `enabled=True`, and nothing for a call from a script."""
    from tqdm.std import tqdm as plain

    if enabled is False:
        return plain(total=total, disable=True)
    delay = 0 if enabled else _delay()
    stream = sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    if terminal or _in_notebook_with_widgets():
        import warnings

        with warnings.catch_warnings():  # tqdm.auto warns in Jupyter without ipywidgets; it falls back to text
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=False, dynamic_ncols=True)
    if enabled or in_command() or _in_notebook():
        return _ProgressLines(total, desc, unit, delay, stream)
    return plain(total=total, disable=True)


def default_batch_size(device: torch.device) -> int:
    """A fixed batch for engines that do not measure (empirical receptive fields). Engines that run
    many inputs choose theirs by timing with `cnnviz.batching.Batches`: the best size depends on
    the model and the load (Lite0 on 2 quiet cores: 103 images/s at 4, 43 at 32; AlexNet: 2.2x
    faster at 64 than at 4)."""
    if device.type == "cpu":
        return max(4, 2 * torch.get_num_threads())
    return 64


def batch_memory_format(model: nn.Module, example: torch.Tensor) -> torch.memory_format:
    """channels_last where the model accepts it: on the CPU oneDNN then runs the whole network in
    that layout (1.5-2x faster for EfficientNet-Lite0). A model whose forward calls `.view` on a
    feature map cannot take it, and gets the plain layout."""
    if example.ndim != 4:
        return torch.contiguous_format
    try:
        with torch.inference_mode():
            model(example.contiguous(memory_format=torch.channels_last))
    except RuntimeError as e:
        if refuses_channels_last(e):
            return torch.contiguous_format
        raise
    return torch.channels_last


def refuses_channels_last(error: RuntimeError) -> bool:
    """Whether a forward pass on a channels_last input failed for its layout (a `.view` on a
    feature map, a stride assumption) rather than for another reason."""
    return "view" in str(error) or "stride" in str(error)


def check_method_list(methods: tuple, allowed, what: str = "method", example: str = "") -> tuple:
    """`methods` as given when it names some methods, each once and each one of `allowed`; else a
    one-line error ("no methods given" + `example`, "unknown {what} ...; one of ...", "methods
    repeat: ...")."""
    methods = tuple(methods)
    if not methods:
        raise ParameterError(f"no methods given{example}")
    for m in methods:
        if m not in allowed:
            raise ParameterError(f"unknown {what} {m!r}; one of {', '.join(allowed)}")
    if len(set(methods)) != len(methods):
        raise ParameterError(f"methods repeat: {', '.join(methods)}")
    return methods


def as_pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each positive."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ParameterError(f"{what} {value!r} must be one number or two (height, width)")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    try:
        out = (int(pair[0]), int(pair[1]))
    except (TypeError, ValueError):
        raise ParameterError(f"{what} {value!r} must be a positive whole number") from None
    if out[0] != pair[0] or out[1] != pair[1] or min(out) <= 0:
        raise ParameterError(f"{what} must be a positive whole number, got {value!r}")
    return out


def check_finite_outputs(outputs, names=None) -> None:
    """Refuse, in one line, model outputs that are not finite (NaN or inf: a diverged checkpoint),
    before anything is computed from them. `names`: what each row is (file names), for the message."""
    import torch

    from ..errors import ModelError

    bad = ~torch.isfinite(outputs.detach().reshape(len(outputs), -1)).all(1)
    if bool(bad.any()):
        first = f" (first: {names[int(bad.nonzero()[0, 0])]})" if names is not None else ""
        raise ModelError(f"the model's outputs are not finite (NaN or inf) on {int(bad.sum())} of {len(outputs)} "
                         f"images{first}: its weights may have diverged; check the checkpoint (cnnviz predict IMAGE "
                         "shows its outputs)")
