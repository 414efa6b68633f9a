"""Faults: interrupted runs, NaN and Inf, shape slips, and bit-identical reruns."""
import csv
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch

from bpcheck.cases import get_case
from bpcheck.cli import main
from bpcheck.compare import COLUMNS, run
from bpcheck.compare.io import interrupt
from bpcheck.compare.io.interrupt import Interrupted
from bpcheck.compare.diagnosis.summary import first_failure, format_summary
from bpcheck.manual import MLP

EXE = os.path.join(os.path.dirname(sys.executable), "bpcheck")
TRASK_ROWS = 10  # rows per trask step: output, loss, 3 backward x 2 layers, 2 weights


def with_patch(case, patch):
    """``case`` with ``patch(setup)`` applied inside build: a user's wrapper, through the protocol."""
    base = get_case(case)

    def build(**kw):
        setup = base.build(**kw)
        patch(setup)
        return setup

    return replace(base, build=build)


def complete_steps(df, rows_per_step):
    """Steps 1..N, each with all of its rows, and nothing else."""
    n = df["step"].max()
    counts = df.groupby("step").size()
    assert list(counts.index) == list(range(1, n + 1))
    assert (counts == rows_per_step).all(), counts[counts != rows_per_step]
    keys = df.groupby("step").apply(lambda g: tuple(sorted(zip(g["layer"], g["quantity"]))), include_groups=False)
    assert keys.nunique() == 1
    return n


# ---- interrupts -------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_cli_run_leaves_valid_csv_and_summary(sig, tmp_path):
    """A real `bpcheck run trask --steps 60000`, interrupted once the CSV has data rows."""
    path = tmp_path / "r.csv"
    p = subprocess.Popen([EXE, "run", "trask", "--steps", "60000", "--chunk", "50", "--csv", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            partial = tmp_path / "r.csv.partial"  # rows stream here; r.csv appears at the end (atomic)
            if partial.exists() and partial.read_text().count("\n") > 1:
                break
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err, err
    df = pd.read_csv(path)
    assert tuple(df.columns) == COLUMNS
    n = complete_steps(df, TRASK_ROWS)
    assert 50 <= n < 60000
    name = signal.Signals(sig).name
    assert "trask: INTERRUPTED" in out and "PASS" not in out, out  # never PASS: the run was cut short
    assert err == f"interrupted by {name}; {path} holds every finished step\n", err  # one line, on stderr
    assert f"the report holds steps 1-{n}" in out  # the summary covers exactly what the CSV holds


class StopAt:
    """A manual side's step that gets a signal (or a KeyboardInterrupt) at step ``at``."""

    def __init__(self, at, how):
        self.at, self.how, self.n = at, how, 0

    def __call__(self, setup):
        m, step = setup.manual, setup.manual.step

        def interrupted_step(x, t):
            self.n += 1
            if self.n == self.at:
                if self.how == "keyboard":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), self.how)
            return step(x, t)

        m.step = interrupted_step


@pytest.mark.parametrize("how", ["keyboard", signal.SIGINT, signal.SIGTERM], ids=["KeyboardInterrupt", "SIGINT", "SIGTERM"])
def test_interrupt_writes_the_finished_steps_of_the_current_chunk(how, tmp_path):
    """Chunks of 5 steps, interrupted in step 8: steps 1-7 are in the CSV and the report,
    including the 2 finished steps of the chunk in progress."""
    path = tmp_path / "r.csv"
    with pytest.raises(Interrupted) as e:
        run(with_patch("trask", StopAt(8, how)), steps=20, chunk=5, csv=str(path))
    assert e.value.signum == (signal.SIGINT if how == "keyboard" else how)
    report = e.value.report
    assert complete_steps(report, TRASK_ROWS) == 7
    assert complete_steps(pd.read_csv(path), TRASK_ROWS) == 7
    assert report.attrs["halted"]["trask"].startswith("interrupted by")
    assert "the report holds steps 1-7" in format_summary(report, halted=report.attrs["halted"])


