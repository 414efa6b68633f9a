"""bpcheck sweep: each cell is the run made alone, on the local pool and on Ray; ERROR
cells; bad SPECs; a killed worker and a Ctrl-C leave a valid dataset that --resume
completes with the same rows; report and plot of an OUT_DIR."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import bpcheck
from bpcheck.cli import main
from bpcheck.compare import COLUMNS, UsageError, run
from bpcheck.sweeps import dataset, spec

EXE = os.path.join(os.path.dirname(sys.executable), "bpcheck")

# 2 cases x 2 modes x 2 dtypes x 3 seeds = 24 cells, a few steps each
GRID = {"run": {"steps": 4},
        "axes": {"case": ["trask", "sigmoid-bias"], "mode": ["lockstep", "free"], "dtype": ["float64", "float32"],
                 "seed": [0, 1, 2]}}

# A case that sleeps in build (so a sweep can be stopped half-way) and one that raises there.
CASES = textwrap.dedent('''
    import time
    from bpcheck.cases import get_case
    from bpcheck.compare import Case

    def slow(dtype, device, seed=None, hidden=4, pause=0.0):
        time.sleep(pause)
        return get_case("trask").build(dtype=dtype, device=device, seed=seed, hidden=hidden)

    def broken(dtype, device, seed=None):
        raise RuntimeError("this case cannot be built\\non purpose")

    SLOW = Case("slow-trask", "trask, after a pause", slow, steps=3)
    BROKEN = Case("broken", "raises in build", broken, steps=3)
''')


@pytest.fixture(scope="module", autouse=True)
def stop_forkserver():
    """The local pool forks its workers from multiprocessing's forkserver, which stays up
    (with multiprocessing's resource tracker) for the next sweep of the process; stop both
    after this module (``_stop`` is the method CPython's own tests use), so that later
    tests see no child process of pytest."""
    yield
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()
    resource_tracker._resource_tracker._stop()


def alone(cell):
    """The cell's run made alone, in this process, at the sweep workers' one thread."""
    kw, options = cell.call()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(kw.pop("case"), **kw, **options)
    finally:
        torch.set_num_threads(threads)


def assert_same_rows(got, want):
    """Every column of COLUMNS equal: numbers exactly (NaN where NaN), text as text."""
    assert len(got) == len(want) > 0
    for c in COLUMNS:
        a, b = got[c].reset_index(drop=True), want[c].reset_index(drop=True)
        if c in dataset.TYPES:
            assert np.array_equal(a.astype(float).to_numpy(), b.astype(float).to_numpy(), equal_nan=True), c
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), c


@pytest.fixture(scope="module")
def grid_alone():
    cells = spec.parse(GRID)
    return cells, {c.id: alone(c) for c in cells}


def check_sweep(out, cells, runs, table):
    assert len(cells) >= 24 and list(table["cell"]) == [c.id for c in cells]
    for c in cells:
        want = runs[c.id]
        assert_same_rows(dataset.read_rows(out, c.id), want)
        row = table[table["cell"] == c.id].iloc[0]
        assert row["status"] == ("PASS" if want["passed"].all() else "FAIL")
        assert row["engine"] == want.attrs["engine"] and row["rows"] == len(want)
    every = dataset.read_all(out)  # the partitioned dataset, read whole
    assert len(every) == sum(len(r) for r in runs.values()) and set(every["cell"]) == {c.id for c in cells}


def test_local_pool_gives_each_cell_the_rows_of_its_run_alone(grid_alone, tmp_path):
    cells, runs = grid_alone
    table = bpcheck.sweep(GRID, tmp_path / "out", jobs=2, threads=1)
    check_sweep(str(tmp_path / "out"), cells, runs, table)
    assert table.attrs["ran"] == 24 and not table.attrs["lost"]
    assert "local pool, 2 worker(s) x 1 thread(s)" in table.attrs["executor"]
    # the summary on disk is the one returned
    assert pd.read_parquet(tmp_path / "out" / "summary.parquet")["status"].tolist() == table["status"].tolist()


def test_ray_gives_each_cell_the_rows_of_its_run_alone(grid_alone, tmp_path):
    import ray

    cells, runs = grid_alone
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = bpcheck.sweep(GRID, tmp_path / "out", ray=True)
        assert ray.is_initialized()  # the caller's Ray is left running
    finally:
        ray.shutdown()
    check_sweep(str(tmp_path / "out"), cells, runs, table)
    assert table.attrs["executor"].startswith("local Ray, 2 CPU(s)")


def test_a_cell_that_raises_is_an_error_row_and_the_sweep_goes_on(tmp_path, capsys):
    (tmp_path / "cases.py").write_text(CASES)
    (tmp_path / "s.toml").write_text('[axes]\ncase = ["cases.py:BROKEN", "trask"]\nsteps = [2]\n')
    code = main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "out"), "--jobs", "1"])
    out = capsys.readouterr().out
    assert code == 1
    table = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert table["status"].tolist() == ["ERROR", "PASS"]
    # one line naming the case file and the case (bpcheck.cases.user), the exception after it
    message = (f"UsageError: case {tmp_path / 'cases.py'}:BROKEN: its build failed "
               "(RuntimeError: this case cannot be built)")
    assert table["error"][0] == message
    assert "ERROR" in out and message in out
    # the ERROR cell is finished (a file without rows): --resume does not run it again
    assert pq.read_table(dataset.cell_path(str(tmp_path / "out"), table["cell"][0])).num_rows == 0
    assert bpcheck.sweep(tmp_path / "s.toml", tmp_path / "out", resume=True).attrs["ran"] == 0
    assert main(["report", str(tmp_path / "out")]) == 1
    assert "1 PASS, 0 FAIL, 1 ERROR" in capsys.readouterr().out


def test_a_failing_cell_is_fail_with_its_first_failing_row(tmp_path):
    table = bpcheck.sweep({"run": {"steps": 3}, "axes": {"case": ["sigmoid-bias-as-written", "trask"]}},
                          tmp_path / "out", jobs=1)
    bad = table.iloc[0]
    assert table["status"].tolist() == ["FAIL", "PASS"]
    assert bad["first_failure"].startswith("case sigmoid-bias-as-written step 1 layer 1 grad_bias")
    assert bad["margin"] > 1 and table["margin"][1] < 1


BAD_SPECS = [
    ("[run]\nsteps = 3\n", "no case"),
    ("[axes]\ncase = []\n", "axis 'case' must be a non-empty list"),
    ("[axes]\ncase = ['trask']\n[extra]\nx = 1\n", "unknown section(s) 'extra'"),
    ("[axes]\ncase = ['trask']\nmode = ['lockstep', 'sideways']\n", "unknown mode 'sideways'"),
    ("[axes]\ncase = ['trask', 'conv']\nhidden = [3]\n", "case conv has no option 'hidden'"),
    ("[axes]\ncase = ['nosuch']\n", "unknown case 'nosuch'"),
    ("[axes]\ncase = ['trask']\n[run]\ncase = 'trask'\n", "case given in both [run] and [axes]"),
    ("[axes]\ncase = ['trask']\ndtype = ['int32']\n", "not a floating-point dtype"),
    ("[axes]\ncase = ['trask'\n", "cannot be read"),
    ("[axes]\ncase = ['trask']\ndevice = ['tpu']\n", "device 'tpu' is not supported"),
]


@pytest.mark.parametrize("text,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_a_bad_spec_is_one_line_exit_2_and_nothing_written(text, message, tmp_path, capsys):
    (tmp_path / "s.toml").write_text(text)
    code = main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and err.startswith("bpcheck: error: sweep spec")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="sweep spec"):
        bpcheck.sweep(tmp_path / "s.toml", tmp_path / "out")


def test_bad_command_lines_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "s.toml").write_text("[axes]\ncase = ['trask']\nsteps = [1]\n")
    s, out = str(tmp_path / "s.toml"), str(tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, message in [([s, "-o", str(tmp_path / "no" / "out")], "does not exist"),
                          ([str(tmp_path / "s.json"), "-o", out], "does not exist"),
                          ([s, "-o", str(tmp_path / "full")], "holds other files"),
                          ([s, "-o", out, "--jobs", "0"], "jobs must be a positive integer"),
                          ([s, "-o", out, "--address", "auto"], "--address joins a Ray cluster: it needs --ray")]:
        assert main(["sweep", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not os.path.exists(out)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["sweep", s, "-o", out, "--ray"]) == 2
    assert capsys.readouterr().err == 'bpcheck: error: --ray needs Ray: pip install "bpcheck[ray]"\n'
    assert not os.path.exists(out)
    assert main(["sweep", s, "-o", out, "--jobs", "1"]) == 0  # the default needs no Ray


def test_an_existing_sweep_needs_resume(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("[axes]\ncase = ['trask']\nsteps = [1, 2]\n")
    assert main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "out"), "--jobs", "1"]) == 0
    before = os.path.getmtime(dataset.cell_path(str(tmp_path / "out"), spec.parse(tmp_path / "s.toml")[0].id))
    assert main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "out")]) == 2
    assert "holds a sweep; pass --resume" in capsys.readouterr().err
    # an extended SPEC resumes: the finished cells are kept, only the new one runs
    (tmp_path / "s.toml").write_text("[axes]\ncase = ['trask']\nsteps = [1, 2, 3]\n")
    table = bpcheck.sweep(tmp_path / "s.toml", tmp_path / "out", resume=True, jobs=1)
    assert table.attrs["ran"] == 1 and table.attrs["skipped"] == 2 and (table["status"] == "PASS").all()
    assert os.path.getmtime(dataset.cell_path(str(tmp_path / "out"), table["cell"][0])) == before


def test_yaml_and_toml_give_the_same_cells(tmp_path):
    (tmp_path / "s.toml").write_text("[run]\nsteps = 2\n[axes]\ncase = ['trask', 'mlp']\nsizes = [[3, 4, 1], [3, 5, 1]]\n"
                                     .replace("case = ['trask', 'mlp']", "case = ['mlp']"))
    (tmp_path / "s.yaml").write_text("run: {steps: 2}\naxes:\n  case: [mlp]\n  sizes: [[3, 4, 1], [3, 5, 1]]\n")
    a, b = spec.parse(tmp_path / "s.toml"), spec.parse(tmp_path / "s.yaml")
    assert [c.id for c in a] == [c.id for c in b] and len(a) == 2
    assert a[0].call() == ({"steps": 2, "case": "mlp"}, {"sizes": (3, 4, 1)})  # lists become tuples


def test_report_and_plot_of_an_out_dir(tmp_path, capsys):
    table = bpcheck.sweep({"run": {"steps": 2}, "axes": {"case": ["trask", "sigmoid-bias-as-written"]}},
                          tmp_path / "out", jobs=1)
    os.remove(tmp_path / "out" / "summary.parquet")  # derived: report rebuilds it from the cells
    assert main(["report", str(tmp_path / "out")]) == 1
    text = capsys.readouterr().out
    assert "sweep: 2 cells: 1 PASS, 1 FAIL, 0 ERROR" in text and table["cell"][1] in text
    assert main(["plot", str(tmp_path / "out"), "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path / "out"), "-o", str(tmp_path / "grid.png")]) == 2  # exists: --force


# ---- a killed worker, a Ctrl-C, and --resume -----------------------------------------------

def slow_sweep(tmp_path):
    (tmp_path / "cases.py").write_text(CASES)
    (tmp_path / "s.toml").write_text(textwrap.dedent('''
        [run]
        case = "cases.py:SLOW"
        pause = 0.4
        [axes]
        hidden = [2, 3, 4, 5]
        seed = [0, 1, 2]
    '''))
    return str(tmp_path / "s.toml"), str(tmp_path / "out")


def start_and_stop(s, out, stop):
    """Start `bpcheck sweep`, wait for two finished cells, call stop(process), wait for it."""
    p = subprocess.Popen([EXE, "sweep", s, "-o", out, "--jobs", "2", "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None and len(dataset.finished(out)) < 2:
            time.sleep(0.02)
        assert p.poll() is None, p.communicate()
        stop(p)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, stdout, stderr


def children(pid):
    return [int(k) for k in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def workers(pid):
    """The pool's workers: the children of the sweep's forkserver."""
    server = [k for k in children(pid) if b"forkserver" in open(f"/proc/{k}/cmdline", "rb").read()]
    return [w for s in server for w in children(s)]


def check_resumed(s, out, done_before):
    assert 2 <= len(done_before) < 12
    assert not [f for f in os.listdir(os.path.join(out, "cells")) if f.startswith(".")]  # no temporary file
    for path in done_before.values():  # every finished cell is a whole, readable file
        assert dataset.read_record(path)["status"] == "PASS" and pq.read_table(path).num_rows > 0
    table = bpcheck.sweep(s, out, resume=True, jobs=2, threads=1)
    assert table.attrs["ran"] == 12 - len(done_before) and table.attrs["skipped"] == len(done_before)
    assert (table["status"] == "PASS").all()
    for c in spec.parse(s):  # identical to the run made alone (the pause changes nothing)
        assert_same_rows(dataset.read_rows(out, c.id), alone(c))
    assert dataset.finished(out).keys() >= done_before.keys()


def test_a_worker_killed_mid_sweep_leaves_a_valid_dataset_and_resume_completes_it(tmp_path):
    s, out = slow_sweep(tmp_path)
    code, stdout, stderr = start_and_stop(s, out, lambda p: os.kill(workers(p.pid)[0], signal.SIGKILL))
    assert code == 1 and "a worker died" in stderr and "--resume" in stderr, (stdout, stderr)
    assert len([line for line in stderr.splitlines() if "a worker died" in line]) == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = pd.read_parquet(os.path.join(out, "summary.parquet"))
    assert "PENDING" in set(summary["status"])
    check_resumed(s, out, dataset.finished(out))


def test_a_ctrl_c_leaves_a_valid_dataset_and_resume_completes_it(tmp_path):
    """SIGINT to the driver (SIGTERM takes the same path: compare.io.interrupt)."""
    sig = signal.SIGINT
    s, out = slow_sweep(tmp_path)
    code, stdout, stderr = start_and_stop(s, out, lambda p: p.send_signal(sig))
    assert code == 128 + sig and f"interrupted by {signal.Signals(sig).name}" in stderr, (stdout, stderr)
    assert f"interrupted by {signal.Signals(sig).name}" not in stdout, stdout  # one voice: stderr
    assert "Traceback" not in stderr, stderr
    check_resumed(s, out, dataset.finished(out))
    grid = json.load(open(os.path.join(out, "sweep.json")))
    assert len(grid["cells"]) == 12


class FakeRay:
    """Just enough of Ray to see what each task asks for: runs tasks in this process."""

    class exceptions:
        WorkerCrashedError = NodeDiedError = OutOfMemoryError = type("Never", (Exception,), {})

    def __init__(self):
        self.asked, self.tasks = [], {}

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 2.0, "GPU": 1.0}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                fake.asked.append(kw)
                return self

            def remote(self, cell, threads):
                fake.tasks[len(fake.tasks)] = cell
                return len(fake.tasks) - 1

        return Task()

    def wait(self, refs, num_returns=1, timeout=None, fetch_local=True):
        return refs, []

    def get(self, ref):
        return {"cell": self.tasks[ref].id, "status": "PASS"}, b""


def test_ray_tasks_ask_for_a_gpu_only_for_cuda_cells(monkeypatch):
    from bpcheck.sweeps.executors.raycluster import RayExecutor

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    cells = spec.parse({"axes": {"case": ["trask"], "device": ["cpu", "cuda", "cuda:1"]}})
    got = list(RayExecutor(cells, threads=2, gpus_per_cell=0.25))
    assert [r["cell"] for r, _ in got] == [c.id for c in cells]
    assert fake.asked == [{"num_cpus": 2, "num_gpus": 0, "max_retries": 1},
                          {"num_cpus": 2, "num_gpus": 0.25, "max_retries": 1},
                          {"num_cpus": 2, "num_gpus": 0.25, "max_retries": 1}]
