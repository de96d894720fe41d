"""Fixtures shared by the test modules (the CLI ones each define their own module-scoped `lite0`)."""

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (README: `-n 2`) each worker is one of the machine's cores: torch's intra-op
    # threads would otherwise make the workers fight (2 workers x 2 threads on 2 cores spin and wait).
    # The commands the tests start inherit the same one thread; tests that compare a subprocess with
    # an in-process reference pass torch.get_num_threads() on, so both sides still match.
    import torch

    THREADS_WITHOUT_XDIST = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    THREADS_WITHOUT_XDIST = None


@pytest.fixture(scope="module")
def threads_as_without_xdist():
    """For a module whose checks hold at the thread count a plain `pytest` run has (e.g. bitwise
    equality across batch sizes, which at one thread oneDNN does not give): under xdist, torch's
    default thread count comes back for that module (the other worker goes on with one)."""
    if THREADS_WITHOUT_XDIST is None:
        yield
        return
    import torch

    torch.set_num_threads(THREADS_WITHOUT_XDIST)
    try:
        yield
    finally:
        torch.set_num_threads(1)


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
