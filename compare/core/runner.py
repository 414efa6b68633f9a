"""One runner for every case: ``run(case, ...) -> pandas.DataFrame``.

Modes:

- ``lockstep``: before every step the reference is loaded with the manual side's
  weights, so each difference isolates the formulas of that one step.
- ``free``: each side trains its own copy with its own optimizer, so the
  differences show how the two trajectories drift apart.

Per step both sides run forward and backward, then update; the runner keeps
each side's tensors on the device and compares them a chunk of steps at a time
(compare.diff, compare.frame), so that the host sees one transfer per column and chunk.

Engines. ``_steps`` steps both sides in turn, one autograd call per step: the
straightforward path, and the one that honours everything (stop rules, ``on_trace``,
``on_block``, ReLU kink alignment). By default (``fast=True``) a run takes a fast
engine of compare.replay where it gives the same report (lockstep replay, lean free
running, numpy twin for tiny CPU cases), and the straightforward path otherwise;
``report.attrs["engine"]`` names the engine that ran, with the reason when a fast one
was declined (``"step (kinks)"``, say).
"""
import signal
from dataclasses import replace

import pandas as pd
import torch

from bpcheck.compare.io import interrupt
from bpcheck.compare.io import keep as kept

from bpcheck.compare.engines import replay
from bpcheck.compare.engines.manualrun import MEMORY_BUDGET
from bpcheck.compare.engines import seeds as stacks
from bpcheck.compare.core.checks import check_case_options as check_options, check_run_options, checked_build
from bpcheck.compare.core.errors import DataExhausted, Unbatchable, UsageError
from bpcheck.compare.engines.faults import cut_at_nonfinite, input_error, reference_step
from bpcheck.compare.engines.faults import update as guarded_update
from bpcheck.compare.engines.kinks import mark_kinks, unreported as unreported_kinks
from bpcheck.compare.core import tolerances as yardstick
from bpcheck.compare.core.frame import build_frame, compared, layout, worst_per_seed
from bpcheck.compare.core.probe import Probe
from bpcheck.compare.diagnosis.origin import NO_LAYER_BACKWARD, diagnose
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.core.sites import UNMATCHED, check_keys, site_names, unmatched_rows
from bpcheck.compare.diagnosis.settings import take as take_settings
from bpcheck.compare.io.writer import ReportWriter, check_output_path

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
    if not all(hasattr(case, a) for a in ("name", "build", "steps")):
        raise UsageError(f"case must be a case name or a bpcheck Case, got {type(case).__name__}")
    return case


def check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    return steps