def test_signal_inside_a_write_waits_for_its_end():
    """A signal inside deferred() (the runner's compare-and-write of a chunk) is held
    until the block ends, so no chunk is half-written."""
    done = []
    with interrupt.handled():
        with pytest.raises(Interrupted) as e:
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("rest of the write")
    assert done == ["rest of the write"] and e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is not interrupt._handler  # restored


# ---- NaN and Inf -----------------------------------------------------------------------------

def poison(side, at, layer, quantity, value):
    """Put ``value`` into one quantity of one side's trace at step ``at``."""
    def patch(setup):
        obj = getattr(setup, side)
        step, n = obj.step, [0]

        def poisoned(x, t):
            tr = step(x, t)
            n[0] += 1
            if n[0] == at:
                tr["layers"][layer - 1][quantity] = torch.full_like(tr["layers"][layer - 1][quantity], value)
            return tr

        obj.step = poisoned
    return patch


def test_nan_in_manual_is_a_failed_row_naming_side_and_quantity():
    df = run(with_patch("relu-sigmoid", poison("manual", 3, 1, "grad_weight", float("nan"))), steps=6)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"], bad["note"]) == (3, 1, "grad_weight", "nonfinite:manual")
    assert df["step"].max() == 6  # the run went on
    at3 = df[df["step"] == 3].set_index(["layer", "quantity"])
    assert at3.loc[(2, "delta"), "passed"] and at3.loc[(1, "delta"), "passed"]  # only what NaN touched fails
    # the NaN gradient was applied: the weights and everything after carry NaN on both sides
    assert (df[df["step"] >= 4]["note"] == "nonfinite:both").any()


def test_inf_in_reference_is_named():
    df = run(with_patch("trask", poison("reference", 2, 2, "delta", float("inf"))), steps=4)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"], bad["note"]) == (2, 2, "delta", "nonfinite:reference")
    assert df["step"].max() == 4


def test_stop_on_nonfinite_ends_the_run_there(tmp_path):
    case = with_patch("relu-sigmoid", poison("manual", 3, 1, "grad_weight", float("nan")))
    path = tmp_path / "r.csv"
    df = run(case, steps=50, chunk=4, csv=str(path), stop_on_nonfinite=True)
    assert df["step"].max() == 3
    assert pd.read_csv(path)["step"].max() == 3
    assert df.attrs["halted"]["relu-sigmoid"] == "non-finite values at step 3 (stop_on_nonfinite)"


DIVERGE = ["run", "mlp", "-o", "sizes=(4, 8, 3)", "-o", "activations=('tanh', 'sigmoid')", "-o", "loss='bce'",
           "-o", "lr=1e300"]


def test_overflow_on_both_sides_through_the_cli(tmp_path, capsys):
    """lr 1e300 overflows; torch's BCE then refuses NaN input, which must not crash the run."""
    path = tmp_path / "r.csv"
    assert main(DIVERGE + ["--steps", "6", "--csv", str(path)]) == 1
    out = capsys.readouterr().out
    df = pd.read_csv(path, keep_default_na=False)
    assert df["step"].max() == 6
    assert set(df["note"]) >= {"nonfinite:manual", "nonfinite:both"}
    assert "[nonfinite:" in out  # the first failure names the side
    assert main(DIVERGE + ["--steps", "6", "--csv", str(path), "--force", "--stop-on-nonfinite"]) == 1
    out = capsys.readouterr().out
    df = pd.read_csv(path, keep_default_na=False)
    first = int(df[df["note"].str.startswith("nonfinite")]["step"].min())
    assert df["step"].max() == first
    assert f"ended early: non-finite values at step {first}" in out


# ---- a quantity of the wrong shape: a failed row, not a crash ---------------------------------

