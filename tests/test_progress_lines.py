"""Progress where the output is a log (issue 29 item 15): a terminal bar redraws one line with
carriage returns, which in a captured log is one line growing with every update (24 occlusion calls
once wrote 30 kB of bars on a single line). Off a terminal, a command writes a few plain lines and a
library call from a script writes nothing; on a terminal the bar is tqdm's as before."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from cnnviz.engines import common


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _run(monkeypatch, tty: bool, enabled, command: bool, steps: int = 200) -> str:
    import cnnviz_cli.main as climain

    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(common, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(climain, "IN_COMMAND", command)
    with common.progress_bar(steps, "occlusion", enabled) as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def test_a_command_writing_to_a_log_gives_at_most_four_plain_lines(monkeypatch):
    out = _run(monkeypatch, tty=False, enabled=None, command=True)
    lines = out.splitlines()
    assert "\r" not in out and 1 <= len(lines) <= 4, out
    assert lines[-1].startswith("occlusion: 100% 200/200 pos") and "pos/s" in lines[-1]


def test_a_library_call_from_a_script_writes_nothing_unless_asked(monkeypatch):
    assert _run(monkeypatch, tty=False, enabled=None, command=False) == ""
    asked = _run(monkeypatch, tty=False, enabled=True, command=False)
    assert "\r" not in asked and 1 <= len(asked.splitlines()) <= 4
    assert _run(monkeypatch, tty=False, enabled=False, command=True) == ""


def test_a_terminal_still_gets_the_redrawn_bar(monkeypatch):
    out = _run(monkeypatch, tty=True, enabled=None, command=True)
    assert "\r" in out and "occlusion:" in out and "pos/s" in out  # tqdm's redrawn line, as before


def test_quick_work_in_a_log_writes_no_line(monkeypatch):
    import cnnviz_cli.main as climain

    stream = _Stream(False)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(climain, "IN_COMMAND", True)  # the real 1 s delay: 10 quick steps stay silent
    with common.progress_bar(10, "occlusion", None) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


@pytest.mark.slow
def test_the_installed_command_with_captured_output_writes_plain_lines(tmp_path):
    """`cnnviz occlusion` run from a script (stderr a pipe); CNNVIZ_PROGRESS_DELAY=0 shows progress
    however fast the machine."""
    from helpers import ASSETS

    from pathlib import Path

    cnnviz = Path(sys.executable).with_name("cnnviz")
    res = subprocess.run([str(cnnviz), "occlusion", str(ASSETS / "rocket.jpg"), "--model",
                          "resnet18", "--weights", "none", "--stride", "16", "--batch-size", "8",
                          "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CNNVIZ_PROGRESS_DELAY": "0"})
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("occlusion:")]
    assert 1 <= len(progress) <= 4, res.stderr
