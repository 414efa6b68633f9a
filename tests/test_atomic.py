"""Reports appear whole or not at all (compare/io/writer.py, docs/reliability.md):
a crash, a SIGKILL or a full disk leaves the previous file at the target untouched;
a second run on the same target is refused before it computes; outputs that collide
or name something other than a regular file are refused at start."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bpcheck.cli import main
from bpcheck.compare import UsageError, run
from bpcheck.compare.io.writer import PARTIAL, SETTINGS_KEY, OutputError, ReportWriter

from test_faults import with_patch

EXE = os.path.join(os.path.dirname(sys.executable), "bpcheck")
OLD = b"case,mode\nthe previous report,kept\n"


def _cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _raises_at(n, error):
    def patch(setup):
        step, calls = setup.manual.step, [0]

        def failing(x, t, *a, **k):
            calls[0] += 1
            if calls[0] == n:
                raise error
            return step(x, t, *a, **k)

        setup.manual.step = failing
    return patch


@pytest.mark.parametrize("name", ["r.csv", "r.parquet"])
def test_a_crash_under_force_keeps_the_previous_report(name, tmp_path):
    """--force over a good report, and the new run raises at step 300: the old report stays,
    and no partial file is left."""
    path = tmp_path / name
    path.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="boom"):
        run(with_patch("trask", _raises_at(300, RuntimeError("boom"))), steps=1000, chunk=100, csv=path,
            force=True, fast=False)
    assert path.read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == [name]


def test_sigkill_at_20_random_moments_never_changes_the_previous_file(tmp_path):
    """A real `bpcheck run --force` over a report, killed (with its forked helper) at a
    random moment, 20 times: the file at the target is byte for byte the old one; at most
    the partial file is left beside it."""
    path = tmp_path / "r.csv"
    path.write_bytes(OLD)
    rng = random.Random(20)
    running = 0
    for _ in range(20):
        p = subprocess.Popen([EXE, "run", "trask", "--steps", "1000000", "--chunk", "200", "--csv", str(path),
                              "--force", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(0.0, 4.0))
        running += p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert path.read_bytes() == OLD
        assert set(os.listdir(tmp_path)) <= {"r.csv", "r.csv" + PARTIAL}
    assert running == 20  # every kill hit a run in progress


def test_full_disk_is_one_line_exit_3_and_the_old_file_stays(tmp_path):
    """A file-size limit makes the disk 'full' after 20 kB: exit 3, one line naming the
    file and the cause, the previous report and no partial file."""
    for name in ("r.csv", "r.parquet"):
        path = tmp_path / name
        path.write_bytes(OLD)
        code = ("import resource, signal, sys\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
                "from bpcheck.entry import main\n"
                f"sys.exit(main(['run', 'trask', '--steps', '5000', '--chunk', '100', '--csv', {str(path)!r}, "
                "'--force', '--quiet']))\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert p.returncode == OutputError.exit_code == 3, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"bpcheck: error: cannot write {path}: "), p.stderr
        assert "previous file is untouched" in p.stderr and "Traceback" not in p.stderr
        assert path.read_bytes() == OLD
        assert sorted(os.listdir(tmp_path)) == sorted(n for n in ("r.csv", "r.parquet") if (tmp_path / n).exists())


def test_a_second_run_on_the_same_target_is_refused_before_it_computes(tmp_path):
    """Two runs a moment apart on one path: the second exits 2 at once, with or without
    --force; the first, stopped by Ctrl-C, leaves its finished steps, whole."""
    path = tmp_path / "r.csv"
    first = subprocess.Popen([EXE, "run", "trask", "--steps", "1000000", "--chunk", "500", "--csv", str(path),
                              "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / ("r.csv" + PARTIAL)).exists() and time.time() < deadline:
            time.sleep(0.02)
        for force in ([], ["--force"]):
            second = subprocess.run([EXE, "run", "trask", "--steps", "10", "--csv", str(path)] + force,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr == f"bpcheck: error: another run is writing {path} (it holds {path}{PARTIAL})\n"
        assert first.poll() is None
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    df = pd.read_csv(path)
    assert len(df) == df["step"].max() * 10 > 0
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.csv.settings.json"]


def test_the_claim_is_exclusive_in_one_process_and_a_stale_partial_is_taken_over(tmp_path):
    path = tmp_path / "r.csv"
    (tmp_path / ("r.csv" + PARTIAL)).write_bytes(b"left by a killed run")
    with ReportWriter(path) as w:  # no lock on the leftover: taken over
        with pytest.raises(UsageError, match="another run is writing"):
            ReportWriter(path)
        w.write(run("trask", steps=2))
    assert pd.read_csv(path)["step"].max() == 2
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.csv.settings.json"]
    with pytest.raises(UsageError, match="exists; pass --force"):
        ReportWriter(path)


def test_nothing_appears_at_the_target_before_the_run_ends(tmp_path):
    path = tmp_path / "r.csv"
    with ReportWriter(path) as w:
        w.write(run("trask", steps=3))
        assert not path.exists() and (tmp_path / ("r.csv" + PARTIAL)).exists()
    assert path.exists() and not (tmp_path / ("r.csv" + PARTIAL)).exists()


def test_the_settings_sidecar_is_not_overwritten_without_force(tmp_path, capsys):
    side = tmp_path / "r.csv.settings.json"
    side.write_text("{}")
    rc, out, err = _cli(["run", "trask", "--steps", "2", "--csv", str(tmp_path / "r.csv")], capsys)
    assert rc == 2 and err == f"bpcheck: error: {side} exists; pass --force (force=True) to overwrite it\n"
    assert side.read_text() == "{}" and not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--csv", "<d>/r.svg", "--plot", "<d>/r.svg"], "--csv and --plot name the same file"),
    (["--parquet", "<d>/r.png", "--plot", "<d>/./r.png"], "--parquet and --plot name the same file"),
    (["--csv", ""], "the report path is empty"),
    (["--parquet", ""], "the report path is empty"),
    (["--csv", "<d>/r.csv/"], "it names a folder"),
    (["--csv", "<d>"], "it is a folder"),
    (["--csv", "<d>/loop"], "it is a symlink loop"),
    (["--csv", "<d>/dangling"], "it is a dangling symlink"),
    (["--csv", "/dev/null", "--force"], "/dev/null: it is not a regular file"),
    (["--plot", "<d>/loop.png"], "it is a symlink loop"),
])
def test_outputs_refused_at_start(argv, needle, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    os.symlink("loop", d / "loop")
    os.symlink("loop.png", d / "loop.png")
    os.symlink(tmp_path / "elsewhere.csv", d / "dangling")
    before = sorted(os.listdir(d)), sorted(os.listdir(tmp_path))
    rc, out, err = _cli(["run", "trask", "--steps", "2"] + [a.replace("<d>", str(d)) for a in argv], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err, err
    assert (sorted(os.listdir(d)), sorted(os.listdir(tmp_path))) == before
    assert not os.path.exists("/dev/null.settings.json")


def test_api_refuses_bytes_and_empty_paths(tmp_path):
    with pytest.raises(UsageError, match="must be a str or os.PathLike, got bytes"):
        run("trask", steps=2, csv=b"b.csv")
    with pytest.raises(UsageError, match="path is empty"):
        run("trask", steps=2, csv="")


def test_a_symlink_to_a_report_is_followed_under_force(tmp_path, capsys):
    real = tmp_path / "real.csv"
    real.write_bytes(OLD)
    os.symlink(real, tmp_path / "link.csv")
    assert main(["run", "trask", "--steps", "2", "--csv", str(tmp_path / "link.csv"), "--force", "--quiet"]) == 0
    assert os.path.islink(tmp_path / "link.csv")
    assert pd.read_csv(real)["step"].max() == 2


def test_parquet_carries_its_settings(tmp_path):
    path = tmp_path / "r.parquet"
    df = run("trask", steps=3, csv=path)
    meta = pq.ParquetFile(path).metadata.metadata
    records = json.loads(meta[SETTINGS_KEY.encode()])
    assert set(records) == set(df["settings"])
    assert records == json.loads((tmp_path / "r.parquet.settings.json").read_text())


def test_an_interrupt_after_the_last_chunk_keeps_the_report_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    """SIGINT after the last chunk was written (here: in the own-or-inherited diagnosis):
    the file is complete, and the summary says so, not 'no step had finished'."""
    import bpcheck.compare.core.runner as runner

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(runner, "diagnose", interrupted)
    path = tmp_path / "r.csv"
    rc, out, err = _cli(["run", "trask", "--steps", "30", "--csv", str(path), "--quiet"], capsys)
    assert rc == 130, err
    assert "trask: PASS  (30 steps" in out  # every step ran and was compared: the verdict is whole
    assert err == f"interrupted by SIGINT; {path} holds every finished step\n"  # one line, on stderr
    assert pd.read_csv(path)["step"].max() == 30


def test_a_run_creates_nothing_but_its_outputs(tmp_path):
    """A real run with its own temporary directory: afterwards that directory is empty
    (torch's torchinductor_<user> cache folder is not made) and the working folder holds
    only the report and its sidecar."""
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    p = subprocess.run([EXE, "run", "trask", "--steps", "70", "--csv", "r.csv", "--quiet"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert os.listdir(tmp) == []
    assert sorted(os.listdir(cwd)) == ["r.csv", "r.csv.settings.json"]