def run(case, steps=None, mode="lockstep", device="cpu", dtype="float64", rtol=None, atol=None,
        seed=None, csv=None, force=False, chunk=2048, on_trace=None, progress=None, on_block=None,
        stop_on_nonfinite=False, fast=True, seeds=None, per_seed="rows", keep=None, unmatched="error",
        tolerance=None, **options):
    """Run ``case`` (a name or a Case) and return the report, one row per (step, layer, quantity).

    ``options`` go to the case's ``build`` (check_options refuses names it does not take).
    ``on_trace``: called with each line of the manual side's ``trace_line`` (e.g. ``print``);
    the report's ``attrs["stopped"]`` holds, per case, the step at which each side stopped
    (None without a stop rule, False if a side never met it within ``steps``).
    ``progress``, if given, is called as ``progress(step)`` after each compared step
    (bpcheck.progress uses it to drive a progress bar).
    ``on_block(block, frame)``, if given, is called for every chunk of steps with the
    raw per-step tensors, ``block = {"step": [steps], "manual": {key: [tensor per step]},
    "reference": {...}}`` keyed (layer, time, quantity) as in ``observe``, and that
    chunk's report rows. bpcheck.compare.diagnosis.devices uses it to compare two runs.
    ``stop_on_nonfinite``: end the run at the first step with a NaN or Inf (otherwise it
    goes on; such rows fail either way). On SIGINT or SIGTERM the finished steps are
    written and ``Interrupted`` is raised with ``.report`` (compare.interrupt). The
    report's ``attrs`` also hold, per case, ``halted`` (why it ended early) and
    ``origin`` (own or inherited error of each failing layer, compare.origin).

    ``fast`` (default) runs the fast engines of compare.replay where they give the same
    report; ``fast=False`` steps both sides in turn with one autograd call per step
    (``_steps``). ``report.attrs["engine"]`` names the one that ran.
    ``seeds=N`` runs N copies built with seeds ``seed``..``seed+N-1`` (seed default 0)
    stacked together (compare.seeds); ``per_seed="worst"`` keeps one row per seed and
    quantity, its largest difference over the steps, written when the run ends.
    ``keep``: what the returned report holds, ``"all"`` rows or a bounded ``"summary"``
    (compare.io.keep; default: the summary for a run of over 10,000 steps with a
    target, which holds every row). Without a target a run whose report would not fit
    in memory is refused at start (compare.io.keep.check_fits).
    ``unmatched``: what a quantity only one side reports is (compare.core.sites.check_keys):
    ``"error"`` (UsageError after step 1, before anything is written) or ``"row"``.
    A failing run's ``attrs["failure"]`` holds the first failing row's two tensors.
    ``tolerance``: the rule by name, ``yardstick`` (default) or ``torch``; ``rtol`` and
    ``atol`` given make it ``user`` (compare.core.tolerances)."""
    given = (rtol, atol)
    steps, mode, dev, dt, rtol, atol = check_run_options(steps, mode, device, dtype, rtol, atol, csv, force, seed, chunk)
    verdict = yardstick.rule(dt, tolerance, *given)
    case = resolve_case(case)
    steps = check_steps(steps if steps is not None else case.steps)
    check_options(case, options)
    if seeds is not None:
        stacks.check(seeds, per_seed, mode)
    own = csv is not None and not isinstance(csv, ReportWriter)
    keep = kept.choose(keep, csv, steps)
    if own:
        check_output_path(csv, force)  # before the build; the writer claims the path after it
    copies = None
    if seeds is None:
        setup = checked_build(build, case, dt, dev, seed, options)
        check_sides(setup.manual, setup.reference)
    else:
        setup, copies = stacks.stacked_setup(case, build, check_sides, dt, dev, seed or 0, seeds, options)
    unmatched = getattr(setup, "unmatched", None) or unmatched
    if unmatched not in UNMATCHED:
        raise UsageError(f"unmatched must be one of {', '.join(UNMATCHED)}, got {unmatched!r}")
    if csv is None:
        kept.check_fits(setup, steps, copies)
    probe = None
    if verdict.name == "yardstick":  # the reference again in another precision (compare.core.probe)
        probe = Probe(setup, mode, verdict) if copies is None else None
        if probe is None or probe.ref is None:
            verdict = replace(yardstick.rule(dt, "torch"), name="torch (no probe)")
    writer = ReportWriter(csv, force) if own else csv  # claimed once the setup is known good
    meta = {"case": case.name, "mode": mode, "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "seed": -1 if seed is None else seed, "atol": verdict.atol, "rtol": verdict.rtol, "rule": verdict.name,
            "settings": take_settings(dev), "compare": "m/r", "sites": site_names(setup.reference)}
    frames, stopped, halted = ([] if keep == "all" else kept.Summary()), {"manual": None, "reference": None}, None
    failure, first, unaligned = {}, True, []
    worst = {"cols": None}  # per_seed="worst": the worst so far, laid out when the run ends

    def flush_worst():  # the worst of every finished step, also after an interrupt
        if worst["cols"] is not None:
            df = layout(worst["cols"], meta)
            frames.append(df)
            worst["cols"] = None
            if writer:
                writer.write(df)

    blocks, engine = _blocks(setup, mode, steps, chunk, stopped, fast, copies, on_trace, progress, on_block,
                             yardstick.kink_tolerance(verdict))
    try:
        with interrupt.handled():
            for block in blocks:
                with interrupt.deferred():
                    if len(block["step"]) and first:  # the first block: nothing one-sided goes unsaid
                        first = False
                        one_sided = check_keys(block["manual"], block["reference"], meta["sites"], unmatched)
                        unaligned = unreported_kinks(setup.reference, block["manual"])
                        if any(one_sided):
                            frames.append(unmatched_rows(one_sided, block["step"][0], meta))
                            if writer:
                                writer.write(frames[-1])
                    if len(block["step"]):
                        allowed = probe.atol(block) if probe is not None else verdict.atol
                        if copies is not None and per_seed == "worst":
                            worst["cols"] = worst_per_seed(compared(block, verdict.rtol, allowed), worst["cols"],
                                                           len(copies))
                        else:
                            df = mark_kinks(_frame(block, meta, verdict.rtol, allowed), block)
                            if on_block is not None:
                                on_block(block, df)
                            if stop_on_nonfinite:
                                df, at = cut_at_nonfinite(df)
                                halted = f"non-finite values at step {at} (stop_on_nonfinite)" if at else None
                            frames.append(df)
                            if not failure:
                                failure.update(first_failure_values(block, df))
                            if writer:
                                writer.write(df)
                        if progress is not None and not engine.startswith("step"):  # _steps calls it itself
                            for s in block["step"]:
                                progress(int(s))
                if "interrupted" in block:
                    raise block["interrupted"]
                halted = halted or block.get("halted")
                if halted:
                    break
                block = allowed = None  # released before the engine builds the next: one block held at a time
            with interrupt.deferred():
                flush_worst()
    except KeyboardInterrupt as e:
        sig = e.signum if isinstance(e, interrupt.Interrupted) else signal.SIGINT
        report = None
        try:
            with interrupt.deferred():  # a second Ctrl-C while this one is answered gets the same answer
                flush_worst()
                report = _report(frames, case, stopped, f"interrupted by {signal.Signals(sig).name}", engine)
                if own:
                    writer.interrupted()  # every finished step, renamed into place (nothing if none finished)
        except KeyboardInterrupt:
            pass
        raise interrupt.Interrupted(sig, report) from None
    except BaseException as e:
        if own:
            writer.abort()  # an error: the previous file at the path stays as it was
        bad = input_error(e)  # an error that is the input's (a loss that is not a scalar): exit 2
        if bad is not None:
            raise bad from None
        raise
    finally:
        blocks.close()  # an engine's generator ends now, with whatever it holds (a forked process)
    report = _report(frames, case, stopped, halted, engine)
    if failure:
        report.attrs["failure"] = failure
    report.attrs["rule"] = verdict
    report.attrs["kinks_unreported"] = {case.name: unaligned} if unaligned else {}
    try:
        with interrupt.handled():
            if own:
                writer.close()  # renamed into place (a signal inside is answered once it is)
            if copies is None:  # own, inherited or drift: a diagnosis beside the verdict, never in its way
                try:
                    origin = diagnose(case, dict(dtype=dt, device=dev, seed=seed, **options), report, verdict)
                    if origin is None:  # said in the summary, never skipped in silence
                        report.attrs["origin_missing"] = {case.name: NO_LAYER_BACKWARD}
                except Exception as e:  # noqa: BLE001 (the report stands; say why there is no diagnosis)
                    origin, report.attrs["origin_error"] = None, {case.name: f"{type(e).__name__}: {e}"}
                    report.attrs["origin_missing"] = {case.name: f"its replay failed ({type(e).__name__}: {e})"}
                report.attrs["origin"] = {case.name: origin}
    except KeyboardInterrupt as e:  # every step is written: hand the report over (without a diagnosis)
        raise interrupt.Interrupted(getattr(e, "signum", signal.SIGINT), report) from None
    return report


