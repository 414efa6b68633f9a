"""Bounded memory (compare/io/keep.py): with a target the rows stream to disk and the
run keeps a summary of bounded size whose printed summary is the full report's;
without a target a report that would not fit in memory is refused at start."""
import pandas as pd
import pytest
import torch

from bpcheck.cli import main
from bpcheck.compare import UsageError, run
from bpcheck.compare.diagnosis.summary import format_summary
from bpcheck.compare.io import keep


def _summary(df):
    return format_summary(df, **{k: df.attrs.get(k) for k in ("stopped", "origin", "halted")})


@pytest.mark.parametrize("case,kw", [("trask", {}), ("relu-sigmoid-as-written", {}),
                                     ("relu-sigmoid", dict(dtype="float32", lr=1e300))])
def test_the_summary_prints_as_the_full_report_and_the_file_holds_every_row(case, kw, tmp_path):
    full = run(case, steps=300, chunk=40, **kw)
    path = tmp_path / "r.csv"
    small = run(case, steps=300, chunk=40, csv=path, keep="summary", **kw)
    assert small.attrs["kept"] == "summary" and small.attrs["rows"] == len(full) and len(small) < len(full) / 5
    assert _summary(small) == _summary(full)
    assert small.attrs["origin"] == full.attrs["origin"]
    assert len(pd.read_csv(path)) == len(full)


def test_the_summary_does_not_grow_with_the_steps(tmp_path):
    sizes = [len(run("trask", steps=n, chunk=50, csv=tmp_path / f"{n}.csv", keep="summary")) for n in (200, 2000)]
    # at most: the first and last step's rows, and per quantity its worst two and a kink row
    assert max(sizes) <= 2 * 10 + 3 * 10 and sizes[1] <= sizes[0] + 5


def test_a_target_and_many_steps_keep_a_summary_by_default(monkeypatch, tmp_path):
    monkeypatch.setattr(keep, "SUMMARY_STEPS", 100)
    assert run("trask", steps=150, csv=tmp_path / "a.csv").attrs["kept"] == "summary"
    assert "kept" not in run("trask", steps=100, csv=tmp_path / "b.csv").attrs  # few steps: every row
    assert "kept" not in run("trask", steps=150).attrs  # no target: every row
    with pytest.raises(UsageError, match="keep='summary' needs a target"):
        run("trask", steps=10, keep="summary")


def test_a_report_that_would_not_fit_is_refused_at_start(tmp_path, capsys):
    with pytest.raises(UsageError, match=r"a report of 1000000000000 steps needs about \d+\.\d GiB in memory"):
        run("trask", steps=10**12)
    assert main(["run", "trask", "--steps", "1000000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give a target (--csv/--parquet, csv=)" in err


def test_the_cli_plots_a_summary_run_from_its_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(keep, "SUMMARY_STEPS", 10)
    png = tmp_path / "r.png"
    assert main(["run", "trask", "--steps", "40", "--csv", str(tmp_path / "r.csv"), "--plot", str(png), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trask: PASS  (40 steps" in out and "0/40" in out and png.stat().st_size > 0


def _step_bytes(block):
    """Bytes of one step's values on both sides of a block (stacked or listed per step)."""
    total = 0
    for side in ("manual", "reference"):
        for v in block[side].values():
            total += v.nbytes // max(1, v.shape[0]) if torch.is_tensor(v) else v[0].nbytes
    return total


@pytest.mark.parametrize("engine", ["step", "replay", "free"])
def test_every_engine_bounds_a_chunk_by_bytes(engine, monkeypatch):
    """A chunk of recorded steps holds at most MEMORY_BUDGET bytes of compared values (the
    step engine half of it: its next step would not fit, and the probe and the element test
    take the other half), whatever ``chunk`` says: a wide network's 2048-step chunk would
    be gigabytes. The free engine's manual chunks were bounded by count only."""
    from bpcheck.cases import get_case
    from bpcheck.compare.core import runner
    from bpcheck.compare.engines import replay

    budget = 1 << 20
    monkeypatch.setattr(replay, "MEMORY_BUDGET", budget)
    monkeypatch.setattr(runner, "MEMORY_BUDGET", budget)
    s = get_case("mlp").build(dtype=torch.float64, device=torch.device("cpu"), seed=0, sizes=(23, 100, 10),
                              activations=("tanh", "softmax"), loss="cross_entropy_probs")
    if engine == "step":
        blocks = list(runner._steps(s, "lockstep", 40, 2048, {"manual": None, "reference": None}))
    else:
        make = replay.replay_blocks if engine == "replay" else replay.free_blocks
        blocks = list(make(s, 40, 2048, numpy=False))
    assert sum(len(b["step"]) for b in blocks) == 40 and len(blocks) > 2
    for b in blocks:
        one = _step_bytes(b)
        assert len(b["step"]) * one <= (budget // 2 if engine == "step" else budget), (engine, len(b["step"]), one)
