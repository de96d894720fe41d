"""Writing outputs safely: check a path before the work starts, write through a temporary file
and rename, so that a failed run leaves no half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .errors import OutputError

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    """Fail early, in one line, if `path` cannot be written or has an unsupported extension."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise OutputError(f"cannot write {str(p)!r}: the extension must be one of {', '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {str(parent)!r} is not writable; choose another output path "
                          f"(--out, --save) in a folder you can write, or make it writable (chmod u+w {parent})")
    if p.is_dir():
        raise OutputError(f"{str(p)!r} is a directory; give a file name")
    return p


def sidecar_of(path: str | os.PathLike) -> Path:
    """The JSON sidecar written beside a result's .npz."""
    return Path(path).with_suffix(".json")


def check_result_output(path: str | os.PathLike) -> Path:
    """`check_output` for a result: the .npz and its .json sidecar must both be writable files."""
    p = check_output(path, (".npz",))
    side = sidecar_of(p)
    if side.is_dir():
        raise OutputError(f"cannot save {str(p)!r}: its sidecar {str(side)!r} is a directory; remove it or save "
                          "under another name")
    return p


def check_outputs(figure: str | os.PathLike | None = None, result: str | os.PathLike | None = None,
                  figure_suffixes: tuple[str, ...] = FIGURE_SUFFIXES) -> tuple[Path | None, Path | None]:
    """Check, before any work, every file a command will write: the figure and the result (npz and
    sidecar). Two outputs may not be the same file."""
    fig = check_output(figure, figure_suffixes) if figure is not None else None
    res = check_result_output(result) if result is not None else None
    if fig is not None and res is not None and fig.resolve() in (res.resolve(), sidecar_of(res).resolve()):
        raise OutputError(f"the figure {str(fig)!r} and the result {str(res)!r} would overwrite each other; "
                          "give them different names")
    return fig, res


def write_together(writers: Mapping[str | os.PathLike, Callable[[Path], None]]) -> list[Path]:
    """Write several files as one: each writer fills a temporary file beside its target, and only
    when every writer has succeeded are all temporaries renamed into place. On any error (also
    Ctrl-C) every temporary is removed and no target is touched."""
    targets = [Path(t) for t in writers]
    temps: list[Path] = []
    try:
        for target, write in zip(targets, writers.values()):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix,
                                       dir=target.parent if str(target.parent) else ".")
            os.close(fd)
            temps.append(Path(tmp))
            write(Path(tmp))
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual mode
        for tmp in temps:
            os.chmod(tmp, mode)
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return targets


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=p.suffix, dir=p.parent if str(p.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