def _report(frames, case, stopped, halted, engine=None):
    if isinstance(frames, kept.Summary):
        report = frames.report(COLUMNS)
        report.attrs.update(kept="summary", rows=frames.rows)
    elif len(frames) == 1:
        report = frames[0]
    else:
        report = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    report.attrs["stopped"] = {case.name: stopped}
    report.attrs["halted"] = {case.name: halted}
    report.attrs["engine"] = engine
    return report


def _blocks(setup, mode, steps, chunk, stopped, fast, copies, on_trace, progress, on_block, tol):
    """The blocks of steps to compare, and the name of the engine that makes them:
    ``replay``/``free`` (``+numpy`` with the numpy twin, ``+fork`` with its trajectory in a
    forked process: compare.trajectory), ``step``, or ``step (why)``
    where ``fast`` asked for a fast engine and the run needs ``_steps`` (compare.replay:
    ``engine_for`` says why)."""
    engine, why = replay.engine_for(setup, mode, fast, steps, on_trace=on_trace, on_block=on_block)
    if copies is not None:
        engine, why = "replay", None  # stacked copies: only the replay can take them
    numpy = engine != "step" and replay.numpy_ok(setup.manual, setup.x, setup.t)
    twin = ("+numpy" if numpy else "") + ("+fork" if replay.forks(numpy, steps) else "")
    if engine == "replay":
        try:
            return replay.replay_blocks(setup, steps, chunk, numpy, copies, tol), "replay" + twin
        except Unbatchable as e:
            if copies is not None:
                raise UsageError(f"--seeds: the reference cannot be batched ({e})") from None
            why = "unbatchable reference"  # a reference that vmap cannot take: step it in turn
    elif engine == "free":
        return replay.free_blocks(setup, steps, chunk, numpy, tol), "free" + twin
    name = "step" if why is None else f"step ({why})"
    return _steps(setup, mode, steps, chunk, stopped, on_trace, progress, tol), name


