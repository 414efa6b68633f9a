"""The pytest plugin, run through pytester: entry point, fixture, options, marker, session CSV."""
import pathlib
from importlib.metadata import entry_points

import pytest
import torch

from bpcheck.report import read_report

pytest_plugins = ["pytester"]

EXAMPLE = (pathlib.Path(__file__).parent.parent / "examples" / "test_plugin_example.py").read_text()
CUDA = torch.cuda.is_available()

BROKEN = EXAMPLE + '''

class Broken(TanhNet):
    def step(self, x, t):
        tr = super().step(x, t)
        tr["layers"][1]["delta"] = 2 * tr["layers"][1]["delta"]  # a stray factor 2 in the output delta
        return tr


def test_broken(backprop):
    kw = backprop.factory_kwargs
    net = Broken(torch.randn(3, 5, **kw), torch.zeros(5, **kw), torch.randn(5, 2, **kw), torch.zeros(2, **kw))
    backprop(net, reference(), torch.randn(16, 3), torch.randn(16, 2), loss="mse", optimizer=0.1)
'''


@pytest.fixture(scope="module", autouse=True)
def warm_torch():
    """pytester's in-process runs drop the modules imported during a run; torch.optim's first
    step imports torch._dynamo lazily, and importing that twice fails. Import it here, once."""
    from bpcheck.testing import assert_backprop_close
    from bpcheck.manual import MLP, SGD

    x = torch.ones(2, 2, dtype=torch.float64)
    net = MLP([torch.eye(2, dtype=torch.float64)], None, ["identity"], "mse", SGD(0.1))
    assert_backprop_close(net, torch.nn.Linear(2, 2, bias=False), x, x, loss="mse", optimizer=0.1)


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_registered_as_pytest11_entry_point():
    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("bpcheck") == "bpcheck.plugin"


def test_marker_parametrizes_devices_and_dtypes(pytester):
    pytester.makepyfile(test_mine=EXAMPLE)
    res = run(pytester, "-v", "-rs")
    res.assert_outcomes(passed=4 if CUDA else 2, skipped=0 if CUDA else 2)
    for line in ("*test_tanh_net_matches_autograd?cpu-float64? PASSED*",  # one at a time: pytest-randomly
                 "*test_tanh_net_matches_autograd?cpu-float32? PASSED*"):  # may order the inner session's tests
        res.stdout.fnmatch_lines([line])
    if not CUDA:
        res.stdout.fnmatch_lines(["*cuda-float64? SKIPPED*"])
        res.stdout.fnmatch_lines(["*no CUDA GPU*"])


def test_session_report_holds_every_check(pytester):
    pytester.makepyfile(test_mine=BROKEN)
    res = run(pytester, "--bpcheck-report", "session.csv")
    res.assert_outcomes(passed=2, failed=1, skipped=0 if CUDA else 2)
    # the failure reads like torch.testing.assert_close, naming the row
    res.stdout.fnmatch_lines(["*Case test_broken (lockstep, cpu, float64), step 1, 2.delta*",
                              "*Mismatched elements: 32 / 32 (100.0%)*",
                              "*Greatest absolute difference: * at index (*, *) (up to * allowed)*",
                              "*bpcheck: * report rows in session.csv*"])
    df = read_report(pytester.path / "session.csv")
    assert set(df["case"]) == {"test_tanh_net_matches_autograd[cpu-float64]",
                               "test_tanh_net_matches_autograd[cpu-float32]", "test_broken"}
    assert set(df.groupby("case")["dtype"].first()) == {"float64", "float32"}
    broken = df[df["case"] == "test_broken"]
    assert not broken["passed"].all() and df[df["case"] != "test_broken"]["passed"].all()
    assert broken[~broken["passed"]].iloc[0][["layer", "quantity"]].tolist() == [2, "delta"]


def test_options_configure_the_fixture(pytester):
    pytester.makepyfile(test_opts='''
        import torch

        def test_where(backprop):
            assert backprop.dtype == torch.float32 and backprop.device == torch.device("cpu")
            assert backprop.factory_kwargs == {"device": torch.device("cpu"), "dtype": torch.float32}
    ''')
    run(pytester, "--bpcheck-dtype", "float32").assert_outcomes(passed=1)


@pytest.mark.parametrize("args, message", [
    (["--bpcheck-dtype", "int8"], "*ERROR: bpcheck: dtype torch.int8 is not a floating-point dtype*"),
    (["--bpcheck-dtype", "float12"], "*ERROR: bpcheck: unknown dtype 'float12'*"),
    (["--bpcheck-report", "missing/r.csv"], "*ERROR: bpcheck: cannot write missing/r.csv: folder * does not exist*"),
])
def test_bad_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile(test_x="def test_x(backprop):\n    pass\n")
    res = run(pytester, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([message])
    assert not (pytester.path / "missing").exists()


def test_bad_marker_is_a_usage_error(pytester):
    pytester.makepyfile(test_x='''
        import pytest

        @pytest.mark.bpcheck(dtype=["float64"])
        def test_x(backprop):
            pass
    ''')
    res = run(pytester)
    assert res.ret == pytest.ExitCode.INTERRUPTED  # a collection error, one line, no traceback
    res.stdout.fnmatch_lines(["bpcheck: test_x.py::test_x: @pytest.mark.bpcheck got unknown arguments ['dtype'] "
                              "(known: devices, dtypes)", "ERROR test_x.py - Failed: bpcheck: *"])
    assert "Traceback" not in res.stdout.str() and "During handling" not in res.stdout.str()
