"""The runner's fast engines: lockstep replay and a lean free-running loop.

``compare.runner.run`` picks one with ``engine_for``; ``runner._steps`` (one
autograd call per step, both sides in turn) stays as the straightforward path,
for ``fast=False`` and for what these engines cannot take. Every engine yields
the same blocks (compare.frame), so the report is the same, rows and columns;
tests/test_fast_paths.py proves it, differences equal to rounding.

**Lockstep replay.** In lockstep mode the reference's gradients at step t depend
only on the weights at step t. So the manual side steps alone through a chunk of
steps, recording its traces and its weights; the reference then evaluates
autograd on all the recorded weight states at once (reference.batched: vmap over
torch.func.grad, probes at the hooked layers), and torch.optim applies its update
to the whole stack. For optimizers with state the update runs step by step
through the reference's own optimizer, without autograd.

**Numpy twin.** On 4x3 arrays torch's per-operation dispatch costs 2-3 times
numpy's, and the manual loop is then the bound of a replayed run. For the
built-in MLP on CPU with small tensors, the manual side runs on numpy views of
its own tensors: the same formulas (bpcheck.manual, written once, through
manual/xp.py), the same memory, so each update lands in the tensors.

**Lean trajectory.** On the numpy twin the loop only steps and records the weights
(``ManualRun``: ``MLP.step(lean=True)``); the full trace of a chunk is computed
afterwards in one stacked evaluation of the same formulas (``ManualRun.trace_of``),
since a step's trace depends only on its weights. From FORK_MIN_STEPS steps the
loop runs in a forked process beside this one (compare.trajectory), which meanwhile
runs autograd, the comparison and the writes on the chunks already stepped.

**Free running.** Each side trains its own copy, so per chunk each side runs its
steps alone (the manual side before the reference, or beside it when forked); the
comparison runs per chunk on stacked tensors, on the device, moved to the host in
bulk, with no per-step ``.item()``.

What stays on ``runner._steps`` (``engine_for`` gives the reason, which the report's
``attrs["engine"]`` carries): ``fast=False``; cases with a stop rule (which side
still updates is decided step by step); a manual side with ReLU kinks (the
reference aligns its z with the manual's at each step: compare.kinks); a run with
``on_trace`` (its lines interleave with the steps) or ``on_block`` (it takes the
per-step tensors); float16/bfloat16 lockstep (see REPLAY_DTYPES); fewer than
REPLAY_MIN_STEPS lockstep steps; and references the batched evaluation cannot take
(``reference.batched.Unbatchable``).

Contracts the fast engines keep: an interrupt (KeyboardInterrupt, or a signal through
compare.interrupt) inside a chunk ends it at the last step both sides finished, and
that partial chunk is handed to the runner, which writes it (``block["interrupted"]``);
a reference that raises on non-finite weights gets NaN values for that step
(compare.faults.reference_step): the replay then evaluates that chunk step by step.
"""
from contextlib import closing

import numpy as np
import torch

from bpcheck.compare.engines.manualrun import MEMORY_BUDGET, ManualRun, _state, numpy_ok, paused_gc
from bpcheck.compare.engines.manualrun import stack_steps as stack

FORK_MIN_STEPS = 2048  # a forked trajectory (~20 ms to fork) pays from about here
REPLAY_MIN_STEPS = 64  # fewer steps: tracing the batched reference (~10 ms) costs more than it saves
# In float16/bfloat16 the batched kernels round differently from the per-step ones by an
# ulp, enough to flip verdicts at the edge of those dtypes' tolerance: they step in turn.
# In float32/float64 the batched reference equals the per-step one (tests/test_fast_paths.py).
REPLAY_DTYPES = (torch.float32, torch.float64)


