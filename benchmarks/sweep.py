"""Sweep throughput: cells per second of the local pool and of local Ray against the
same cells run one by one, and each one's cost per cell (docs/sweep.md has the figures).

    python benchmarks/sweep.py                    # 24 and 96 cells, jobs 2, pool and Ray
    python benchmarks/sweep.py --sizes 24 --no-ray --cli 0

Each executor runs two grids (sizes a < b cells) of the same kind of cell (a short
trask run: 20 steps, lockstep/free x float64/float32 x seeds). From the two wall times
it separates a fixed cost (start-up: the pool's forkserver, Ray's start) from the
marginal wall time per cell, (wall_b - wall_a) / (b - a). Each sweep runs in a fresh
interpreter, timed from the call (torch and bpcheck already imported, as in
`bpcheck sweep` once its SPEC is read), so the fixed cost is the executor's own. The cost per cell is
``marginal * workers - compute``: the worker-seconds per cell not spent inside
``bpcheck.compare.run`` (compute is the mean run time measured in the workers).
One by one: the same cells in this process, warm (the floor), and as separate
``bpcheck run`` commands (what a user does without sweep; ``--cli N`` of them, scaled).
The machine is shared: the load average is printed beside each figure.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from bpcheck.compare import run
from bpcheck.sweeps import spec


def grid(n):
    return {"run": {"steps": 20, "case": "trask"},
            "axes": {"mode": ["lockstep", "free"], "dtype": ["float64", "float32"], "seed": list(range(n // 4))}}


def load():
    return "load %.2f %.2f %.2f" % os.getloadavg()


def one_by_one(n):
    cells = spec.parse(grid(n))
    torch.set_num_threads(1)
    run("trask", steps=2)  # warm: the first optimizer imports torch._dynamo
    start = time.perf_counter()
    for c in cells:
        kw, options = c.call()
        run(kw.pop("case"), **kw, **options)
    return time.perf_counter() - start


def cli(n):
    cells = spec.parse(grid(4 * n))[:n]
    exe = os.path.join(os.path.dirname(sys.executable), "bpcheck")
    start = time.perf_counter()
    for c in cells:
        p = c.params
        subprocess.run([exe, "run", "trask", "--steps", "20", "--mode", p["mode"], "--dtype", p["dtype"],
                        "--seed", str(p["seed"]), "--quiet"], check=True, capture_output=True)
    return (time.perf_counter() - start) / n


def swept(n, **kw):
    """A sweep of n cells in a fresh interpreter (as `bpcheck sweep` runs it: its start-up
    counted), timed from the call; -> (wall, mean run time in the workers, executor)."""
    out = tempfile.mkdtemp(prefix="bpcheck-sweep-bench-")
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, time, bpcheck; sys.path.insert(0, {here!r}); import sweep as b; t = time.perf_counter(); "
            f"s = bpcheck.sweep(b.grid({n}), {os.path.join(out, 'o')!r}, **{kw!r}); "
            f"w = time.perf_counter() - t; assert (s['status'] == 'PASS').all(); "
            f"print(w, s['seconds'].mean(), s.attrs['executor'], s.attrs['write_seconds'] / len(s), sep='|')")
    try:
        res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        wall, compute, desc, write = res.stdout.strip().splitlines()[-1].split("|")
        return float(wall), float(compute), desc, float(write)
    finally:
        shutil.rmtree(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="24,96", help="two grid sizes, multiples of 4")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--cli", type=int, default=4, help="bpcheck run commands to time (0: skip)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"cpus {os.cpu_count()}, torch {torch.__version__}, jobs {args.jobs}; {load()}")
    a, b = sizes[0], sizes[-1]
    seq = {n: one_by_one(n) for n in sizes}
    per = seq[b] / b
    print(f"one by one, in process (1 thread): {b} cells in {seq[b]:.2f} s = {b / seq[b]:.1f} cells/s, "
          f"{per * 1e3:.1f} ms per cell; {load()}")
    if args.cli:
        c = cli(args.cli)
        print(f"one by one, `bpcheck run` each: {c:.2f} s per cell = {1 / c:.2f} cells/s "
              f"(cost per cell {c - per:.2f} s over the run itself); {load()}")
    kinds = [("local pool", dict(jobs=args.jobs, threads=1))]
    if not args.no_ray:
        kinds.append(("local Ray", dict(ray=True, jobs=args.jobs)))
    for name, kw in kinds:
        walls = {n: swept(n, **kw) for n in sizes}
        (wa, ca, desc, _), (wb, cb, _, write) = walls[a], walls[b]
        line = f"{name} ({desc}): {a} cells {wa:.2f} s, {b} cells {wb:.2f} s = {b / wb:.1f} cells/s"
        if b > a:
            marginal = (wb - wa) / (b - a)
            fixed = wa - a * marginal
            line += (f"; fixed {fixed:.2f} s, marginal {marginal * 1e3:.1f} ms per cell = {1 / marginal:.1f} cells/s, "
                     f"compute {cb * 1e3:.1f} ms per cell in the workers, cost per cell "
                     f"{(marginal * args.jobs - cb) * 1e3:.1f} ms worker time, driver writing {write * 1e3:.2f} ms per cell")
        print(line + f"; {load()}")


if __name__ == "__main__":
    main()
