"""Entry points read once per group: what plug-in packages add (model sources, analyses)."""

from __future__ import annotations

import warnings


def load_entry_points(group: str, what: str) -> list[tuple[object, object]]:
    """(entry point, loaded object) for each entry point of `group`, in the order found. One that
    fails to load is skipped with a one-line warning naming it as `what` ("model source", ...): a
    broken plug-in must not break cnnviz's own pieces."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        try:
            loaded.append((ep, ep.load()))
        except Exception as e:  # noqa: BLE001 - any failure of someone else's package
            warnings.warn(f"cnnviz {what} {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                          stacklevel=3)
    return loaded
