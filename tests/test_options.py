"""Case options (-o KEY=VALUE), --print-trace, and what `run all` runs."""
import pandas as pd
import pytest

from bpcheck.cases import CASES, correct_cases
from bpcheck.cli import main, parse_options
from bpcheck.compare import UsageError, run


def test_parse_options_literals_and_strings():
    got = parse_options(["lr=0.5", "hidden=8", "recompute=True", "stop_below=None", "sizes=(4, 8, 1)",
                         "vary=wb", "loss='sse'", "name=a=b"])
    assert got == {"lr": 0.5, "hidden": 8, "recompute": True, "stop_below": None, "sizes": (4, 8, 1),
                   "vary": "wb", "loss": "sse", "name": "a=b"}


@pytest.mark.parametrize("items", [["lr"], ["=3"], ["1x=3"], ["lr=1", "lr=2"]])
def test_parse_options_refuses(items):
    with pytest.raises(UsageError):
        parse_options(items)


@pytest.mark.parametrize("argv, words", [
    (["run", "chain-rule", "-o", "nope=1"], "no option 'nope'"),
    (["run", "chain-rule", "-o", "seed=1"], "--seed"),
    (["run", "chain-rule", "-o", "vary=q"], "vary must be"),
    (["run", "trask", "-o", "hidden=abc", "--steps", "2"], "option hidden must be a positive integer, got 'abc'"),
    (["run", "all", "-o", "vary=wb", "--steps", "2"], "no option 'vary'"),
    (["run", "chain-rule", "-o", "vary"], "KEY=VALUE"),
])
def test_bad_option_is_one_line_exit_2_nothing_written(argv, words, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    assert main(argv + ["--csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not csv.exists()


def test_option_reaches_build(capsys):
    assert main(["run", "sigmoid221-sgd", "-o", "stop_below=None", "--steps", "7"]) == 0
    out = capsys.readouterr().out
    assert "(7 steps," in out and "stopped" not in out
    df = run("sigmoid221-rmsprop", stop_below=1e-3)
    assert df.attrs["stopped"]["sigmoid221-rmsprop"] == {"manual": 4, "reference": 4}  # E(step 4) = 4.6e-4


def test_print_trace_only_for_cases_that_define_it(capsys):
    assert main(["run", "trask", "--steps", "2", "--print-trace"]) == 2  # a flag that would do nothing
    err = capsys.readouterr().err
    assert err.startswith("bpcheck: error: --print-trace does nothing for trask") and err.count("\n") == 1
    assert main(["run", "sigmoid221-rmsprop", "--print-trace"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step = 1: yp = 0.6902834929076443") and out[11].startswith("sigmoid221-rmsprop: PASS")


def test_run_all_runs_every_correct_case_and_no_as_written(tmp_path, capsys):
    csv = tmp_path / "all.csv"
    assert main(["run", "all", "--steps", "2", "--csv", str(csv)]) == 0
    ran = set(pd.read_csv(csv)["case"])
    assert ran == {c.name for c in correct_cases()}
    assert {"sigmoid221-sgd", "sigmoid221-rmsprop", "chain-rule"} <= ran
    assert not any(CASES[n].as_written for n in ran)


def test_list_marks_every_as_written_case(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = {l.split()[0] for l in lines if "[as written" in l}
    assert written == {n for n, c in CASES.items() if c.as_written} == {
        "sigmoid221-sgd-as-written", "sigmoid221-rmsprop-as-written",
        "relu-sigmoid-as-written", "sigmoid-bias-as-written"}
    assert all(n.endswith("-as-written") for n in written)


@pytest.mark.parametrize("case", sorted(n for n, c in CASES.items() if c.as_written))
def test_every_as_written_case_exits_1_with_its_departure_located(case, capsys):
    assert main(["run", case, "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert f"  first failure: case {case} step 1 layer " in out


def test_summary_says_when_a_side_never_met_its_stop_rule(capsys):
    df = run("sigmoid221-sgd", steps=20)
    assert df.attrs["stopped"]["sigmoid221-sgd"] == {"manual": False, "reference": False}
    assert main(["run", "sigmoid221-sgd", "--steps", "20"]) == 0
    assert "  stopped: manual did not stop, reference did not stop" in capsys.readouterr().out
    assert run("trask", steps=2).attrs["stopped"]["trask"] == {"manual": None, "reference": None}
