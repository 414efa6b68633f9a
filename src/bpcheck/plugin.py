"""bpcheck's pytest plugin (registered through the ``pytest11`` entry point): hooks and
the fixture only; the logic is in bpcheck.checker and bpcheck.testing.

- ``backprop`` fixture: ``backprop(manual, reference, inputs, targets, **kw)`` asserts
  that ``manual``'s backward matches autograd (bpcheck.testing.assert_backprop_close).
- Options: ``--bpcheck-device`` (cpu), ``--bpcheck-dtype`` (float64), and
  ``--bpcheck-report PATH``: one CSV with every check of the session, also under
  pytest-xdist (each worker writes a part; the controller merges them: bpcheck.checker).
- ``@pytest.mark.bpcheck(devices=["cpu", "cuda"], dtypes=["float64", "float32"])``
  runs the test once per pair (those are the defaults), skipping cuda without a GPU;
  it takes precedence over the two options.
"""
import pytest

_session = pytest.StashKey()


def pytest_addoption(parser):
    g = parser.getgroup("bpcheck", "bpcheck: hand-derived backprop against autograd")
    g.addoption("--bpcheck-device", default="cpu", help="device for the backprop fixture (default cpu)")
    g.addoption("--bpcheck-dtype", default="float64", help="dtype for the backprop fixture (default float64)")
    g.addoption("--bpcheck-report", metavar="PATH", help="write every check of the session to this CSV")


def pytest_configure(config):
    config.addinivalue_line("markers", "bpcheck(devices=[...], dtypes=[...]): run the test once per "
                                       "device and dtype (cuda skipped without a GPU)")
    device, dtype = config.getoption("bpcheck_device"), config.getoption("bpcheck_dtype")
    path = config.getoption("bpcheck_report")
    if (device, dtype) == ("cpu", "float64") and not path:
        return  # nothing to check: don't import torch into every pytest run of the environment
    from bpcheck.checker import SessionReport, check_options
    from bpcheck.compare.core.errors import UsageError

    part = getattr(config, "workerinput", {}).get("bpcheck_report_part")  # an xdist worker
    try:
        check_options(device, dtype)
        config.stash[_session] = SessionReport(part or path, worker=part is not None)
    except UsageError as e:
        raise pytest.UsageError(f"bpcheck: {e}") from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist's controller, for each worker it starts: the worker's part file."""
    report = node.config.stash.get(_session, None)
    if report is not None and report.path:
        node.workerinput["bpcheck_report_part"] = report.part_for(node.gateway.id)


def pytest_sessionfinish(session):
    """Close the report before the terminal summary names it (the controller merges here)."""
    report = session.config.stash.get(_session, None)
    if report is not None:
        report.close()


def pytest_unconfigure(config):
    report = config.stash.get(_session, None)
    if report is not None:
        report.close()


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("bpcheck")
    if marker is None or "backprop" not in metafunc.fixturenames:
        return
    from bpcheck.checker import marker_params
    from bpcheck.compare.core.errors import UsageError

    try:
        pairs, problem = marker_params(marker), None
    except UsageError as e:
        problem = str(e)
    if problem:  # a collection error of one line, no traceback
        pytest.fail(f"bpcheck: {metafunc.definition.nodeid}: {problem}", pytrace=False)
    params = [pytest.param((dev, dt), id=f"{dev}-{dt}", marks=[pytest.mark.skip(reason=skip)] if skip else [])
              for dev, dt, skip in pairs]
    metafunc.parametrize("backprop", params, indirect=True)


def pytest_terminal_summary(terminalreporter, config):
    report = config.stash.get(_session, None)
    if report is not None and report.path and not report.worker:
        terminalreporter.write_line(f"bpcheck: {report.rows} report rows in {report.path}")


@pytest.fixture
def backprop(request):
    """A checker on the marker's (device, dtype), else on --bpcheck-device/--bpcheck-dtype."""
    from bpcheck.checker import Checker

    cfg = request.config
    device, dtype = getattr(request, "param", (cfg.getoption("bpcheck_device"), cfg.getoption("bpcheck_dtype")))
    return Checker(device, dtype, cfg.stash.get(_session, None), name=request.node.name)
