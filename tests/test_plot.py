"""Plots and re-read reports: checked by their content (axes, lines, labels, scales), and
the CLI's plot, report and run --plot, including bad input (exit 2, nothing written)."""
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from bpcheck.cases import get_case
from bpcheck.cli import main
from bpcheck.compare import run
from bpcheck.compare.diagnosis.summary import format_summary
from bpcheck.manual.activations import Sigmoid
from bpcheck.plot import plot_report
from bpcheck.report import read_report


def lines_by_label(ax):
    return {ln.get_label(): ln for ln in ax.get_lines()}


def broken_report(steps=4):
    class NoDerivative(Sigmoid):
        def delta(self, error, a, z):
            return error  # missing a(1-a)

    base = get_case("sigmoid-bias")

    def build(**kw):
        s = base.build(**kw)
        s.manual.acts[1] = NoDerivative()
        return s

    return run(replace(base, build=build), steps=steps)


def test_one_axes_per_layer_one_line_per_quantity_log_scale():
    df = run("sigmoid-bias", steps=5, tolerance="torch")  # issue 13: the dashed line is a constant atol's
    fig = plot_report(df)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert [a.get_title() for a in axes] == ["sigmoid-bias: loss and output", "sigmoid-bias: layer 1",
                                             "sigmoid-bias: layer 2"]
    for ax, layer in zip(axes, (0, 1, 2)):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "step"
        quantities = list(dict.fromkeys(df[df.layer == layer]["quantity"]))
        lines = lines_by_label(ax)
        tol = [k for k in lines if k.startswith("atol")]
        assert set(lines) == set(quantities) | set(tol) and len(tol) == 1  # no "failed" marks: all passed
        assert list(lines[tol[0]].get_ydata()) == [1e-7, 1e-7]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == quantities + tol
        floor = float(ax.get_ylabel().split("0 at ")[1].rstrip(")"))
        for q in quantities:  # each line is the report's column, exact zeros raised to the floor
            rows = df[(df.layer == layer) & (df.quantity == q)]
            assert list(lines[q].get_xdata()) == [1, 2, 3, 4, 5]
            np.testing.assert_array_equal(lines[q].get_ydata(), np.maximum(rows["max_abs_diff"], floor))


def test_failed_rows_are_marked():
    df = broken_report()
    ax2 = plot_report(df).get_axes()[2]
    failed = lines_by_label(ax2)["failed"]
    bad = df[(df.layer == 2) & ~df.passed]
    assert len(failed.get_xdata()) == len(bad) and failed.get_marker() == "x" and failed.get_color() == "red"
    assert max(failed.get_ydata()) == bad["max_abs_diff"].max() > 1e-7


def test_several_runs_get_a_row_each_and_time_steps_are_folded():
    a, b = run("trask", steps=3), run("trask", steps=3, dtype="float32")
    fig = plot_report(pd.concat([a, b], ignore_index=True))
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert len(titles) == 6 and "trask (lockstep, cpu, float32): layer 2" in titles
    # a recurrent layer's rows (one per time step) give one line per quantity: the max over time
    t0, t1 = a.copy(), a.copy()
    t0["time"], t1["time"] = 0, 1
    t1["max_abs_diff"] = t1["max_abs_diff"] * 3 + 1e-9
    ax = plot_report(pd.concat([t0, t1], ignore_index=True)).get_axes()[1]
    delta = lines_by_label(ax)["delta"]
    np.testing.assert_allclose(delta.get_ydata(), t1[(t1.layer == 1) & (t1.quantity == "delta")]["max_abs_diff"])


def test_cli_run_plot_report_roundtrip(tmp_path, capsys):
    csv, png, png2 = tmp_path / "r.csv", tmp_path / "r.png", tmp_path / "again.png"
    assert main(["run", "sigmoid-bias", "--steps", "6", "--csv", str(csv), "--plot", str(png)]) == 0
    run_out = capsys.readouterr().out
    img = imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600 and img.std() > 0  # drawn, not blank
    assert main(["report", str(csv)]) == 0
    assert run_out.startswith(capsys.readouterr().out)  # the same summary, read back from the CSV
    assert main(["plot", str(csv), "-o", str(png2)]) == 0
    assert imread(png2).shape == img.shape


def test_report_reads_back_the_dataframe(tmp_path):
    df = broken_report(steps=3)
    df.to_csv(tmp_path / "r.csv", index=False)
    back = read_report(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["passed"].dtype == bool and str(back["time"].dtype) == "Int64"
    assert format_summary(back) == format_summary(df)


def test_cli_report_of_a_failing_run_exits_1(tmp_path, capsys):
    broken_report(steps=2).to_csv(tmp_path / "r.csv", index=False)
    assert main(["report", str(tmp_path / "r.csv")]) == 1
    assert "first failure: case sigmoid-bias step 1 layer 2 delta" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["report", "{d}/missing.csv"], "report {d}/missing.csv does not exist"),
    (["plot", "{d}/missing.csv", "-o", "{d}/p.png"], "report {d}/missing.csv does not exist"),
    (["plot", "{d}/bad.csv", "-o", "{d}/p.png"], "report {d}/bad.csv is not a bpcheck CSV: it lacks the columns"),
    (["plot", "{d}/good.csv", "-o", "{d}/no/p.png"], "cannot write plot {d}/no/p.png: folder {d}/no does not exist"),
    (["plot", "{d}/good.csv", "-o", "{d}/p.xyz"], "cannot write plot {d}/p.xyz: unknown image type 'xyz'"),
    (["plot", "{d}/good.csv", "-o", "{d}/old.png"], "{d}/old.png exists; pass --force"),
    (["run", "trask", "--steps", "2", "--csv", "{d}/new.csv", "--plot", "{d}/no/p.png"], "folder {d}/no does not exist"),
    (["plot", "{d}/good.csv"], "the following arguments are required: -o/--output"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, argv, message):
    d = str(tmp_path)
    run("trask", steps=2).to_csv(tmp_path / "good.csv", index=False)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "old.png").write_bytes(b"old")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([a.format(d=d) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bpcheck: error: ") and message.format(d=d) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "old.png").read_bytes() == b"old"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_exit_2(tmp_path, capsys):
    run("trask", steps=2).to_csv(tmp_path / "good.csv", index=False)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["plot", str(tmp_path / "good.csv"), "-o", str(locked / "p.png")]) == 2
    assert f"folder {locked} is not writable" in capsys.readouterr().err
    assert list(locked.iterdir()) == []