def build(case, dtype, device, seed, options):
    """``case.build``; with user options, a TypeError or ValueError there is a bad option value."""
    try:
        return case.build(dtype=dtype, device=device, seed=seed, **options)
    except (TypeError, ValueError) as e:
        if not options or isinstance(e, UsageError):
            raise
        raise UsageError(f"case {case.name}: bad option value ({e})") from None


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


def observe(trace, params, state, buffers=(), clone=True):
    """A side's values at one step, keyed (layer, time, quantity). Optimizer state comes
    per parameter either as one tensor (the seeds' form: ``optimizer_state[_<param>]``) or
    as ``{state name: tensor}`` (torch's names: ``<param>.exp_avg``, ...). Parameters,
    state and buffers are copied (the next step updates them in place) unless ``clone``
    is False: a caller done with them before the next step (the probe's one-step parts)."""
    obs = {(0, None, "loss"): trace["loss"], (0, None, "output"): trace["output"]}
    for i, q in enumerate(trace["layers"], 1):
        for k, v in q.items():
            name, time = k if isinstance(k, tuple) else (k, None)
            obs[(i, time, name)] = v
    for i, z in enumerate(trace.get("pre") or (), 1):  # side information: the probe aligns kinks to it
        if z is not None:
            obs[(i, None, "_pre")] = z
    copy = (lambda v: v.clone()) if clone else (lambda v: v.detach())
    for i, p in enumerate(params, 1):
        for n, v in p.items():
            obs[(i, None, n)] = copy(v)
    for i, s in enumerate(state or [], 1):
        for n, v in s.items():
            if isinstance(v, dict):
                obs.update({(i, None, f"{n}.{k}"): copy(w) for k, w in v.items()})
            else:
                obs[(i, None, "optimizer_state" if n == "weight" else f"optimizer_state_{n}")] = copy(v)
    for i, b in enumerate(buffers or [], 1):
        obs.update({(i, None, n): copy(v) for n, v in b.items()})
    return obs


def _buffers(side):
    return getattr(side, "buffers", None)


def _state(side):
    return side.state() if hasattr(side, "state") else None


def stop_rule(setup):
    """The predicate that stops a side after its forward: Setup.stop_when, else loss < Setup.stop_below."""
    if getattr(setup, "stop_when", None) is not None:
        return setup.stop_when
    if setup.stop_below is not None:
        thr = setup.stop_below
        return lambda trace: float(trace["loss"]) < thr
    return None


def _tracer(side, on_trace):
    """emit(step, trace, stopped): pass the side's trace_line to on_trace, if both exist."""
    line = getattr(side, "trace_line", None)

    def emit(step, trace, stopped):
        if on_trace is not None and line is not None:
            text = line(step, trace, stopped)
            if text is not None:
                on_trace(text)

    return emit


