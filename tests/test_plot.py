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


def quantity_lines(ax):
    """{quantity: Line2D} of the lines drawn in data coordinates (the tolerance's label
    starts with "tolerance"; a failing quantity's label is "q: FAIL at ...")."""
    return {ln.get_label().split(":")[0].split(" (")[0]: ln for ln in ax.get_lines()
            if ln.get_transform() == ax.transData and not ln.get_label().startswith(("_", "tolerance", "passing"))}


def strip(ax, kind, q):
    """The markers of quantity q in the strip ``kind`` (zeros at the bottom, high at the top)."""
    found = [ln for ln in ax.get_lines() if ln.get_gid() == f"{kind}:{q}"]
    return found[0] if found else None


def tolerance_line(ax):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("tolerance")]
    return line


def panel_title(fig, i):
    return fig.get_axes()[i].get_title()


def run_titles(fig):
    return [sub._suptitle.get_text() for sub in fig.subfigs]


def folded(df, layer, q, column="margin"):
    rows = df[(df.layer == layer) & (df.quantity == q)]
    return rows.groupby("step")[column].max()


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


def test_passing_run_one_axes_per_layer_titled_pass_margin_against_step():
    df = run("sigmoid-bias", steps=5)
    assert df["atol"].nunique() > 1  # the yardstick's per-row atol: one dashed atol could not be right
    fig = plot_report(df)
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["PASS: loss and output", "PASS: layer 1", "PASS: layer 2"]
    assert run_titles(fig)[0].startswith("sigmoid-bias (lockstep, cpu, float64, default seed): PASS")
    for ax, layer in zip(axes, (0, 1, 2)):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and "margin" in ax.get_ylabel()
        assert list(tolerance_line(ax).get_ydata()) == [1, 1]  # every row's own allowance is margin 1
        quantities = list(dict.fromkeys(df[df.layer == layer]["quantity"]))
        lines = quantity_lines(ax)
        assert list(lines) == quantities
        assert len({ln.get_color() for ln in lines.values()}) == len(quantities)
        for q in quantities:  # each line is the report's margin at its non-zero steps
            m = folded(df, layer, q)
            np.testing.assert_array_equal(lines[q].get_xdata(), m.index[m > 0])
            np.testing.assert_array_equal(lines[q].get_ydata(), m[m > 0])
            assert np.all(lines[q].get_ydata() <= 1)


def test_points_above_the_line_are_exactly_the_failed_steps():
    df = broken_report(steps=6)
    ax = plot_report(df).get_axes()[2]
    for q, line in quantity_lines(ax).items():
        failed = ~df[(df.layer == 2) & (df.quantity == q)].groupby("step")["passed"].all()
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        np.testing.assert_array_equal(y > 1, failed.loc[x].to_numpy())


def test_each_failing_quantity_has_its_own_colour_marker_and_label_and_the_first_is_annotated():
    df = broken_report(steps=6)
    fig = plot_report(df)
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert titles == ["PASS: loss and output", "FAIL: layer 1", "FAIL: layer 2"]
    head = run_titles(fig)[0]
    first = df[~df.passed].iloc[0]
    assert head.startswith("sigmoid-bias (lockstep, cpu, float64, default seed): FAIL")
    assert f"first failure: step 1, layer 2, delta, margin {first['margin']:.3g}" in head
    ax = fig.get_axes()[2]
    bad = df[(df.layer == 2) & ~df.passed]
    failing = list(dict.fromkeys(bad["quantity"]))
    assert len(failing) >= 3
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    styled = []
    for q in failing:
        label = f"{q}: FAIL at {bad[bad.quantity == q].step.nunique()} of 6 steps"
        ln = lines[label]
        styled.append((ln.get_color(), ln.get_marker()))
        x = np.asarray(ln.get_xdata())
        assert list(x[ln.get_markevery()]) == sorted(bad[bad.quantity == q]["step"])  # a marker on each failed step
    assert len({c for c, _ in styled}) == len(failing) and len({m for _, m in styled}) == len(failing)
    assert all(c not in ("0.6", "grey", "gray") for c, _ in styled)
    passing = [q for q in dict.fromkeys(df[df.layer == 2]["quantity"]) if q not in failing]
    if passing:  # quantities that pass beside failing ones: grey, named in one entry
        assert "passing: " + ", ".join(passing) in lines
    (note,) = [t for t in ax.texts if t.get_text().startswith("first failure")]
    assert note.get_text() == (f"first failure of the run: step 1, delta\nmargin {first['margin']:.3g}, "
                               f"|m - r| {first['max_abs_diff']:.3g}")
    assert note.xy[0] == 1
    (other,) = [t for t in fig.get_axes()[1].texts if t.get_text().startswith("first failure")]
    assert other.get_text().startswith("first failure here: step 1, ")


