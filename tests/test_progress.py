"""The progress bar: on a TTY only, silent under --quiet, held back for short runs."""
import io

import pytest

import bpcheck.progress
from bpcheck.cli import main
from bpcheck.compare import run
from bpcheck.progress import progress_bar


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_runner_reports_each_step():
    steps = []
    run("trask", steps=7, progress=steps.append)
    assert steps == list(range(1, 8))


def test_bar_on_a_tty_shows_steps_rate_and_time_left():
    s = TTY()
    with progress_bar(40, "trask", stream=s, delay=0, mininterval=0) as tick:
        for i in range(1, 41):
            tick(i)
    out = s.getvalue()
    assert "trask" in out and "40/40" in out and "step/s" in out
    assert "20/40 [00:00<00:00" in out  # elapsed<remaining: the estimated time left


@pytest.mark.parametrize("stream, quiet", [(io.StringIO(), False), (TTY(), True)])
def test_silent_when_not_a_tty_or_quiet(stream, quiet):
    with progress_bar(40, "trask", quiet=quiet, stream=stream, delay=0) as tick:
        assert tick is None
    assert stream.getvalue() == ""


def test_short_runs_show_no_bar():
    s = TTY()
    with progress_bar(3, "trask", stream=s) as tick:  # the default delay: about 2 s
        for i in (1, 2, 3):
            tick(i)
    assert bpcheck.progress.DELAY == 2.0 and s.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_bar_follows_quiet(monkeypatch, quiet):
    out = TTY()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(bpcheck.progress, "DELAY", 0)
    assert main(["run", "trask", "--steps", "30"] + (["--quiet"] if quiet else [])) == 0
    text = out.getvalue()
    assert ("/30 [" in text and "step/s" in text) != quiet
    assert "trask: PASS" in text


def test_cli_without_a_tty_prints_only_the_summary(capsys, monkeypatch):
    monkeypatch.setattr(bpcheck.progress, "DELAY", 0)
    assert main(["run", "trask", "--steps", "30"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("trask: PASS") and "\r" not in out.out and out.err == ""
