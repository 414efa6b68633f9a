"""Property: whatever the command line, `bpcheck` ends with exit 0, 1 or 2, never a
traceback; exit 2 is one line on stderr with nothing written; and no file is left
that was not asked for (the report, its settings sidecar, the plot).

The CLI's main runs in-process in a fresh working folder per example; the steps are
always few (a valid run takes milliseconds), so that 500 examples stay fast."""
import contextlib
import io
import os
import tempfile

from hypothesis import HealthCheck, event, given, settings, strategies as st

from bpcheck.cli import main

CASES = ["trask"] * 4 + ["mlp"] * 3 + ["relu-sigmoid", "sigmoid221-sgd", "chain-rule", "conv", "nosuch", "", "x.py:c"]
KEYS = ["hidden", "lr", "x", "t", "weights", "activations", "sizes", "loss", "optimizer", "batch", "bias", "bogus",
        "seed", "", "1x"]
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "3", "2000000000", "1e300", "-1e300", "nan", "inf", "[]", "()", "[[1, 2]", "None",
                     "True", "'relu'", "relu", "bce", "sgd", "rmsprop", "('relu',)", "('relu', 'sigmoid')",
                     "(3, 4, 1)", "[[0.0, 1.0, 1.0]]", "[[1.0], [0.0], [1.0], [0.0]]", "{}", "b'x'", "1j", "",
                     "4 4", "__import__('os')", "'" , "((", "1e-7", "0.5"]),
    st.integers(-3, 12).map(str),
    st.text(alphabet="[](),.'\"01e-+ abz_", max_size=8),
)
OUTPUTS = ["r.csv", "r.parquet", "r.pq", "r.svg", "r.png", "", "r.csv/", "sub/r.csv", ".", "r.txt"]


@st.composite
def command_lines(draw):
    argv = ["run", draw(st.sampled_from(CASES)), "--quiet"]
    argv += ["--steps", draw(st.sampled_from(["1", "2", "3"] * 6 + ["0", "-1", "ten", "1e3", "", "2.5"]))]
    for flag, values in [("--mode", ["lockstep", "free", "sideways"]),
                         ("--dtype", ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "int32", "x"]),
                         ("--chunk", ["1", "2", "0", "-3", "z"]), ("--seed", ["0", "7", "-1", "x", "4294967296"]),
                         ("--csv", OUTPUTS), ("--parquet", OUTPUTS), ("--plot", OUTPUTS),
                         ("--rtol", ["1e-7", "-1", "nan"]), ("--atol", ["1e-7", "x"])]:
        if draw(st.integers(0, 5)) == 0:
            argv += [flag, draw(st.sampled_from(values))]
    for flag in ("--force", "--stop-on-nonfinite", "--straightforward"):
        if draw(st.integers(0, 3)) == 0:
            argv.append(flag)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        argv += ["-o", f"{draw(st.sampled_from(KEYS))}={draw(VALUES)}"]
    return argv


def asked(argv):
    """The files a command line asks for: its outputs and a report's settings sidecar."""
    files = set()
    for flag in ("--csv", "--parquet", "--plot"):
        if flag in argv:
            path = argv[argv.index(flag) + 1]
            files.add(os.path.normpath(path))
            if flag != "--plot":
                files.add(os.path.normpath(path + ".settings.json"))
    return files


def left(folder):
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
@given(command_lines())
def test_any_command_line_ends_in_0_1_or_2_without_a_traceback(argv):
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.mkdir(os.path.join(folder, "sub"))
        os.chdir(folder)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as e:  # argparse's own exits (--help) count too
                    rc = e.code
            files = left(folder)
        finally:
            os.chdir(here)
    err = err.getvalue()
    event(f"exit {rc}")
    assert rc in (0, 1, 2), (argv, rc, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if rc == 2:
        assert err.splitlines()[-1].startswith("bpcheck: error: "), (argv, err)
        assert files == set(), (argv, files)
    assert files <= asked(argv), (argv, files)
