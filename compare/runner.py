"""One runner for every case: ``run(case, ...) -> pandas.DataFrame``.

Modes:

- ``lockstep``: before every step the reference is loaded with the manual side's
  weights, so each difference isolates the formulas of that one step.
- ``free``: each side trains its own copy with its own optimizer, so the
  differences show how the two trajectories drift apart.

Per step both sides run forward and backward, then update; the runner keeps
each side's tensors on the device and compares them a chunk of steps at a time
(compare.diff), so that the host sees one transfer per column and chunk.
"""
import numpy as np
import pandas as pd
import torch

from bpcheck.reference.batched import Unbatchable

from . import replay
from . import seeds as stacks
from .errors import UsageError
from .frame import BACKWARD, build_frame, causal_key, compared, layout, worst_per_seed  # noqa: F401
from .schema import COLUMNS
from .tolerances import tolerance
from .writer import ReportWriter

MODES = ("lockstep", "free")


def resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        d = dtype
    else:
        d = getattr(torch, str(dtype), None)
        if not isinstance(d, torch.dtype):
            raise UsageError(f"unknown dtype {dtype!r}: torch has no such dtype")
    if not d.is_floating_point:
        raise UsageError(f"dtype {d} is not a floating-point dtype")
    return d


def resolve_device(device):
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported (cpu or cuda)")
    return dev


def resolve_case(case):
    if isinstance(case, str):
        from bpcheck.cases import get_case

        return get_case(case)
    return case


def check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    return steps


