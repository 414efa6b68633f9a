"""The manual trajectory in a forked process (compare.trajectory) gives the report of the
straightforward path, and keeps the runner's contracts: errors raised, interrupts
answered with every finished step, no process left behind.

FORK_MIN_STEPS is lowered so that short runs fork; trask is the numpy twin's case.
"""
import gc
import os
import signal

import pandas as pd
import pytest
import torch

from bpcheck.compare import run
from bpcheck.compare.engines import manualrun
from bpcheck.compare.engines import replay
from bpcheck.compare.io.interrupt import Interrupted
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual import MLP
from bpcheck.manual.activations import Sigmoid

from mutants import raises_on_call
from test_fast_paths import CHUNK, EXACT, STEPS, NoDerivative, assert_same_report


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    monkeypatch.setattr(replay, "FORK_MIN_STEPS", 1)
    yield
    with pytest.raises(ChildProcessError):  # every forked child was reaped
        os.waitpid(-1, os.WNOHANG)


@pytest.mark.parametrize("mode", ["lockstep", "free"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forked_trajectory_gives_the_straightforward_report(mode, dtype):
    slow = run("trask", steps=STEPS, mode=mode, dtype=dtype, chunk=CHUNK, fast=False)
    fast = run("trask", steps=STEPS, mode=mode, dtype=dtype, chunk=CHUNK)
    assert fast.attrs["engine"] == ("replay" if mode == "lockstep" else "free") + "+numpy+fork"
    assert_same_report(fast, slow, dtype)


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_a_broken_formula_in_the_forked_trajectory_is_caught(mode, monkeypatch):
    monkeypatch.setattr(Sigmoid, "delta", NoDerivative.delta)  # the built-in class: the numpy twin runs it
    df = run("trask", steps=STEPS, chunk=CHUNK, mode=mode)
    assert df.attrs["engine"].endswith("+fork")
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 2, "delta")


def count_updates(monkeypatch, at, exc):
    """MLP.update raises ``exc`` on its ``at``-th call (in whichever process steps it)."""
    monkeypatch.setattr(MLP, "update", raises_on_call(MLP.update, at, exc))


def test_an_error_in_the_child_is_raised_here(monkeypatch):
    count_updates(monkeypatch, 2 * CHUNK + 3, ValueError("update failed"))
    with pytest.raises(ValueError, match="update failed"):
        run("trask", steps=STEPS, chunk=CHUNK)


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_an_interrupt_in_the_child_keeps_every_finished_step(monkeypatch, tmp_path, mode):
    count_updates(monkeypatch, 2 * CHUNK + 5, KeyboardInterrupt())
    path = tmp_path / "r.csv"
    with pytest.raises(KeyboardInterrupt):
        run("trask", steps=STEPS, chunk=CHUNK, csv=path, mode=mode)
    got = pd.read_csv(path)
    assert sorted(set(got["step"])) == list(range(1, 2 * CHUNK + 5))
    assert len(got) == 10 * (2 * CHUNK + 4)


def test_sigint_while_the_child_runs_ahead(monkeypatch, tmp_path):
    """A Ctrl-C reaches this process while autograd runs on the second chunk and the
    child steps ahead: both chunks are finished on both sides, so both are written and
    Interrupted carries their rows; the child is killed (the fixture checks that none
    is left)."""
    orig, calls = replay.evaluate, [0]

    def evaluate(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(*a, **k)

    monkeypatch.setattr(replay, "evaluate", evaluate)
    path = tmp_path / "r.csv"
    with pytest.raises(Interrupted) as e:
        run("trask", steps=STEPS, chunk=CHUNK, csv=path)
    assert sorted(set(pd.read_csv(path)["step"])) == list(range(1, 2 * CHUNK + 1))
    assert sorted(set(e.value.report["step"])) == list(range(1, 2 * CHUNK + 1))


def test_no_process_to_be_had_steps_here(monkeypatch):
    def refuse():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    slow = run("trask", steps=STEPS, chunk=CHUNK, fast=False)
    assert_same_report(run("trask", steps=STEPS, chunk=CHUNK), slow, "float64")


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_nonfinite_values_from_the_forked_trajectory(mode, tmp_path):
    """lr 1e300 overflows (the child's numpy does so silently) and torch's BCE refuses
    NaN input: the same rows, notes and stop as the straightforward path."""
    o = dict(sizes=(4, 8, 3), activations=("tanh", "sigmoid"), loss="bce", lr=1e300)
    fast = run("mlp", steps=STEPS, chunk=CHUNK, mode=mode, **o)
    slow = run("mlp", steps=STEPS, chunk=CHUNK, mode=mode, fast=False, **o)
    assert fast.attrs["engine"].endswith("+numpy+fork")
    pd.testing.assert_frame_equal(fast[EXACT], slow[EXACT])
    path = tmp_path / "r.csv"
    cut = run("mlp", steps=STEPS, chunk=CHUNK, mode=mode, csv=path, stop_on_nonfinite=True, **o)
    assert cut.attrs["halted"] == run("mlp", steps=STEPS, chunk=CHUNK, mode=mode, fast=False,
                                      stop_on_nonfinite=True, **o).attrs["halted"]
    assert cut["step"].max() == pd.read_csv(path)["step"].max() < STEPS


def test_the_run_leaves_threads_and_collector_as_they_were():
    threads = torch.get_num_threads()
    gc.freeze()  # a caller's own frozen objects (some may be freed meanwhile, by their count)
    try:
        run("trask", steps=STEPS, chunk=CHUNK)
        assert torch.get_num_threads() == threads
        assert gc.get_freeze_count() > 0  # not unfrozen by the run
    finally:
        gc.unfreeze()
    run("trask", steps=STEPS, chunk=CHUNK)
    assert gc.get_freeze_count() == 0


def test_chunks_shrink_to_the_memory_budget(monkeypatch):
    """A lean chunk's values, traces included, fit three times over in the budget: with
    10 kB (trask's step holds about 0.7 kB) the child steps a few steps per chunk, and
    the report is still the straightforward one."""
    sizes, evaluate = [], replay.evaluate

    def spy(batched, before, n, *rest):
        sizes.append(n)
        return evaluate(batched, before, n, *rest)

    monkeypatch.setattr(replay, "evaluate", spy)
    monkeypatch.setattr(manualrun, "MEMORY_BUDGET", 10_000)
    fast = run("trask", steps=STEPS, chunk=CHUNK)
    assert fast.attrs["engine"].endswith("+fork")
    assert 1 < max(sizes) < 10 and sum(sizes) == STEPS
    assert_same_report(fast, run("trask", steps=STEPS, chunk=CHUNK, fast=False), "float64")