def engine_for(setup, mode, fast=True, steps=None, on_trace=None, on_block=None):
    """(engine, why): "replay" (lockstep), "free", or "step" (the straightforward loop)
    for this setup, and, for "step" with ``fast``, why no fast engine takes it."""
    if not fast:
        return "step", None
    why = None
    if getattr(setup, "stop_below", None) is not None or getattr(setup, "stop_when", None) is not None:
        why = "stop rule"  # a stop rule decides step by step which side still updates
    elif any(getattr(a, "kink", False) for a in getattr(setup.manual, "acts", ()) or ()) and not numpy_ok(
            setup.manual, setup.x, setup.t):
        # the reference aligns its z with the manual's (compare.kinks): the fast engines
        # take z from the lean trajectory's traces, which report it (numpy twin only)
        why = "kinks"
    elif on_trace is not None and getattr(setup.manual, "trace_line", None) is not None:
        why = "on_trace"
    elif on_block is not None:
        why = "on_block"
    elif getattr(setup, "batch", None) is not None:
        why = "per-step data"
    elif getattr(setup.reference, "named_mode", False):
        why = "named sites"
    elif not getattr(setup.reference, "seed_state", True):
        why = "optimizer state"  # torch's named state tensors: the engines record the seeds' form only
    elif mode == "lockstep" and setup.x.dtype not in REPLAY_DTYPES:
        why = f"{str(setup.x.dtype).replace('torch.', '')} lockstep"
    elif mode == "lockstep" and steps is not None and steps < REPLAY_MIN_STEPS:
        why = f"under {REPLAY_MIN_STEPS} steps"
    if why is not None:
        return "step", why
    return ("replay" if mode == "lockstep" else "free"), None


def stack_traces(traces, stack):
    """Per-step traces -> one trace of (T, ...) tensors (the keys the runner compares)."""
    first = traces[0]
    return {"loss": stack([tr["loss"] for tr in traces]),
            "output": stack([tr["output"] for tr in traces]),
            "layers": [{k: stack([tr["layers"][i][k] for tr in traces]) for k in layer}
                       for i, layer in enumerate(first["layers"])]}


def stack_params(per_step, stack):
    """Per-step [{name: tensor}] -> [{name: (T, ...)}]; None (no state) stays None."""
    if per_step[0] is None:
        return None
    return [{n: stack([p[i][n] for p in per_step]) for n in layer} for i, layer in enumerate(per_step[0])]


def observed(trace, params, state):
    """The block's values of stacked (T, ...) tensors, taken as they are: they are the
    chunk's own copies, which nothing updates in place."""
    from bpcheck.compare.core.runner import observe  # the one place that names the keys of a report

    return observe(trace, params, state, clone=False)


def replay_blocks(setup, steps, chunk, numpy=None, seeds=None, tol=None):
    """Lockstep replay. Raises reference.batched.Unbatchable before any step runs if
    the reference cannot be evaluated in batches (the runner then steps it in turn).
    ``tol`` (rtol, atol): ReLU kinks are aligned per state (not across ``seeds``)."""
    from bpcheck.reference.batched import BatchedReference

    man, x, t = setup.manual, setup.x, setup.t
    stacked_xt = seeds is not None and x.dim() == 3
    batched = BatchedReference(setup.reference, x, t, stacked_xt=stacked_xt, tol=None if seeds is not None else tol)
    numpy = numpy_ok(man, x, t) if numpy is None else numpy
    run = ManualRun(man, x, t, numpy, lean=True)
    return _replay(run, batched, steps, chunk, seeds)


def forks(lean, steps):
    """Whether a lean manual side of ``steps`` steps runs in a forked process."""
    from bpcheck.compare.engines import trajectory

    return lean and steps >= FORK_MIN_STEPS and trajectory.available()


def manual_chunks(run, steps, chunk, budget=None):
    """The manual side's chunks of steps, as ``ManualRun.steps`` returns them: a lean
    run of at least FORK_MIN_STEPS steps from a forked process that runs ahead
    (compare.trajectory), anything else here, chunk after chunk. A lean run's chunk is
    sized by the caller (``ManualRun.fit``); ``budget`` sizes the others' first chunk."""
    from bpcheck.compare.engines import trajectory

    if forks(run.lean, steps):
        yield from trajectory.Trajectory(run, steps, chunk)
    else:
        yield from run.chunks(steps, chunk, budget)  # (a lean run ignores it: sized by fit)