def run(case, steps=None, mode="lockstep", device="cpu", dtype="float64", rtol=None, atol=None,
        seed=None, csv=None, force=False, chunk=2048, fast=True, seeds=None, per_seed="rows", **options):
    """Run ``case`` (a name or a Case) and return the report, one row per (step, layer, quantity).

    ``fast`` (default) runs the fast engines of compare.replay where they apply (lockstep
    replay, lean free running, numpy twin for tiny CPU cases); ``fast=False`` steps both
    sides in turn with one autograd call per step (``_steps``). Both give the same report;
    ``report.attrs["engine"]`` names the one that ran.

    ``seeds=N`` runs N copies built with seeds ``seed``..``seed+N-1`` (seed default 0)
    stacked together (compare.seeds); ``per_seed="worst"`` keeps one row per seed and
    quantity, its largest difference over the steps, written when the run ends."""
    case = resolve_case(case)
    steps = check_steps(steps if steps is not None else case.steps)
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    rtol, atol = tolerance(dt, rtol, atol)
    if seeds is not None:
        stacks.check(seeds, per_seed, mode)
    own = csv is not None and not isinstance(csv, ReportWriter)
    writer = ReportWriter(csv, force) if own else csv
    copies = None
    if seeds is None:
        setup = _build(case, dt, dev, seed, options)
        check_sides(setup.manual, setup.reference)
    else:
        setup, copies = stacks.stacked_setup(case, _build, check_sides, dt, dev, seed or 0, seeds, options)
    meta = {"case": case.name, "mode": mode, "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "seed": -1 if seed is None else seed, "atol": atol, "rtol": rtol}
    frames, stopped = [], {"manual": None, "reference": None}
    blocks, engine = _blocks(setup, mode, steps, chunk, stopped, fast, copies)
    worst = None
    try:
        for block in blocks:
            if copies is not None and per_seed == "worst":
                worst = worst_per_seed(compared(block, rtol, atol), worst, len(copies))
                continue
            df = _frame(block, meta, rtol, atol)
            frames.append(df)
            if writer:
                writer.write(df)
    finally:
        if worst is not None:  # the worst of every finished step, also after an interrupt
            frames.append(layout(worst, meta))
            if writer:
                writer.write(frames[-1])
        if own:
            writer.close()
    if len(frames) == 1:
        report = frames[0]
    else:
        report = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    report.attrs["stopped"] = {case.name: stopped}
    report.attrs["engine"] = engine
    return report


def _build(case, dtype, device, seed, options):
    return case.build(dtype=dtype, device=device, seed=seed, **options)


def _blocks(setup, mode, steps, chunk, stopped, fast, copies=None):
    """The blocks of steps to compare, and the name of the engine that makes them."""
    engine = replay.engine_for(setup, mode, fast, steps)
    if copies is not None:
        engine = "replay"  # stacked copies: only the replay can take them
    numpy = engine != "step" and replay.numpy_ok(setup.manual, setup.x, setup.t)
    twin = "+numpy" if numpy else ""
    if engine == "replay":
        try:
            return replay.replay_blocks(setup, steps, chunk, numpy, copies), "replay" + twin
        except Unbatchable as e:
            if copies is not None:
                raise UsageError(f"--seeds: the reference cannot be batched ({e})") from None
            # a reference that vmap cannot take: step it in turn
    elif engine == "free":
        return replay.free_blocks(setup, steps, chunk, numpy), "free" + twin
    return _steps(setup, mode, steps, chunk, stopped), "step"


def check_sides(manual, reference):
    mp, rp = manual.params, reference.params
    if len(mp) != len(rp):
        raise UsageError(f"manual side has {len(mp)} layers, reference side has {len(rp)}")
    for i, (a, b) in enumerate(zip(mp, rp), 1):
        if set(a) != set(b):
            raise UsageError(f"layer {i}: manual parameters {sorted(a)} != reference parameters {sorted(b)}")
        for n in a:
            if tuple(a[n].shape) != tuple(b[n].shape):
                raise UsageError(f"layer {i} {n}: manual shape {tuple(a[n].shape)} != reference shape {tuple(b[n].shape)}")


def observe(trace, params, state):
    """A side's values at one step, keyed (layer, time, quantity)."""
    obs = {(0, None, "loss"): trace["loss"], (0, None, "output"): trace["output"]}
    for i, q in enumerate(trace["layers"], 1):
        for k, v in q.items():
            name, time = k if isinstance(k, tuple) else (k, None)
            obs[(i, time, name)] = v
    for i, p in enumerate(params, 1):
        for n, v in p.items():
            obs[(i, None, n)] = v.clone()
    for i, s in enumerate(state or [], 1):
        for n, v in s.items():
            obs[(i, None, "optimizer_state" if n == "weight" else f"optimizer_state_{n}")] = v.clone()
    return obs


def _state(side):
    return side.state() if hasattr(side, "state") else None


def _steps(setup, mode, steps, chunk, stopped):
    """Yield blocks {"step": [...], "manual": {key: [tensors]}, "reference": {...}} of up to ``chunk`` steps."""
    man, ref, x, t, thr = setup.manual, setup.reference, setup.x, setup.t, setup.stop_below
    block = _new_block()
    for step in range(1, steps + 1):
        if mode == "lockstep":
            ref.load(man.params)
        mt, rt = man.step(x, t), ref.step(x, t)
        done = False
        if thr is not None:
            for side, tr in (("manual", mt), ("reference", rt)):
                if stopped[side] is None and float(tr["loss"]) < thr:
                    stopped[side] = step
            done = stopped["manual"] is not None or stopped["reference"] is not None
        if not done:
            man.update(mt)
            ref.update(rt)
        _append(block, step, observe(mt, man.params, _state(man)), observe(rt, ref.params, _state(ref)))
        if len(block["step"]) == chunk:
            yield block
            block = _new_block()
        if done:
            break
    if block["step"]:
        yield block
    if thr is not None:  # a side that has not stopped runs on alone, only to report its step
        for name, side in (("manual", man), ("reference", ref)):
            for s in range(step + 1, steps + 1) if stopped[name] is None else ():
                tr = side.step(x, t)
                if float(tr["loss"]) < thr:
                    stopped[name] = s
                    break
                side.update(tr)


def _new_block():
    return {"step": [], "manual": {}, "reference": {}}


def _append(block, step, mo, ro):
    block["step"].append(step)
    for side, obs in (("manual", mo), ("reference", ro)):
        for k, v in obs.items():
            block[side].setdefault(k, []).append(v)


def _frame(block, meta, rtol, atol):
    """The block's report rows (compare.frame builds every row of every path)."""
    return build_frame(block, meta, rtol, atol)