def _steps(setup, mode, steps, chunk, stopped, on_trace=None, progress=None, tol=None):
    """Yield blocks {"step": [...], "manual": {key: [tensors]}, "reference": {...}} of up to ``chunk`` steps.

    ``tol`` (rtol, atol) lets the reference align ReLU kinks with the manual side
    (compare.kinks). On KeyboardInterrupt the block of finished steps is yielded with
    ``block["interrupted"]`` set to the exception, and the generator ends."""
    man, ref, x, t, stop = setup.manual, setup.reference, setup.x, setup.t, stop_rule(setup)
    batch = getattr(setup, "batch", None)
    emit = _tracer(man, on_trace)
    block, held = _new_block(), 0  # held: bytes of the block's values
    for step in range(1, steps + 1):
        try:
            if batch is not None:
                try:
                    x, t = batch(step)
                except DataExhausted:
                    block["halted"] = f"the data ran out after step {step - 1}"
                    break
            if mode == "lockstep":
                ref.load(man.params, *([_buffers(man)] if _buffers(man) else []))
            mt = man.step(x, t)
            rt = reference_step(ref, x, t, mt, tol)
            if stop is not None:
                for side, tr in (("manual", mt), ("reference", rt)):
                    if stopped[side] is None and stop(tr):
                        stopped[side] = step
            done = stopped["manual"] is not None or stopped["reference"] is not None
            if not done:
                man.update(mt)
                guarded_update(ref, rt)  # an update that overflows is a fault (NaN rows), not a crash
            mo, ro = observe(mt, man.params, _state(man), _buffers(man)), observe(rt, ref.params, _state(ref), _buffers(ref))
            held += sum(v.numel() * v.element_size() for obs in (mo, ro) for v in obs.values() if torch.is_tensor(v))
            _append(block, step, mo, ro, (x, t) if batch is not None else None)
        except KeyboardInterrupt as e:  # hand over the finished steps, then stop
            _trim(block)
            block["interrupted"] = e
            yield block
            return
        if not done or stopped["manual"] == step:
            emit(step, mt, stopped["manual"] == step)
        if progress is not None:
            progress(step)
        # step 1 alone: a bad side is refused before more run; then up to `chunk` steps and half
        # of MEMORY_BUDGET (a wide network's steps are bounded by bytes, not by count): a block
        # never grows past it with its next step, and the probe's part (compare.core.probe.PART)
        # and the element test's passes (compare.core.diff.ROW_BUDGET) take the other half
        if len(block["step"]) == chunk or step == 1 or held + held // len(block["step"]) > MEMORY_BUDGET // 2:
            yield block
            block, held = _new_block(), 0
        if done:
            break
    if block["step"] or "halted" in block:
        yield block
    if stop is not None and done:  # a side that has not stopped runs on alone, only to find its stop step
        for name, side, last in (("manual", man, mt), ("reference", ref, rt)):
            if stopped[name] is not None:
                continue
            side.update(last)  # the update that step `step` skipped because the other side stopped
            if side is man:
                emit(step, last, False)
            for s in range(step + 1, steps + 1):
                tr = side.step(x, t)
                if stop(tr):
                    stopped[name] = s
                    if side is man:
                        emit(s, tr, True)
                    break
                side.update(tr)
                if side is man:
                    emit(s, tr, False)
    if stop is not None:  # False: the side had a stop rule and did not meet it within `steps`
        for name in stopped:
            if stopped[name] is None:
                stopped[name] = False


def first_failure_values(block, df):
    """{"row": the first failing row, "manual", "reference": its two tensors} from a
    block and its rows, or {} when every row passed (bpcheck.testing's message re-compares
    the pair in full, without the run keeping every step's values)."""
    bad = ~df["passed"].astype(bool).to_numpy()
    if not bad.any():
        return {}
    row = df.iloc[int(bad.argmax())]
    key = (int(row["layer"]), None if pd.isna(row["time"]) else int(row["time"]), row["quantity"])
    if key not in block["manual"] or key not in block["reference"]:
        return {}
    at = list(block["step"]).index(int(row["step"]))
    m, r = block["manual"][key][at], block["reference"][key][at]
    return {"row": row, "manual": m.clone(), "reference": r.clone()}


def _new_block():
    return {"step": [], "manual": {}, "reference": {}}


def _append(block, step, mo, ro, data=None):
    """Add one step's values; ``data``, the step's (x, t) where the data changes by step, goes
    in ``block["data"]`` (the probe evaluates each step on its own batch)."""
    for side, obs in (("manual", mo), ("reference", ro)):
        for k, v in obs.items():
            block[side].setdefault(k, []).append(v)
    if data is not None:
        block.setdefault("data", []).append(data)
    block["step"].append(step)  # last: a step is in the block once all its values are


def _trim(block):
    """Drop the values of a step cut short (an interrupt inside _append)."""
    n = len(block["step"])
    for side in ("manual", "reference"):
        for k in list(block[side]):
            del block[side][k][n:]
            if not block[side][k]:
                del block[side][k]
    if "data" in block:
        del block["data"][n:]


def _frame(block, meta, rtol, atol):
    """The block's report rows (compare.frame builds every row of every path, in causal order)."""
    return build_frame(block, meta, rtol, atol)
