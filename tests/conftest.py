import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def one_thread():
    """Tiny tensors: torch's intra-op threads only add contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """`pytest -m mutation` ends with the kill table (tests/mutants.py)."""
    from mutants import KILLS, format_kill_table

    if KILLS and "mutation" in (config.getoption("markexpr") or ""):
        terminalreporter.write_sep("=", "mutation kill table")
        terminalreporter.write_line(format_kill_table(KILLS))
