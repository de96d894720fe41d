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


# --------------------------------------------------------------------------------------------------
# Folders: temporaries this program made (and only those), output folders that spare the inputs,
# and one writer at a time

TEMP_MARKER = ".cnnviz-temporary"  # inside every temporary folder cnnviz makes; holds the folder's own name


def make_temp_folder(beside: Path, kind: str) -> Path:
    """A new empty folder `.NAME.XXXXXXXX.KIND` beside `beside`, marked as cnnviz's own (see
    `remove_own_temporaries`). The marker is the only file in it until the caller fills it."""
    parent = beside.parent if str(beside.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=f".{kind}", dir=parent))
    (tmp / TEMP_MARKER).write_text(tmp.name)
    return tmp


def mark_temporary(folder: Path, name: str) -> None:
    """Mark `folder` (about to be renamed to `name`, beside it) as cnnviz's own temporary."""
    (folder / TEMP_MARKER).write_text(name)


def unmark(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / TEMP_MARKER).unlink()


def is_own_temporary(path: Path, beside: Path, kind: str) -> bool:
    """Whether `path` is a temporary folder cnnviz made for `beside`: its name is exactly
    `.NAME.<8 characters>.KIND` (compared as text: no pattern is built from the user's name) and it
    holds the marker naming it."""
    name, head = path.name, f".{beside.name}."
    middle = name[len(head):-len(kind) - 1] if name.startswith(head) and name.endswith(f".{kind}") else ""
    if len(middle) != 8 or not all(c.isalnum() or c == "_" for c in middle):
        return False
    if path.is_symlink() or not path.is_dir():
        return False
    marker = path / TEMP_MARKER
    try:
        return not marker.is_symlink() and marker.is_file() and marker.read_text() == name
    except OSError:
        return False


def remove_own_temporaries(beside: Path, kinds: tuple[str, ...] = ("partial", "old")) -> list[Path]:
    """Remove the temporary folders that a killed run of cnnviz left beside `beside`, and only
    those (see `is_own_temporary`); return them."""
    import shutil

    parent = beside.parent if str(beside.parent) else Path(".")
    removed = []
    if beside.name and parent.is_dir():
        for p in parent.iterdir():
            if any(is_own_temporary(p, beside, k) for k in kinds):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def check_output_folder(out: str | os.PathLike, inputs=(), what: str = "--out") -> Path:
    """Refuse, in one line, an output folder that is, contains or lies inside one of `inputs` (files
    or folders the run reads), or that contains the current directory (`--out .`): replacing it
    would delete what the run reads or where the user stands. Returns the absolute path."""
    p = Path(os.path.abspath(out))
    cwd = Path(os.getcwd())
    if p == cwd or p in cwd.parents:
        raise OutputError(f"{what} {str(out)!r} is the current directory or contains it; give a new folder for the "
                          "output (e.g. --out report)")
    for given in inputs:
        if given is None:
            continue
        q = Path(os.path.abspath(given))
        for a, b in ((p, q), (p.resolve(), q.resolve())):
            if a == b or a in b.parents:
                raise OutputError(f"{what} {str(out)!r} {'is' if a == b else 'contains'} the input {str(given)!r}; "
                                  "writing there would replace it: choose another folder")
            if b in a.parents and Path(given).is_dir():
                raise OutputError(f"{what} {str(out)!r} lies inside the input folder {str(given)!r}; choose a folder "
                                  "outside it")
    return p


def check_folder_writable(parent: Path) -> None:
    """Whether a folder can really be made in `parent` (os.access says yes to root on /proc)."""
    try:
        probe = tempfile.mkdtemp(prefix=".cnnviz-write-check.", dir=parent)
    except OSError as e:
        raise OutputError(f"cannot write in {str(parent)!r} ({e.strerror or e}); choose another --out") from None
    os.rmdir(probe)


def lock_held(path: Path) -> bool:
    """Whether another process holds `exclusive_lock` on `path` now (a check before other checks,
    so that a second run is told the real reason; the lock itself is taken later)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created if needed, removed at the end) for the
    duration of the block; if another process holds it, raise OutputError(`busy`) at once."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(busy) from None
        try:  # the holder before us may have removed the file after we opened it: lock the one in place
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