def _replay(run, batched, steps, chunk, seeds):
    from bpcheck.compare.io import interrupt

    start, first = 0, run.params()
    chunk = run.fit(chunk) if run.lean else chunk
    with closing(manual_chunks(run, steps, chunk, MEMORY_BUDGET)) as chunks:  # closing: a forked child ends
        for (mtrace, mafter, mstate), n, stop in chunks:
            before = states_before(first, mafter)
            if mtrace is None:
                mtrace = run.trace_of(before)
            rtrace = None
            try:
                with interrupt.deferred():  # the reference's half of the finished steps, then hand them over
                    try:
                        rtrace, rafter, rstate = evaluate(batched, before, n, seeds, mtrace.get("pre"))
                    except RuntimeError:
                        if seeds is not None or all(bool(torch.isfinite(w).all()) for p in before for w in p.values()):
                            raise
                        rtrace, rafter, rstate = in_turn(batched.ref, run.x, run.t, before, mtrace, n, batched.tol)
            except KeyboardInterrupt as e:  # a signal held while autograd ran: this chunk is finished on both sides
                if rtrace is None:
                    raise
                stop = stop or e
            yield new_block(start, n, observed(mtrace, mafter, mstate), observed(rtrace, rafter, rstate), stop, seeds)
            if stop is not None:
                return
            start += n
            first = last_state(mafter)
            mtrace = mafter = mstate = before = rtrace = rafter = rstate = None  # not held while the next chunk runs


def states_before(first, after):
    """The parameters before each step of a chunk: ``first`` (before its first step),
    then each step's ``after`` but the last; per layer {name: (T, ...)}."""
    return [{k: torch.cat([f[k][None], a[k][:-1]]) for k in f} for f, a in zip(first, after)]


def last_state(after):
    """The parameters after a chunk's last step: ``first`` of the next chunk (a copy: a view
    would keep the whole chunk's stack alive)."""
    return [{k: w[-1].clone() for k, w in p.items()} for p in after]


def new_block(start, n, manual, reference, stop, seeds=None):
    """A chunk's block for the runner (compare.frame), ``interrupted`` when ``stop``."""
    block = {"step": np.arange(start + 1, start + n + 1), "manual": manual, "reference": reference}
    if seeds is not None:
        block["seeds"] = seeds
    if stop is not None:
        block["interrupted"] = stop
    return block


def step_view(trace, j):
    """Step ``j`` of a trace stacked over the steps."""
    return {"loss": trace["loss"][j], "output": trace["output"][j],
            "layers": [{k: v[j] for k, v in q.items()} for q in trace["layers"]],
            "pre": [None if z is None else z[j] for z in trace.get("pre", ())] or None}


def in_turn(ref, x, t, before, mtrace, n, tol=None):
    """The reference on ``before`` one state at a time (compare.faults.reference_step:
    NaN values where it raises on non-finite weights): what the replay does for a chunk
    whose batched evaluation raised on non-finite weights."""
    from bpcheck.compare.engines.faults import reference_step
    from bpcheck.compare.engines.faults import update as guarded_update

    x, t = torch.as_tensor(x), torch.as_tensor(t)
    mtrace = {"loss": torch.as_tensor(mtrace["loss"]), "output": torch.as_tensor(mtrace["output"]),
              "layers": [{k: torch.as_tensor(v) for k, v in q.items()} for q in mtrace["layers"]],
              "pre": mtrace.get("pre", [])}
    rtr, raf, rst = [], [], []
    for j in range(n):
        ref.load([{k: w[j] for k, w in p.items()} for p in before])
        rt = reference_step(ref, x, t, step_view(mtrace, j), tol)
        guarded_update(ref, rt)
        rtr.append(rt)
        with torch.no_grad():
            raf.append([{k: w.clone() for k, w in p.items()} for p in ref.params])
        s = _state(ref)
        rst.append(None if s is None else [{k: w.clone() for k, w in d.items()} for d in s])
    return stack_traces(rtr, torch.stack), stack_params(raf, torch.stack), stack_params(rst, torch.stack)


