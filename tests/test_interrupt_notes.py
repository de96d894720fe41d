"""Ctrl-C on a resumable command says what was kept and how to continue (issue 29 item 9): it used
to print only "Aborted." and leave a hidden progress file without a word. The real command runs in
a subprocess held at a chosen moment (CNNVIZ_TEST_PAUSE, see topk.fault_pause) and gets SIGINT
there, as a user's Ctrl-C."""

from __future__ import annotations

import signal

import pytest

from cnnviz.results import load_result
from test_topk_faults import NUM_BATCHES, Run, folder, lite0  # noqa: F401 (fixtures)


@pytest.mark.slow
def test_ctrl_c_names_the_progress_kept_and_the_resume_that_continues_it(folder, tmp_path):  # noqa: F811
    run = Run(folder, tmp_path, pause="finish:120")
    run.wait_for("test pause: finish")
    run.proc.send_signal(signal.SIGINT)
    rc, _, err = run.finish()
    lines = err.strip().splitlines()
    assert rc == 130 and "Traceback" not in err, err[-2000:]
    kept = tmp_path / "r.npz.partial"
    assert kept.is_file()
    assert lines[-2] == "Aborted."
    assert lines[-1] == (f"Progress kept in {kept} ({NUM_BATCHES} batches kept): run the same command with --resume "
                         "to continue, or delete the file to start over.")
    rc, out, err = Run(folder, tmp_path, "--resume").finish()
    assert rc == 0, err[-2000:]
    assert not kept.exists()
    assert load_result(tmp_path / "r.npz").values.shape[0] == 8  # the 8 units asked for, from the kept scan


def test_no_note_when_nothing_was_kept(tmp_path):
    """An interrupt before any progress was written: just "Aborted." (a note would point at nothing)."""
    import click

    from cnnviz_cli.output import interrupted_notes, keeps_progress

    with click.Context(click.Command("x")) as ctx:
        keeps_progress(tmp_path / "never.partial")
        assert interrupted_notes(ctx) == []
        (tmp_path / "never.partial").write_bytes(b"x" * 2_000_000)
        assert interrupted_notes(ctx) == [f"Progress kept in {tmp_path / 'never.partial'} (2.0 MB kept): run the same "
                                          "command with --resume to continue, or delete the file to start over."]
