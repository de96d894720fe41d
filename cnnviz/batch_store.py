"""Where `cnnviz.batching` remembers the batch sizes it chose (and the time per item it measured
at each size), so that a later run of the same work skips the search: a small JSON file in the
user's cache, written atomically; a missing or damaged file is only a lost hint."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

REMEMBERED_ENTRIES = 256  # the file keeps the most recent choices


def remembered_path() -> Path | None:
    """Where chosen sizes are remembered: $CNNVIZ_CACHE_DIR (off/none/0/empty: nowhere on disk),
    else $XDG_CACHE_HOME/cnnviz or ~/.cache/cnnviz; file batch-sizes.json."""
    env = os.environ.get("CNNVIZ_CACHE_DIR")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "no", "false"):
            return None
        return Path(env).expanduser() / "batch-sizes.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnviz" / "batch-sizes.json"


_in_memory: dict[str, dict] = {}  # this process's choices (the whole store when the file is off)


def _read_store(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing, unreadable or damaged: start afresh (it is only a hint)


def recall(key: str) -> tuple[int | None, dict[int, float]]:
    """The size remembered for `key` (or None) and the seconds per item then measured at each size
    timed (possibly none): what a later search may skip."""
    entry = _in_memory.get(key) or _read_store(remembered_path()).get(key)
    if not isinstance(entry, dict):
        return None, {}
    size = entry.get("size")
    size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
    rates = {}
    for k, v in (entry.get("rates") or {}).items() if isinstance(entry.get("rates"), dict) else ():
        if str(k).isdigit() and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            rates[int(k)] = float(v)
    return size, rates if size is not None else {}


def remember(key: str, size: int, rates: dict[int, float] | None = None) -> None:
    """Store `size` (and the seconds per item measured at each size) for `key`, in memory and
    (atomically; any failure ignored) in the file."""
    entry = {"size": int(size), "rates": {str(k): v for k, v in sorted((rates or {}).items())}, "when": time.time()}
    _in_memory[key] = entry
    path = remembered_path()
    if path is None:
        return
    store = _read_store(path)
    store[key] = entry
    if len(store) > REMEMBERED_ENTRIES:
        store = dict(sorted(store.items(), key=lambda kv: kv[1].get("when", 0) if isinstance(kv[1], dict) else 0)
                     [-REMEMBERED_ENTRIES:])
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".batch-sizes.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(store, f)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
