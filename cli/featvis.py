"""`cnnviz featvis`, `dream`, `classviz`, `invert`: feature visualization. Wire with `register(cli)`."""

from __future__ import annotations


def register(cli):
    return cli