class FirstErrorPrevTransposed(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if layer == 1:  # unused below layer 1, so the run goes on
            q["error_prev"] = self.params[0]["weight"] @ delta.T  # (in, B), not (B, in)
        return q


def test_shape_slip_is_a_failed_row():
    def patch(setup):
        setup.manual.__class__ = FirstErrorPrevTransposed

    df = run(with_patch("relu-sigmoid", patch), steps=3)
    bad = first_failure(df)
    assert (bad["layer"], bad["quantity"]) == (1, "error_prev")
    assert bad["note"] == "shape:manual (3, 4) != reference (4, 3)"
    assert (~df["passed"]).sum() == 3  # that row only, at each step


# ---- bit-identical reruns -----------------------------------------------------------------------

def test_reruns_are_bit_identical(tmp_path):
    """The same command twice, in two processes: byte-identical CSVs (every case of `all`)."""
    texts = []
    for i in range(2):
        path = tmp_path / f"r{i}.csv"
        p = subprocess.run([EXE, "run", "all", "--steps", "20", "--dtype", "float32", "--csv", str(path)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        texts.append(path.read_text())
    rows = [list(csv.reader(io.StringIO(t))) for t in texts]
    assert rows[0][0] == list(COLUMNS) and len(rows[0]) > 1
    assert rows[0] == rows[1]  # every data column, byte for byte
    assert texts[0] == texts[1]
    df = pd.read_csv(tmp_path / "r0.csv")
    assert df["case"].nunique() >= 4 and df["max_abs_diff"].gt(0).any()  # real differences, reproduced exactly


def test_an_interrupt_before_any_finished_step_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    import bpcheck.compare.core.runner as runner

    def interrupted(*a, **k):
        raise Interrupted(signal.SIGINT, report=None)

    monkeypatch.setattr(runner, "run", interrupted)
    path = tmp_path / "r.csv"
    assert main(["run", "trask", "--csv", str(path)]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == f"interrupted by SIGINT; no step had finished, {path} was not written\n"
    assert not path.exists()


def test_a_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    """Importing bpcheck.cli (torch, pandas) takes a second or two: a Ctrl-C then is
    answered by the console script (bpcheck.entry): one line, exit 130, no traceback."""
    import types

    from bpcheck import entry

    class Starting(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "bpcheck.cli", Starting("bpcheck.cli"))
    assert entry.main(["list"]) == 130
    assert capsys.readouterr().err == "interrupted by SIGINT\n"


# ---- overflow: rows, not crashes ----------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_an_overflowing_update_is_failed_nonfinite_rows(dtype, mode):
    """lr=1e300: torch.optim refuses an alpha the dtype cannot hold ("value cannot be
    converted to type float without overflow") and the update overflows; the run goes
    on, every step after the overflow fails with a nonfinite note."""
    df = run("relu-sigmoid", steps=70, mode=mode, dtype=dtype, lr=1e300)  # 70: past the fast engines' minimum
    assert df["step"].max() == 70
    bad = df[~df["passed"]]
    assert not bad.empty and bad["note"].str.startswith("nonfinite").any()
    assert df[df["step"] == 70]["note"].str.startswith("nonfinite").any()


def test_an_overflowing_forward_before_bce_is_failed_rows(capsys):
    """Finite weights, a forward that overflows to NaN: binary_cross_entropy's "all elements
    of input should be between 0 and 1" is that step's NaN reference, not a crash."""
    rc = main(["run", "mlp", "--steps", "50", "-o", "activations=('relu','relu','sigmoid')", "-o", "loss=bce",
               "-o", "lr=1e300", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert "mlp: FAIL" in out and "nonfinite" in out and "Traceback" not in err


def test_stop_on_nonfinite_after_an_overflowing_update():
    df = run("relu-sigmoid", steps=70, dtype="float32", lr=1e300, stop_on_nonfinite=True)
    at = df.loc[df["note"].str.startswith("nonfinite"), "step"].min()
    assert df["step"].max() == at
    assert df.attrs["halted"]["relu-sigmoid"] == f"non-finite values at step {at} (stop_on_nonfinite)"


def test_the_plot_and_the_report_read_a_diverged_report(tmp_path, capsys):
    """A report of Inf and huge differences (free mode, lr=1e300) is drawn (no OverflowError
    in matplotlib's log ticks) and summarised again."""
    path, png = tmp_path / "d.csv", tmp_path / "d.png"
    assert main(["run", "relu-sigmoid", "--mode", "free", "--steps", "100", "-o", "lr=1e300", "--csv", str(path),
                 "--quiet"]) == 1
    assert main(["plot", str(path), "-o", str(png)]) == 0
    assert png.stat().st_size > 0
    assert main(["report", str(path)]) == 1
    assert "nonfinite" in capsys.readouterr().out
