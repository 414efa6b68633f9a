"""Issue 6's six speed targets and issue 17's wide networks (target 7), each a ratio measured
side by side in this one process.

    python benchmarks/bench.py [--quick] [--threads N] [--device cpu|cuda] [--only 1,3,...]
    python benchmarks/bench.py --only 7 [--wide 2,3] [--wide-batch 64] [--wide-dtype float32]
                               [--wide-steps N] [--reps N] [--no-memory]

Every figure is the best of several interleaved repetitions (A, B, A, B, ...): on a
shared machine the minimum is the run least disturbed by others. The header prints
the machine, its load and the library versions; benchmarks/README.md explains each
target and records the figures.
"""
import argparse
import gc
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from bpcheck.cases import get_case
from bpcheck.cases.mlp import trask_numpy_loop as seed_loop
from bpcheck.compare import run
from bpcheck.compare.engines import manualrun
from bpcheck.compare.io.fastio import write_csv_rows

def best(fns, reps):
    """{name: best seconds} over ``reps`` interleaved rounds of calling each fn()."""
    out = {name: float("inf") for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[name] = min(out[name], time.perf_counter() - t0)
    return out


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class Table:
    def __init__(self):
        self.rows = []

    def add(self, target, what, ratio, goal, met, note=""):
        self.rows.append((target, what, ratio, goal, "met" if met else "NOT MET", note))
        print(f"  -> {what}: {ratio:.4g} (target {goal}) {'met' if met else 'NOT MET'}{'  ' + note if note else ''}",
              flush=True)

    def show(self):
        print("\nSummary (ratios measured side by side in this process)")
        w = max(len(r[1]) for r in self.rows)
        for t, what, ratio, goal, verdict, _ in self.rows:
            print(f"  {t}  {what:<{w}}  {ratio:>10.4g}  {goal:<8} {verdict}")


def header(args):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import pyarrow

    print(f"machine : {platform.node()} {platform.platform()}; {cpu}; {os.cpu_count()} cores; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"pandas {pd.__version__}, pyarrow {pyarrow.__version__}")
    print(f"settings: device {args.device} ({dev}), torch threads {torch.get_num_threads()}, "
          f"{'quick' if args.quick else 'full'} run")


def target1(args, tab, keep):
    steps = 20000 if args.quick else 60000
    print(f"\n[1] lockstep replay: trask, {steps} steps, every step and layer, CSV written", flush=True)
    tmp = tempfile.mkdtemp()
    reports = {}

    def full():
        path = os.path.join(tmp, "trask.csv")
        if os.path.exists(path):
            os.remove(path)
        reports["df"] = run("trask", steps=steps, device=args.device, csv=path)

    def manual_alone():
        s = get_case("trask").build(dtype=torch.float64, device=torch.device("cpu"), seed=None)
        m = s.manual
        with manualrun.numpy_twin(m):
            x, t = s.x.numpy(), s.t.numpy()
            for _ in range(steps):
                m.update(m.step(x, t))

    def no_csv():
        run("trask", steps=steps, device=args.device)

    def lean_alone():  # what the forked child runs: lean steps, weights recorded (compare.manualrun.ManualRun)
        s = get_case("trask").build(dtype=torch.float64, device=torch.device("cpu"), seed=None)
        lean = manualrun.ManualRun(s.manual, s.x, s.t, numpy=True, lean=True)
        for start in range(0, steps, 2048):
            lean.steps(min(2048, steps - start))

    def lean_flat():  # the lean step's numpy calls, and the weights' copy, written flat: no functions
        s = get_case("trask").build(dtype=torch.float64, device=torch.device("cpu"), seed=None)
        X, Y = s.x.numpy(), s.t.numpy()
        W0, W1 = (p["weight"].numpy().copy() for p in s.manual.params)
        rec0, rec1 = np.empty((steps,) + W0.shape), np.empty((steps,) + W1.shape)
        for i in range(steps):
            a1 = 1 / (1 + np.exp(-(X @ W0)))
            a2 = 1 / (1 + np.exp(-(a1 @ W1)))
            d2 = 1 - a2
            d2 *= a2
            d2 *= a2 - Y
            g2, e1 = a1.mT @ d2, d2 @ W1.mT
            d1 = 1 - a1
            d1 *= a1
            d1 *= e1
            W1 -= g2
            W0 -= X.mT @ d1
            rec0[i], rec1[i] = W0, W1

    def manual_torch():  # the same formulas on torch tensors: why the numpy twin exists
        s = get_case("trask").build(dtype=torch.float64, device=torch.device("cpu"), seed=None)
        with torch.no_grad():
            for _ in range(steps):
                s.manual.update(s.manual.step(s.x, s.t))

    run("trask", steps=3000, device=args.device)  # warm-up: the first run pays one-off costs (imports, tracing)
    t = best({"numpy loop": lambda: seed_loop(steps), "verification": full, "no csv": no_csv,
              "manual alone": manual_alone, "lean": lean_alone, "lean flat": lean_flat, "manual torch": manual_torch},
             1 if args.quick else 3)
    slow_steps = 1000 if args.quick else 3000
    t0 = time.perf_counter()
    run("trask", steps=slow_steps, device=args.device, fast=False)
    slow = (time.perf_counter() - t0) * steps / slow_steps
    df = reports["df"]
    keep["t1"], keep["t1 no csv"], keep["report"] = t["verification"], t["no csv"], df
    print(f"  seed's numpy loop {t['numpy loop']:.2f} s; full verification {t['verification']:.2f} s "
          f"(without the CSV {t['no csv']:.2f} s) "
          f"({len(df)} rows, engine {df.attrs['engine']}, all passed: {bool(df['passed'].all())}); "
          f"manual side alone {t['manual alone']:.2f} s on the numpy twin ({t['lean']:.2f} s lean, recording its "
          f"weights: the forked child's work; its numpy calls written flat {t['lean flat']:.2f} s), "
          f"{t['manual torch']:.2f} s on torch; "
          f"straightforward path {slow:.1f} s (from {slow_steps} steps)")
    r = t["verification"] / t["numpy loop"]
    bound = t["lean"] / t["numpy loop"]
    tab.add(1, "lockstep verification / numpy loop", r, "<= 2", r <= 2,
            f"bound: the lean trajectory alone = {bound:.2f}x the loop; straightforward path = "
            f"{slow / t['numpy loop']:.1f}x")


def target2(args, tab, keep):
    steps = 1000 if args.quick else 3000
    print(f"\n[2] free mode: trask, {steps} steps", flush=True)
    dev = torch.device(args.device)
    build = lambda: get_case("trask").build(dtype=torch.float64, device=dev, seed=None)  # noqa: E731

    def manual_alone():
        s = build()
        m = s.manual
        run_ = manualrun.ManualRun(m, s.x, s.t, manualrun.numpy_ok(m, s.x, s.t))
        with run_.running():
            for _ in range(steps):
                m.update(m.step(run_.x, run_.t))
        sync(dev)

    def reference_alone():
        s = build()
        r = s.reference
        for _ in range(steps):
            r.update(r.step(s.x, s.t))
        sync(dev)

    def reference_keeping():  # the reference alone, keeping what a report of every step needs
        s = build()
        r, kept = s.reference, []
        with manualrun.paused_gc():
            for _ in range(steps):
                tr = r.step(s.x, s.t)
                r.update(tr)
                kept.append((tr, [p.detach().clone() for ps in r._params for p in ps.values()]))
        sync(dev)

    def free():
        run("trask", steps=steps, mode="free", device=args.device)
        sync(dev)

    t = best({"manual": manual_alone, "reference": reference_alone, "keeping": reference_keeping, "free": free},
             3 if args.quick else 7)
    r = t["free"] / (t["manual"] + t["reference"])
    floor = (t["manual"] + t["keeping"]) / (t["manual"] + t["reference"])
    print(f"  manual alone {t['manual'] / steps * 1e6:.1f} us/step, reference alone "
          f"{t['reference'] / steps * 1e6:.1f} us/step (keeping every step's trace and weights: "
          f"{t['keeping'] / steps * 1e6:.1f}), free mode {t['free'] / steps * 1e6:.1f} us/step")
    tab.add(2, "free mode / (manual alone + reference alone)", r, "<= 1.05", r <= 1.05,
            f"bound: the reference keeping its steps' values = {floor:.2f}x")


def peak_memory(f, device):
    """Peak bytes allocated while f() runs, above what was allocated before."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = f()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        out = f()
        del out
    gc.disable()  # torch 2.13's _memory_profile can abort the interpreter when the collector runs inside it
    try:
        timeline = p._memory_profile().timeline  # torch's memory timeline (export_memory_timeline)
    finally:
        gc.enable()
    cur = peak = 0
    for _, action, _, size in timeline:
        cur += size if action.name == "CREATE" else -size if action.name == "DESTROY" else 0
        peak = max(peak, cur)
    return peak


def target3(args, tab, keep):
    print("\n[3] wide layers: MLP 1024-1024-1024-1024, batch 256, float32, forward + backward", flush=True)
    dev = torch.device(args.device)
    for act in ("relu", "sigmoid"):
        s = get_case("mlp").build(dtype=torch.float32, device=dev, seed=0, sizes=(1024, 1024, 1024, 1024),
                                  activations=(act,) * 3, loss="mse", batch=256)
        m, ref = s.manual, s.reference
        params = list(ref.module.parameters())

        def manual():
            with torch.no_grad():
                out = m.step(s.x, s.t)
            sync(dev)
            return out

        def same():  # autograd computing what the manual step returns: every layer's in/out grads too
            out = ref.step(s.x, s.t)
            sync(dev)
            return out

        def params_only():  # what loss.backward() computes
            out = torch.autograd.grad(ref.loss_fn(ref.module(s.x), s.t), params)
            sync(dev)
            return out

        fns = {"manual": manual, "autograd same": same, "autograd params": params_only}
        for f in fns.values():
            f()
        t = best(fns, 3 if args.quick else 9)
        m.xs = m.zs = m.As = None
        mem = {k: peak_memory(f, dev) for k, f in fns.items()}
        print(f"  {act}: " + ", ".join(f"{k} {t[k] * 1e3:.1f} ms / {mem[k] / 2**20:.1f} MiB" for k in fns))
        r, rm = t["manual"] / t["autograd same"], mem["manual"] / mem["autograd same"]
        rp, rpm = t["manual"] / t["autograd params"], mem["manual"] / mem["autograd params"]
        tab.add(3, f"{act}: manual / autograd, same outputs, time", r, "<= 1", r <= 1)
        tab.add(3, f"{act}: manual / autograd, same outputs, peak memory", rm, "<= 1", rm <= 1)
        tab.add(3, f"{act}: manual / autograd params only, time", rp, "<= 1", rp <= 1,
                "bound: the input gradient the report includes (1 GEMM in 9)")
        tab.add(3, f"{act}: manual / autograd params only, memory", rpm, "<= 1", rpm <= 1,
                "bound: every layer's delta and error_prev, kept for the report")


def target4(args, tab, keep):
    steps = 500 if args.quick else 2000
    n = 1000
    print(f"\n[4] many seeds: trask, {steps} steps, {n} seeds stacked (per-seed worst) vs one seed", flush=True)
    t = best({"one": lambda: run("trask", steps=steps, device=args.device),
              "ten": lambda: run("trask", steps=steps, device=args.device, seeds=10, per_seed="worst"),
              "many": lambda: run("trask", steps=steps, device=args.device, seeds=n, per_seed="worst")},
             1 if args.quick else 2)
    per_copy = (t["many"] - t["one"]) / (n - 1) / steps
    n3 = 1 + 2 * t["one"] / steps / per_copy
    print(f"  one seed {t['one']:.2f} s, 10 seeds {t['ten']:.2f} s, {n} seeds {t['many']:.2f} s: "
          f"{per_copy * 1e6:.2f} us per extra copy and step; 3x is reached near {n3:.0f} seeds")
    r = t["many"] / t["one"]
    tab.add(4, f"{n} seeds / one seed", r, "<= 3", r <= 3,
            f"bound: {per_copy * 1e6:.2f} us per (copy, step) of arithmetic; 10 seeds = {t['ten'] / t['one']:.1f}x")


def target5(args, tab, keep):
    df = keep.get("report")
    if df is None:
        df = run("trask", steps=20000 if args.quick else 60000, device=args.device)
        keep["t1"] = None
    print(f"\n[5] report writing: {len(df)} rows", flush=True)
    tmp = tempfile.mkdtemp()

    def pandas_csv():
        df.to_csv(os.path.join(tmp, "pandas.csv"), index=False)

    def arrow_csv():
        with open(os.path.join(tmp, "arrow.csv"), "wb") as fh:
            write_csv_rows(fh, df)

    def parquet():
        df.to_parquet(os.path.join(tmp, "r.parquet"), index=False)

    t = best({"pandas": pandas_csv, "pyarrow": arrow_csv, "parquet": parquet}, 1 if args.quick else 2)
    sizes = {k: os.path.getsize(os.path.join(tmp, f)) / 2**20 for k, f in
             (("pandas", "pandas.csv"), ("pyarrow", "arrow.csv"), ("parquet", "r.parquet"))}
    print("  " + ", ".join(f"{k} {t[k]:.2f} s ({sizes[k]:.0f} MiB)" for k in t))
    tab.add(5, "pyarrow CSV / pandas to_csv", t["pyarrow"] / t["pandas"], "< 1", t["pyarrow"] < t["pandas"])
    if keep.get("t1"):
        r = t["pyarrow"] / keep["t1"]
        marginal = (keep["t1"] - keep["t1 no csv"]) / keep["t1"]
        tab.add(5, "pyarrow CSV / the verification run it reports", r, "<= 0.25", r <= 0.25,
                f"pandas would be {t['pandas'] / keep['t1']:.2f}, Parquet {t['parquet'] / keep['t1']:.2f}; "
                f"the write adds {marginal:.2f} of the run's time to it (it overlaps the forked loop)")


def target6(args, tab, keep):
    from torch.func import functional_call

    opts = dict(sizes=(23, 100, 64, 10), activations=("tanh", "relu", "softmax"), loss="cross_entropy_probs")
    for batch in ((8,) if args.quick else (8, 64)):
        s = get_case("mlp").build(dtype=torch.float64, device=torch.device(args.device), seed=0, batch=batch, **opts)
        mod = s.reference.module
        names = [k for k, _ in mod.named_parameters()]
        ps = tuple(p.detach().clone().requires_grad_(True) for p in mod.parameters())
        n = sum(p.numel() for p in ps)
        print(f"\n[6] against gradcheck: float64 MLP 23-100-64-10, {n} parameters, batch {batch}", flush=True)

        def loss(*p):
            return s.reference.loss_fn(functional_call(mod, dict(zip(names, p)), (s.x,)), s.t)

        t = best({"ours": lambda: run("mlp", steps=1, device=args.device, batch=batch, **opts),
                  "gradcheck fast": lambda: torch.autograd.gradcheck(loss, ps, fast_mode=True)}, 5 if args.quick else 9)
        slow = best({"slow": lambda: torch.autograd.gradcheck(loss, ps)}, 1 if args.quick else 2)["slow"]
        df = run("mlp", steps=1, device=args.device, batch=batch, **opts)
        print(f"  full check (run, 1 step: {len(df)} rows, per layer and quantity, the worst element's index) "
              f"{t['ours'] * 1e3:.1f} ms; gradcheck fast {t['gradcheck fast'] * 1e3:.1f} ms, slow {slow:.2f} s")
        r = t["ours"] / slow
        tab.add(6, f"batch {batch}: full check / gradcheck slow", r, "<= 0.001", r <= 1e-3)
        r = t["ours"] / t["gradcheck fast"]
        tab.add(6, f"batch {batch}: full check / gradcheck fast", r, "< 1", r < 1)


# issue 17's networks: (sizes, activations); each at batch 64 and 256, float32 and float64
WIDE = [((784, 256, 10), ("relu", "softmax")), ((784, 256, 10), ("tanh", "softmax")),
        ((784, 1024, 1024, 10), ("relu", "relu", "softmax")), ((784, 1024, 1024, 10), ("tanh", "tanh", "softmax"))]


def naive_loop(s, steps, mode):
    """The loop a user writes by hand: per step the manual step, the autograd step (the
    reference loaded with the manual's weights in lockstep), torch.testing.assert_close
    on every quantity both report, then both updates."""
    from bpcheck.compare.core.runner import observe

    man, ref = s.manual, s.reference
    for _ in range(steps):
        if mode == "lockstep":
            ref.load(man.params)
        with torch.no_grad():
            mt = man.step(s.x, s.t)
        rt = ref.step(s.x, s.t)
        mo, ro = observe(mt, man.params, None), observe(rt, ref.params, None)
        for k, v in mo.items():
            if k in ro:
                try:
                    torch.testing.assert_close(v, ro[k].to(v.dtype))
                except AssertionError:  # its cost is the point, not its verdict
                    pass
        with torch.no_grad():
            man.update(mt)
        ref.update(rt)


def target7(args, tab, keep):
    """Harness overhead on real-sized networks: a check's time over (the manual side alone +
    the reference alone, each stepping the same run), and over bare training (forward,
    backward, torch.optim step) and the naive loop (naive_loop), in lockstep and free mode;
    the same check under the torch rule (no probe: compare.core.probe's share); peak
    memory of the check over the two sides' own."""
    dev = torch.device(args.device)
    steps = args.wide_steps or (5 if args.quick else 100)
    dtypes = (torch.float32,) if args.quick else (torch.float32, torch.float64)
    nets = [WIDE[int(i)] for i in args.wide.split(",")] if args.wide else WIDE[:2] if args.quick else WIDE
    batches = tuple(int(b) for b in args.wide_batch.split(",")) if args.wide_batch else (64,) if args.quick else (64, 256)
    if args.wide_dtype:
        dtypes = tuple(getattr(torch, d) for d in args.wide_dtype.split(","))
    print(f"\n[7] wide networks, {steps} SGD steps, {args.device}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    # untimed, once: what a process pays on first use (torch.optim's lazy torch._dynamo import,
    # the engines' and the probe's first calls), so that no row's first figure carries it
    for mode in ("lockstep", "free"):
        naive_loop(get_case("mlp").build(dtype=torch.float32, device=dev, seed=0), 2, mode)
        run("mlp", steps=2, mode=mode, device=dev)
    for sizes, acts in nets:
        for batch in batches:
            for dtype in dtypes:
                opts = dict(sizes=sizes, activations=acts, batch=batch, loss="cross_entropy_probs")
                name = f"{'-'.join(map(str, sizes))} {acts[0]}, batch {batch}, {str(dtype)[6:]}"

                def setup():
                    return get_case("mlp").build(dtype=dtype, device=dev, seed=0, **opts)

                def bare():
                    s = setup()
                    mod, opt, loss_fn = s.reference.module, s.reference.optimizer, s.reference.loss_fn
                    for _ in range(steps):
                        opt.zero_grad()
                        loss_fn(mod(s.x), s.t).backward()
                        opt.step()
                    sync(dev)

                def manual():
                    s = setup()
                    with torch.no_grad():
                        for _ in range(steps):
                            s.manual.update(s.manual.step(s.x, s.t))
                    sync(dev)

                def reference():
                    s = setup()
                    for _ in range(steps):
                        s.reference.update(s.reference.step(s.x, s.t))
                    sync(dev)

                def naive(mode):
                    def f():
                        naive_loop(setup(), steps, mode)
                        sync(dev)
                    return f

                def check(mode, **kw):
                    def f():
                        r = run("mlp", steps=steps, mode=mode, dtype=dtype, device=dev, seed=0, **opts, **kw)
                        keep[f"7 {name} {mode}"] = r.attrs["engine"]
                        sync(dev)
                    return f

                fns = {"bare": bare, "manual": manual, "reference": reference,
                       "lockstep": check("lockstep"), "free": check("free"),
                       "lockstep torch rule": check("lockstep", tolerance="torch"),
                       "free torch rule": check("free", tolerance="torch"),
                       "naive lockstep": naive("lockstep"), "naive free": naive("free")}
                t = best(fns, args.reps or (1 if args.quick else 3))
                sides = t["manual"] + t["reference"]
                mem = {} if args.no_memory else {k: peak_memory(fns[k], dev) for k in ("manual", "reference", "lockstep", "free")}
                print(f"  {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()) +
                      f"; engines {keep[f'7 {name} lockstep']}, {keep[f'7 {name} free']}; peak MiB "
                      + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in mem.items()) +
                      f"; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
                for mode in ("lockstep", "free"):
                    r = t[mode] / sides
                    tab.add(7, f"{name} {mode}: check / (manual + reference)", r, "<= 1.1", r <= 1.1,
                            f"torch rule (no probe) {t[mode + ' torch rule'] / sides:.2f}; check / bare training "
                            f"{t[mode] / t['bare']:.2f}; check / naive loop {t[mode] / t['naive ' + mode]:.2f}")
                for mode in ("lockstep", "free") if mem else ():  # the bound: the two sides' own peaks plus one chunk (MEMORY_BUDGET)
                    rm = (mem[mode] - mem["manual"] - mem["reference"]) / manualrun.MEMORY_BUDGET
                    tab.add(7, f"{name} {mode}: peak memory, (check - manual - reference) / chunk budget", rm, "<= 1",
                            rm <= 1, f"chunk budget {manualrun.MEMORY_BUDGET / 2**20:.0f} MiB")


TARGETS = {1: target1, 2: target2, 3: target3, 4: target4, 5: target5, 6: target6, 7: target7}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repetitions (a smoke run)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--only", help="comma-separated target numbers, e.g. 1,5")
    p.add_argument("--wide", help="target 7: which networks, indices into WIDE (0-3), e.g. 2,3")
    p.add_argument("--wide-batch", help="target 7: batch sizes, e.g. 64")
    p.add_argument("--wide-dtype", help="target 7: dtypes, e.g. float32")
    p.add_argument("--wide-steps", type=int, help="target 7: steps per run (default 100; 5 with --quick)")
    p.add_argument("--reps", type=int, help="target 7: repetitions (default 3; 1 with --quick)")
    p.add_argument("--no-memory", action="store_true", help="target 7: skip the peak-memory measurement")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU here")
    header(args)
    only = [int(x) for x in args.only.split(",")] if args.only else list(TARGETS)
    tab, keep = Table(), {}
    t0 = time.perf_counter()
    for k in only:
        TARGETS[k](args, tab, keep)
    tab.show()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{time.perf_counter() - t0:.0f} s in all; load average now {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
