"""Writing outputs safely: check a path before the work starts, write through a temporary file
and rename, so that a failed run leaves no half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

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