def test_exact_zeros_are_a_rug_below_the_data_not_lines_to_a_floor():
    df = run("sigmoid-bias", steps=6)
    at = (df.layer == 1) & (df.quantity == "delta") & df.step.isin([2, 4])
    df.loc[at, ["margin", "max_abs_diff"]] = 0.0
    ax = plot_report(df).get_axes()[1]
    lowest = min(folded(df, 1, q)[lambda m: m > 0].min() for q in df[df.layer == 1].quantity.unique())
    for line in quantity_lines(ax).values():  # no point of any line below the least non-zero margin
        assert min(line.get_ydata()) >= lowest
    delta = quantity_lines(ax)["delta"]
    assert list(delta.get_xdata()) == [1, 3, 5, 6] and "(2 exact 0)" in delta.get_label()
    rug = strip(ax, "zeros", "delta")
    assert list(rug.get_xdata()) == [2, 4] and rug.get_linestyle() == "None" and rug.get_color() == delta.get_color()
    bottom, top = np.log10(ax.get_ylim())
    assert max(rug.get_ydata()) < (np.log10(lowest) - bottom) / (top - bottom)  # in axes fraction, under the data
    assert strip(ax, "zeros", "error_prev") is None  # no zeros, no rug


def test_a_panel_of_exact_zeros_says_so():
    df = run("sigmoid-bias", steps=3)
    df.loc[df.layer == 1, ["margin", "max_abs_diff"]] = 0.0
    ax = plot_report(df).get_axes()[1]
    assert all(len(ln.get_xdata()) == 0 for ln in quantity_lines(ax).values())
    assert "every row exact: m == r at all 3 steps" in [t.get_text() for t in ax.texts]
    assert "every row exact" not in " ".join(t.get_text() for t in plot_report(df).get_axes()[2].texts)


def test_non_finite_and_huge_margins_sit_in_the_top_strip():
    df = broken_report(steps=5)
    at = (df.layer == 2) & (df.quantity == "delta")
    df.loc[at & (df.step == 3), "margin"] = np.inf
    df.loc[at & (df.step == 4), "margin"] = np.nan
    df.loc[at & (df.step == 5), "margin"] = 1e300
    fig = plot_report(df)
    fig.canvas.draw()  # the tick formatter must not overflow
    ax = fig.get_axes()[2]
    assert list(quantity_lines(ax)["delta"].get_xdata()) == [1, 2]
    assert list(strip(ax, "high", "delta").get_xdata()) == [3, 4, 5]
    assert ax.get_ylim()[1] < 1e100


def test_legends_sit_outside_the_axes_clear_of_the_tolerance_line():
    fig = plot_report(broken_report(steps=3))
    fig.canvas.draw()
    for ax in fig.get_axes():
        box, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
        assert not box.overlaps(legend)
        y = ax.transData.transform((1, 1))[1]  # the tolerance line lies inside the axes
        assert box.y0 < y < box.y1


def test_named_sites_title_their_panels():
    df = run("sigmoid-bias", steps=2)
    df["site"] = df["layer"].map({0: "", 1: "fc1", 2: "layer2"})
    titles = [ax.get_title() for ax in plot_report(df).get_axes()]
    assert titles == ["PASS: loss and output", "PASS: fc1 (layer 1)", "PASS: layer 2"]


def test_many_panels_wrap_into_rows():
    df = run("sigmoid-bias", steps=2)
    more = [df[df.layer > 0].assign(layer=df.layer + 2 * k) for k in range(1, 4)]
    fig = plot_report(pd.concat([df, *more], ignore_index=True))
    axes = fig.get_axes()
    assert len(axes) == 9
    rows = {ax.get_subplotspec().rowspan.start for ax in axes}
    cols = {ax.get_subplotspec().colspan.start for ax in axes}
    assert rows == {0, 1, 2} and cols == {0, 1, 2, 3}


def test_several_runs_get_a_subfigure_each_and_time_steps_are_folded():
    a, b = run("trask", steps=3), run("trask", steps=3, dtype="float32")
    fig = plot_report(pd.concat([a, b], ignore_index=True))
    heads = run_titles(fig)
    assert len(heads) == 2 and "float64" in heads[0] and "float32" in heads[1]
    assert [len(sub.axes) for sub in fig.subfigs] == [3, 3]
    # a recurrent layer's rows (one per time step) give one line per quantity: the max over time
    t0, t1 = a.copy(), a.copy()
    t0["time"], t1["time"] = 0, 1
    t1["margin"] = t1["margin"] * 3 + 1e-9
    t0.loc[t0.step == 2, "passed"] = False
    ax = plot_report(pd.concat([t0, t1], ignore_index=True)).get_axes()[1]
    assert ax.get_title() == "FAIL: layer 1"
    delta = quantity_lines(ax)["delta"]
    np.testing.assert_allclose(delta.get_ydata(), t1[(t1.layer == 1) & (t1.quantity == "delta")]["margin"])
    assert delta.get_label().startswith("delta: FAIL at 1 of 3 steps")


def test_failing_styles_are_distinct():
    from bpcheck.plot import failing_style, passing_style

    assert len({failing_style(k) for k in range(64)}) == 64
    assert len({passing_style(k) for k in range(27)}) == 27


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