def evaluate(batched, before, n, seeds=None, pre=None):
    """The reference on ``before`` (per layer {name: (n, [N,] ...)}), in memory-bounded
    sub-batches: (trace, parameters after the update, optimizer state). ``pre``: the
    manual's pre-activations per layer, (n, ...) or None, for kink alignment."""
    lead = 1 if seeds is None else 2
    flat = [{k: w.flatten(0, lead - 1) for k, w in p.items()} for p in before]
    total = flat[0][next(iter(flat[0]))].shape[0]
    size = max(1, MEMORY_BUDGET // max(1, batched.bytes_per_state()))
    copies = 1 if seeds is None else len(seeds)
    index = torch.arange(total, device=flat[0][next(iter(flat[0]))].device) % copies  # state -> its copy's x, t
    pre = pre if seeds is None and pre and any(z is not None for z in pre) else None
    parts = [batched(_take(flat, i, i + size), index[i:i + size], None if pre is None else
                     [None if z is None else z[i:i + size] for z in pre]) for i in range(0, total, size)]
    trace = _cat(parts)
    after, state = batched.updated(flat, trace, copies)
    unflat = lambda w: w.unflatten(0, (n, len(seeds))) if seeds is not None else w  # noqa: E731
    return _map(unflat, trace), _map(unflat, after), _map(unflat, state)


def _map(f, tree):
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: _map(f, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map(f, v) for v in tree]
    return f(tree)


def _take(tree, a, b):
    return _map(lambda w: w[a:b], tree)


def _cat(parts):
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [_cat([p[i] for p in parts]) for i in range(len(first))]
    return torch.cat(parts)


def free_blocks(setup, steps, chunk, numpy=None, tol=None):
    """Free running: each side trains its own copy, so neither needs the other until the
    comparison. Per chunk the manual side's steps come first (stepped here, or already
    by the forked child, which runs ahead: compare.trajectory), then the reference side
    runs the same steps alone, autograd per step: the same numbers as stepping them in
    turn (runner._steps), at the cost of the two sides alone, or of the slower one
    when forked (interleaving them step by step costs ~25% more on a CPU, each evicting
    the other's code and data from the caches). With ``tol`` (rtol, atol) and a manual
    trace that reports z, the reference aligns ReLU kinks step by step, as
    runner._steps does. No per-step comparison and no per-step host transfer."""
    from bpcheck.reference import Reference
    from bpcheck.reference.batched import Snapshots

    from bpcheck.compare.engines.faults import reference_step
    from bpcheck.compare.engines.faults import update as guarded_update

    man, ref, x, t = setup.manual, setup.reference, setup.x, setup.t
    numpy = numpy_ok(man, x, t) if numpy is None else numpy
    run = ManualRun(man, x, t, numpy, lean=True)
    snaps = Snapshots(ref) if type(ref) is Reference else None
    chunk = run.fit(chunk) if run.lean else chunk
    start, first = 0, run.params()
    # a quarter of the budget for the manual's chunk: the reference's steps, their stacked copy
    # and the probe's part take the rest (peak memory: the sides' own plus one budget)
    with closing(manual_chunks(run, steps, chunk, MEMORY_BUDGET // 4)) as chunks:  # closing: a forked child ends
        while start < steps:
            (mtrace, mafter, mstate), n, stop = next(chunks)  # n: fewer after an interrupt
            if mtrace is None:  # lean: the chunk's traces from its weights
                mtrace = run.trace_of(states_before(first, mafter))
            first = last_state(mafter)
            kinked = tol is not None and any(z is not None for z in mtrace.get("pre") or ())
            rtr, raf, rst = [], [], []
            with paused_gc():
                try:
                    for j in range(n):
                        if kinked:  # the manual's z of this step first (compare.kinks)
                            rt = reference_step(ref, x, t, step_view(mtrace, j), tol)
                        else:
                            try:
                                rt = ref.step(x, t)
                            except RuntimeError:  # NaN values if it refuses non-finite weights (compare.faults)
                                rt = reference_step(ref, x, t, step_view(mtrace, j))
                        guarded_update(ref, rt)
                        if snaps is not None:
                            after = snaps.take()
                        else:
                            with torch.no_grad():
                                after = [{k: w.clone() for k, w in p.items()} for p in ref.params]
                        # an empty torch.optim state (SGD without momentum) means Reference.state() is None
                        s = _state(ref) if snaps is None or ref.optimizer.state else None
                        s = None if s is None else [{k: w.clone() for k, w in d.items()} for d in s]
                        rtr.append(rt)  # a step counts once all its values are kept
                        raf.append(after)
                        rst.append(s)
                except KeyboardInterrupt as e:  # the steps both sides finished are handed over
                    if not rtr:
                        raise
                    stop = stop or e
            if len(rtr) < n:  # the reference was cut short: the steps both finished
                n = len(rtr)
                mtrace, mafter, mstate = _take([mtrace, mafter, mstate], 0, n)
            rafter = snaps.stacked(raf) if snaps is not None else stack_params(raf, stack)
            yield new_block(start, n, observed(mtrace, mafter, mstate),
                            observed(stack_traces(rtr, stack), rafter, stack_params(rst, stack)), stop)
            if stop is not None:
                return
            start += n
            mtrace = mafter = mstate = rtr = raf = rst = rafter = None  # not held while the next chunk runs
