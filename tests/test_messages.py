"""The command line speaks in one voice (issue "First contact"): every error and
interruption is ONE line on stderr; bad input exits 2; a case's options can be learnt
from the command line; an interrupted run is never called PASS; ``bpcheck report``
prints what ``run`` printed; a pytest failure shows bpcheck's message, not its frames.

Each test would have caught the defect it names (the message or stream before the fix
is in its docstring)."""
import os
import pathlib
import signal
import subprocess
import sys
from contextlib import contextmanager
from importlib.metadata import version

import pytest

from bpcheck.cases import CASES
from bpcheck.cases.options import Option, defaults
from bpcheck.cli import main
from bpcheck.compare import run
from bpcheck.compare.core.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli(argv, capsys):
    """-> (exit code, stdout, stderr) of ``bpcheck ARGV`` in this process."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's --help and --version
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc, out, err):
    """Exit 2, nothing on stdout, one ``bpcheck: error:`` line on stderr; -> the message."""
    assert rc == 2, (rc, out, err)
    assert out == "", out
    assert err.count("\n") == 1 and err.startswith("bpcheck: error: ") and "Traceback" not in err, err
    return err[len("bpcheck: error: "):].strip()


# --- learning a case's options ------------------------------------------------------


def test_every_case_documents_every_option():
    """Case.options gives a meaning and a kind for every option of every built-in build."""
    for case in CASES.values():
        names = set(defaults(case.build))
        assert names, case.name
        undocumented = sorted(n for n in names if not isinstance(case.options.get(n), Option))
        assert not undocumented, (case.name, undocumented)
        assert set(case.options) <= names, (case.name, sorted(set(case.options) - names))


def test_list_shows_options_with_defaults_and_meanings(capsys):
    """Before: `bpcheck list` printed names and descriptions only."""
    rc, out, err = cli(["list"], capsys)
    assert rc == 0 and err == ""
    trask = out.split("\n\n")[0].splitlines()
    assert trask[0].startswith("trask  seed 004")
    assert any(line.split() == ["hidden=4", "hidden", "units"] for line in trask), trask
    assert "sizes=(4, 16, 8, 3)" in out and "activations=('tanh', 'relu', 'softmax')" in out
    for name in CASES:
        assert f"\n{name}  " in "\n" + out, name


@pytest.mark.parametrize("argv", [["list", "mlp"], ["run", "mlp", "--help"]])
def test_one_case_in_full(argv, capsys):
    """Before: `run mlp --help` listed no case options and `list mlp` was a usage error."""
    rc, out, err = cli(argv, capsys)
    assert rc == 0 and err == ""
    assert "steps: 200 by default" in out
    lines = out.splitlines()
    at = lines.index("    activations=('tanh', 'relu', 'softmax')")
    assert "one activation per layer" in lines[at + 1] and "each one of sigmoid" in lines[at + 1]
    assert "    lr=0.1" in lines and "momentum" in out  # the optimizer's own options too


def test_run_help_without_a_case_says_where_the_options_are(capsys):
    rc, out, _ = cli(["run", "--help"], capsys)
    assert rc == 0 and "bpcheck run CASE --help" in out.replace("\n", " ")


def test_list_of_a_user_case_file(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text("from bpcheck.compare import Case\n"
                    "def build(dtype, device, seed=None, width=3):\n    raise RuntimeError('unused')\n"
                    "MINE = Case('mine', 'my own', build)\n")
    rc, out, _ = cli(["list", f"{path}:MINE"], capsys)
    assert rc == 0 and "mine  my own" in out and "    width=3" in out.splitlines()


def test_help_as_an_option_points_to_help(capsys):
    """Before: `-o help=1` was `case trask has no option 'help'`, with no way to learn more."""
    msg = one_error_line(*cli(["run", "trask", "-o", "help=1"], capsys))
    assert "bpcheck run trask --help" in msg


def test_mlp_sizes_alone_names_the_default_activations(capsys):
    """Before: `2 weight matrices but 3 activations`, not saying which or how to set them."""
    msg = one_error_line(*cli(["run", "mlp", "-o", "sizes=(784,256,10)", "--steps", "1"], capsys))
    assert "the default activations ('tanh', 'relu', 'softmax')" in msg
    assert "-o \"activations=('relu', 'softmax')\"" in msg
    with pytest.raises(UsageError) as e:
        run("mlp", steps=1, sizes=(784, 256, 10))
    assert str(e.value) == msg


def test_version(capsys):
    rc, out, err = cli(["--version"], capsys)
    assert rc == 0 and out == f"bpcheck {version('bpcheck')}\n" and err == ""


# --- bad option values ----------------------------------------------------------------


@pytest.mark.parametrize("argv, api, message", [
    (["trask", "-o", "hidden=abc"], dict(hidden="abc"), "case trask: option hidden must be a positive integer, got 'abc'"),
    (["trask", "-o", "hidden=0"], dict(hidden=0), "case trask: option hidden must be a positive integer, got 0"),
    (["relu-sigmoid", "-o", "lr=fast"], dict(lr="fast"), "case relu-sigmoid: option lr must be a finite number, got 'fast'"),
    (["mlp", "-o", "sizes=(4,)"], dict(sizes=(4,)), "case mlp: option sizes must be a tuple of at least 2 positive integers"),
    (["mlp", "-o", "bias=1"], dict(bias=1), "case mlp: option bias must be True or False, got 1"),
    (["chain-rule", "-o", "vary=x"], dict(vary="x"), "case chain-rule: option vary must be one of 'b', 'w', 'wb', got 'x'"),
])
def test_bad_value_names_option_value_and_kind(argv, api, message, tmp_path, capsys):
    """Before: `case trask: bad option value ('str' object cannot be interpreted as an integer)`."""
    csv = tmp_path / "r.csv"
    msg = one_error_line(*cli(["run", *argv, "--steps", "1", "--csv", str(csv)], capsys))
    assert msg.startswith(message), msg
    assert not os.listdir(tmp_path)  # nothing written
    with pytest.raises(UsageError) as e:
        run(argv[0], steps=1, **api)
    assert str(e.value) == msg  # the API says the same


# --- options that would do nothing ---------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--per-seed", "worst"], "--per-seed chooses the rows of a --seeds run: it needs --seeds N"),
    (["--per-seed", "rows"], "it needs --seeds N"),
    (["--tf32", "on"], "--tf32 sets TF32 for float32 matmuls and convolutions on CUDA: it does nothing with --device cpu"),
    (["--seeds", "2", "--print-trace"], "--print-trace does nothing with --seeds"),
    (["--seeds", "2", "--straightforward"], "--straightforward does nothing with --seeds"),
    (["--seeds", "2", "--per-seed", "worst", "--stop-on-nonfinite"], "--stop-on-nonfinite does nothing with --seeds"),
])
def test_flags_that_would_do_nothing_are_refused(flags, words, tmp_path, capsys):
    """Before: each of these ran, the flag silently ignored."""
    msg = one_error_line(*cli(["run", "trask", "--steps", "2", "--csv", str(tmp_path / "r.csv"), *flags], capsys))
    assert words in msg
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("case", ["conv", "sigmoid221-sgd", "chain-rule"])
def test_a_seed_that_changes_nothing_is_refused(case, tmp_path, capsys):
    """Before: conv, the seed-003 nets and chain-rule ran with --seed silently ignored (their
    weights and data are the seed's own, fixed)."""
    msg = one_error_line(*cli(["run", case, "--steps", "2", "--seed", "3", "--csv", str(tmp_path / "r.csv")], capsys))
    assert msg == f"--seed 3 does nothing for case {case}: its build gives the same weights and data for every seed"
    assert not os.listdir(tmp_path)


def test_a_seed_that_draws_the_weights_runs(capsys):
    assert cli(["run", "cnn", "--steps", "1", "--seed", "3", "--quiet"], capsys)[0] == 0


def test_a_seed_for_a_user_case_that_takes_none_is_refused(tmp_path, capsys):
    """A build that draws from torch's global RNG (nn.Linear's init) does depend on --seed,
    which seeds it; one with fixed weights and data does not."""
    f = tmp_path / "mine.py"
    f.write_text("import torch\nfrom torch import nn\nimport bpcheck\n\n\n"
                 "def build(dtype, device):  # takes no seed: the same net whatever --seed says\n"
                 "    ref = nn.Linear(3, 2, bias=False, dtype=dtype)\n"
                 "    nn.init.constant_(ref.weight, 0.1)  # fixed: no draw from the RNG --seed would seed\n"
                 "    return {'manual': ref, 'reference': ref, 'inputs': torch.ones(4, 3, dtype=dtype),\n"
                 "            'targets': torch.zeros(4, 2, dtype=dtype)}\n\n\n"
                 "mine = bpcheck.case('mine', build, steps=1)\n")
    msg = one_error_line(*cli(["run", f"{f}:mine", "--seed", "0"], capsys))
    assert msg.startswith("--seed 0 does nothing for case mine")


def test_devices_tf32_without_a_cuda_side_is_refused(tmp_path, capsys):
    msg = one_error_line(*cli(["devices", "trask", "--a", "cpu:float64", "--b", "cpu:float32", "--tf32", "on"], capsys))
    assert msg.startswith("--tf32 sets TF32 for float32 matmuls and convolutions on CUDA: it does nothing with --a cpu")


def test_force_with_only_a_plot_overwrites_it(tmp_path, capsys):
    """--force applies to --plot's file: before, it was refused for lacking --csv."""
    image = tmp_path / "p.png"
    image.write_bytes(b"old")
    rc, out, err = cli(["run", "trask", "--steps", "2", "--quiet", "--plot", str(image), "--force"], capsys)
    assert rc == 0, err
    assert image.read_bytes()[:4] == b"\x89PNG"


# --- a user's case that fails to build ----------------------------------------------


def test_user_case_raising_in_build_is_one_line(tmp_path, capsys):
    """Before: a 22-line traceback and exit 1."""
    path = tmp_path / "broken_case.py"
    path.write_text("from bpcheck.compare import Case\n"
                    "def build(dtype, device, seed=None):\n    raise RuntimeError('no weights file here')\n"
                    "BROKEN = Case('broken', 'raises while building', build)\n")
    msg = one_error_line(*cli(["run", f"{path}:BROKEN", "--steps", "1"], capsys))
    assert msg == f"case {path}:BROKEN: its build failed (RuntimeError: no weights file here)"


# --- interruptions ---------------------------------------------------------------------


@contextmanager
def signal_at(step, monkeypatch):
    """Deliver SIGINT to this process when the run reports ``step`` finished."""
    import bpcheck.progress

    @contextmanager
    def bar(total, name, quiet):
        def tick(s):
            if s == step:
                os.kill(os.getpid(), signal.SIGINT)

        yield tick

    monkeypatch.setattr(bpcheck.progress, "progress_bar", bar)
    yield


def test_interrupted_run_is_headed_interrupted_and_report_prints_the_same(tmp_path, monkeypatch, capsys):
    """Before: the summary read `trask: PASS (... steps)` and the interruption line went to stdout."""
    csv = tmp_path / "r.csv"
    with signal_at(30, monkeypatch):
        rc, out, err = cli(["run", "trask", "--steps", "2000", "--chunk", "10", "--csv", str(csv)], capsys)
    assert rc == 130
    assert out.startswith("trask: INTERRUPTED  (") and "PASS" not in out
    assert "ended early: interrupted by SIGINT" in out
    assert err == f"interrupted by SIGINT; {csv} holds every finished step\n"
    rc2, again, err2 = cli(["report", str(csv)], capsys)
    assert (rc2, err2) == (0, "") and again == out  # the report prints what the run printed


def test_interrupted_before_any_step_is_one_line_on_stderr(tmp_path, monkeypatch, capsys):
    """Before: `interrupted by SIGINT; no step had finished` went to stdout."""
    from bpcheck.compare.core import runner
    from bpcheck.compare.io.interrupt import Interrupted

    def interrupted(*a, **kw):
        raise Interrupted(signal.SIGINT, None)

    monkeypatch.setattr(runner, "run", interrupted)
    csv = tmp_path / "r.csv"
    rc, out, err = cli(["run", "trask", "--steps", "5", "--csv", str(csv)], capsys)
    assert (rc, out) == (130, "")
    assert err == f"interrupted by SIGINT; no step had finished, {csv} was not written\n"
    assert not csv.exists()


# --- run and report print the same ---------------------------------------------------


def test_report_prints_what_run_printed(tmp_path, capsys):
    """Before: `bpcheck report` lacked the own-or-inherited block and the settings line."""
    csv = tmp_path / "r.csv"
    rc, out, err = cli(["run", "relu-sigmoid-as-written", "--steps", "3", "--quiet", "--csv", str(csv)], capsys)
    assert rc == 1, err
    assert "  own or inherited (step 1" in out and "\nsettings " in out
    rc2, again, err2 = cli(["report", str(csv)], capsys)
    assert (rc2, err2) == (1, "") and again == out


# --- the summary of a user's case names its sites -----------------------------------


def test_summary_of_named_sites_shows_the_site_column():
    """Before: the table numbered the layers 1, 2 where the report names them hidden, out. Now
    both: a module path may itself be a number (nn.Sequential's "0"), so the site stands in
    its own column beside the layer."""
    import copy

    import torch
    from torch import nn

    from bpcheck.compare.diagnosis.summary import format_summary
    from bpcheck.testing import assert_backprop_close

    torch.manual_seed(0)
    ref = nn.Sequential()
    ref.add_module("hidden", nn.Linear(3, 4, dtype=torch.float64))
    ref.add_module("act", nn.Tanh())
    ref.add_module("out", nn.Linear(4, 2, dtype=torch.float64))

    report = assert_backprop_close(copy.deepcopy(ref), ref, torch.randn(5, 3, dtype=torch.float64),
                                   torch.randn(5, 2, dtype=torch.float64), optimizer=0.1, loss="mse", name="mine")
    table = format_summary(report).splitlines()
    head = next(line for line in table if "max_abs_diff" in line)
    assert head.split()[:2] == ["layer", "site"]
    rows = [line.split()[:2] for line in table[table.index(head) + 1:] if len(line.split()) >= 6 and "/" in line]
    assert {("1", "hidden"), ("2", "out")} <= {tuple(r) for r in rows}, table
    assert {r[1] for r in rows if r[0] == "0"} == {"output", "loss"}, table  # layer 0 has no site


# --- pytest failures show the message, not bpcheck's frames ------------------------


BROKEN_TEST = (ROOT / "examples" / "test_plugin_example.py").read_text() + '''

class Broken(TanhNet):
    def step(self, x, t):
        tr = super().step(x, t)
        tr["layers"][1]["delta"] = 2 * tr["layers"][1]["delta"]
        return tr


def _broken(kw):
    return Broken(torch.randn(3, 5, **kw), torch.zeros(5, **kw), torch.randn(5, 2, **kw), torch.zeros(2, **kw))


def test_fixture_fails(backprop):
    backprop(_broken(backprop.factory_kwargs), reference(), torch.randn(16, 3), torch.randn(16, 2), loss="mse",
             optimizer=0.1)


def test_direct_fails():
    from bpcheck.testing import assert_backprop_close

    kw = {"dtype": torch.float64}
    assert_backprop_close(_broken(kw), reference(), torch.randn(16, 3, **kw), torch.randn(16, 2, **kw), loss="mse",
                          optimizer=0.1)


def test_bad_input_fails():
    from bpcheck.testing import assert_backprop_close

    kw = {"dtype": torch.float64}
    assert_backprop_close(_broken(kw), reference(), torch.randn(16, 3, **kw), torch.randn(16, 2, **kw), loss="l1")
'''


def test_pytest_failures_hide_bpchecks_frames(tmp_path):
    """Before: about 20 lines of bpcheck's own frames between the test's line and the message."""
    (tmp_path / "test_broken.py").write_text(BROKEN_TEST)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "-k", "fails", "test_broken.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 1 and "3 failed" in out, out[-3000:]
    for frame in ("bpcheck/testing.py", "bpcheck/checker.py", "bpcheck/compare/", "compare/core/"):
        assert frame not in out, (frame, out[-6000:])
    assert out.count("Case test_fixture_fails") >= 1 and "Mismatched elements" in out
    assert "E   bpcheck.compare.core.errors.UsageError: unknown loss 'l1'" in out or "unknown loss 'l1'" in out
