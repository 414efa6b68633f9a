"""benchmarks/gpu-check.sh stays runnable: its CPU dry run writes every output it names."""
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu-check.sh"


def test_dry_run_writes_every_output(tmp_path):
    out = tmp_path / "gpu-out"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    status = (out / "status.txt").read_text()
    assert proc.returncode == 0, status + proc.stdout + proc.stderr
    lines = status.splitlines()
    assert [line.split(" rc=")[0] for line in lines[:2]] == ["device", "tests"]
    pairs = ["f64/f32-tf32off", "f64/f32-tf32on", "f32/bf16", "floor"]
    assert [f"devices trask {p}" for p in pairs] == [line.split(" rc=")[0] for line in lines[2:6]]
    assert all(" rc=0 " in line for line in lines[:6])
    for name in ("install.log", "device.txt", "tests.txt", "bench-wide.txt", "devices-trask-floor.txt",
                 "devices-trask-f32-bf16.csv"):
        assert (out / name).is_file(), name
    assert "a#2.m/a.m" in (out / "devices-trask-floor.csv").read_text()  # the repeats: the floor's rows
    assert "benchmarks/bench.py --only 3 --device cuda" in (out / "bench-wide.txt").read_text()


def test_bad_option_is_exit_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
