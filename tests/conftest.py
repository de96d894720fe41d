"""Fixtures shared by the test modules (the CLI ones each define their own module-scoped `lite0`)."""

import pytest


@pytest.fixture(autouse=True)
def _own_batch_memory(monkeypatch, tmp_path_factory):
    """Each test remembers chosen batch sizes in a folder of its own (inherited by the commands it
    starts), never in the user's ~/.cache, and starts with nothing remembered in memory."""
    from cnnviz import batch_store

    monkeypatch.setenv("CNNVIZ_CACHE_DIR", str(tmp_path_factory.mktemp("cnnviz-cache")))
    monkeypatch.setattr(batch_store, "_in_memory", {})


@pytest.fixture
def cached_model(monkeypatch, lite0):
    """The CLI's default model comes from the test module's copy (loading it takes seconds on 2
    cores); any other model spec goes through the real loader."""
    import cnnviz_cli.main as climain

    real = climain._load

    def load(spec, structure_only=False):
        if spec["name"] == "efficientnet_lite0" and spec["weights"] is None and spec["weights_file"] is None:
            return lite0
        return real(spec, structure_only)

    monkeypatch.setattr(climain, "_load", load)
