"""The manual side stepping alone, for the fast engines (compare.replay): ``ManualRun``.

It steps a chunk of steps and records, per step, the trace, the parameters after the
update and the optimizer state; or, lean (the numpy twin, compare.replay's
"Lean trajectory"), only the parameters, the traces coming afterwards from
``trace_of`` on the stacked weights. The numpy twin (``numpy_ok``, ``numpy_twin``)
runs the built-in MLP's formulas on numpy views of its own tensors.
"""
import copy
import gc
from contextlib import contextmanager

import numpy as np
import torch

NUMPY_MAX_ELEMENTS = 1 << 15  # numpy twin only while every tensor is this small: dispatch-bound sizes
MEMORY_BUDGET = 1 << 27  # bytes per chunk of recorded steps, and per batched reference evaluation (128 MiB)


def numpy_ok(manual, x, t):
    """Whether the manual side may run as its numpy twin: the built-in MLP, its built-in
    activations, loss and SGD, unpatched, on CPU float64/float32 tensors that are all small."""
    from bpcheck.manual import ACTIVATIONS, LOSSES, MLP
    from bpcheck.manual.optim import SGD

    if type(manual) is not MLP or {"step", "update", "forward"} & set(vars(manual)):
        return False
    if not hasattr(np.ndarray, "mT"):  # numpy < 2
        return False
    builtin = set(ACTIVATIONS.values()) | set(LOSSES.values())
    if any(type(a) not in builtin for a in manual.acts) or type(manual.loss) not in builtin:
        return False
    if type(manual.optimizer) is not SGD:
        return False
    tensors = [x, t] + [w for p in manual.params for w in p.values()]
    return all(isinstance(w, torch.Tensor) and w.device.type == "cpu" and w.dtype in (torch.float64, torch.float32)
               and not w.requires_grad and w.numel() <= NUMPY_MAX_ELEMENTS for w in tensors)


@contextmanager
def numpy_twin(manual):
    """The manual side's parameters as numpy views of its tensors, for the duration."""
    tensors = manual.params
    manual.params = [{n: w.numpy() for n, w in p.items()} for p in tensors]
    try:
        with np.errstate(all="ignore"):  # overflow to inf, log(0): as torch, silently; the report flags them
            yield
    finally:
        manual.params = tensors


@contextmanager
def paused_gc():
    """Python's cycle collector paused while a chunk's traces pile up: they hold no
    cycles, and each full collection would walk all of them again (10-30% of the loop)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ManualRun:
    """Steps the manual side alone and records, per step, its trace, its parameters
    after the update and its optimizer state.

    The numpy twin records into buffers allocated once per chunk (``buf[i] = value``):
    the step's own arrays are then freed at once and numpy reuses their memory, where
    keeping thousands of them alive to stack later costs more than the copies. Torch
    tensors are kept and stacked (a copy into a tensor slice costs a dispatch).

    **Lean trajectory** (the numpy twin, both modes): the trace of a step is a function
    of the weights before it, so the loop only steps (``MLP.step(lean=True)``: no loss,
    output or layer 1's ``error_prev``) and records the weights; ``trace_of`` then
    computes the full trace of every recorded state at once, with the same formulas on
    the stacked weights. The loop is then the seed's own numpy calls plus a copy of the
    weights per step (and the MLP's generic structure), and the traces cost one stacked
    evaluation per chunk, in the parent while a forked child steps ahead
    (compare.trajectory)."""

    def __init__(self, manual, x, t, numpy=False, lean=False):
        self.manual, self.numpy, self.lean = manual, numpy, lean and numpy
        self.x, self.t = (x.numpy(), t.numpy()) if numpy else (x, t)

    @contextmanager
    def running(self):
        with paused_gc():
            if self.numpy:
                with numpy_twin(self.manual):
                    yield
            else:
                with torch.no_grad():
                    yield

    def params(self):
        """The current parameters, as tensors (copies)."""
        return [{n: w.clone() for n, w in p.items()} for p in self.manual.params]

    def steps(self, n, budget=None):
        """Run up to n steps -> ((trace, params after, state) stacked over the steps, the
        number of steps, the KeyboardInterrupt that cut them short or None). With
        ``budget`` (bytes), fewer steps when n steps' tensors would not fit in it. A lean
        run returns no trace (None): ``trace_of`` computes it, and its chunk is sized
        beforehand (``fit``)."""
        if self.lean:
            return self._lean_steps(n)
        man, rec, spec, stop = self.manual, None, None, None
        with self.running():
            try:
                while rec is None or rec.i < n:
                    tr = man.step(self.x, self.t)
                    man.update(tr)
                    values, spec = flatten(tr, man.params, _state(man), spec)
                    if rec is None:
                        if budget is not None:
                            n = max(1, min(n, budget // max(1, 3 * sum(getattr(v, "nbytes", 8) for v in values))))
                        fresh = 2 + sum(len(keys) for keys in spec[0])  # trace tensors: fresh each step (protocol)
                        rec = BufferRecorder(values, n) if self.numpy else ListRecorder(values, n, fresh)
                    rec.add(values)  # a step counts once all its values are recorded
            except KeyboardInterrupt as e:  # keep the finished steps: the caller hands them over, then stops
                if rec is None or rec.i == 0:
                    raise
                stop = e
        return unflatten(rec.stacked(), spec), rec.i, stop

    def chunks(self, steps, chunk, budget=None):
        """``steps`` steps in chunks of ``chunk``, each as ``steps`` returns it; ``budget``
        sizes the first chunk, and the rest take its size. Ends after a cut-short chunk."""
        start = 0
        while start < steps:
            out = self.steps(min(chunk, steps - start), budget if start == 0 else None)
            chunk = min(chunk, out[1]) if start == 0 else chunk  # the first chunk sets the size that fits
            yield out
            if out[2] is not None:
                return
            start += out[1]

    def _lean_steps(self, n):
        man, stop = self.manual, None
        names = [list(p) for p in man.params]
        with self.running():
            weights = [w for p in man.params for w in p.values()]  # updated in place, step after step
            rec = BufferRecorder(weights, n)
            try:
                while rec.i < n:
                    man.update(man.step(self.x, self.t, lean=True))
                    rec.add(weights)
            except KeyboardInterrupt as e:
                if rec.i == 0:
                    raise
                stop = e
        return (None, unflatten_params(rec.stacked(), names), None), rec.i, stop

    def peek(self):
        """The trace at the current weights, as tensors, without an update: the shapes of
        every step's trace (the built-in MLP's ``step`` changes nothing but its caches)."""
        with self.running():
            tr = self.manual.step(self.x, self.t)
        return {"loss": torch.as_tensor(tr["loss"]).clone(), "output": torch.as_tensor(tr["output"]).clone(),
                "layers": [{k: torch.as_tensor(v).clone() for k, v in q.items()} for q in tr["layers"]]}

    def fit(self, chunk, budget=None):
        """The steps per chunk (at most ``chunk``) whose values, traces included, fit three
        times over in ``budget`` bytes (MEMORY_BUDGET)."""
        values, _ = flatten(self.peek(), self.manual.params, _state(self.manual))
        size = sum(v.numel() * v.element_size() for v in values)
        return max(1, min(chunk, (budget or MEMORY_BUDGET) // max(1, 3 * size)))

    def trace_of(self, before):
        """The full trace at each of the stacked states ``before`` (per layer {name: (T, ...)}):
        the manual side's own ``step`` once, on a copy whose parameters are the stack
        (the formulas take a leading stack axis, manual/xp.py; its loss then gives one
        value per state)."""
        twin = copy.copy(self.manual)
        twin.loss = copy.copy(self.manual.loss)
        twin.loss.lead += 1
        twin.params = [{k: w.numpy() for k, w in p.items()} for p in before]
        with np.errstate(all="ignore"):
            tr = twin.step(self.x, self.t)
        return {"loss": torch.from_numpy(np.asarray(tr["loss"])), "output": torch.from_numpy(tr["output"]),
                "layers": [{k: torch.from_numpy(v) for k, v in q.items()} for q in tr["layers"]],
                "pre": [None if z is None else torch.from_numpy(z) for z in tr.get("pre", ())]}


class BufferRecorder:
    def __init__(self, values, n):
        self.bufs = [np.empty((n,) + np.shape(v), dtype=np.asarray(v).dtype) for v in values]
        self.i = 0

    def add(self, values):
        i = self.i
        for buf, v in zip(self.bufs, values):
            buf[i] = v
        self.i = i + 1

    def stacked(self):
        return [torch.from_numpy(b[:self.i]) for b in self.bufs]


def stack_steps(values):
    """torch.stack of per-step tensors, or a view for a single step (a wide network's chunk
    is often one step, and a stacked copy of it is a second copy of its values)."""
    return values[0][None] if len(values) == 1 else torch.stack(values)


class ListRecorder:
    def __init__(self, values, n, fresh):
        self.lists = [[] for _ in values]
        self.fresh, self.i = fresh, 0

    def add(self, values):
        for j, (out, v) in enumerate(zip(self.lists, values)):
            out.append(v if j < self.fresh else v.clone())  # parameters and state change in place
        self.i += 1

    def stacked(self):
        return [stack_steps(vals[:self.i]) for vals in self.lists]  # a step cut short is dropped


def flatten(trace, params, state, spec=None):
    """A step's trace, parameters and state -> (list of arrays, spec for ``unflatten``);
    every step of a run has the first step's spec."""
    if spec is None:
        spec = ([list(q) for q in trace["layers"]], [list(p) for p in params],
                None if state is None else [list(d) for d in state])
    layers, names, snames = spec
    values = [trace["loss"], trace["output"]]
    values += [q[k] for q, keys in zip(trace["layers"], layers) for k in keys]
    values += [p[k] for p, keys in zip(params, names) for k in keys]
    if state is not None:
        values += [d[k] for d, keys in zip(state, snames) for k in keys]
    return values, spec


def unflatten_params(values, names):
    it = iter(values)
    return [{k: next(it) for k in keys} for keys in names]


def unflatten(values, spec):
    layers, names, snames = spec
    it = iter(values)
    trace = {"loss": next(it), "output": next(it), "layers": [{k: next(it) for k in keys} for keys in layers]}
    params = [{k: next(it) for k in keys} for keys in names]
    state = None if snames is None else [{k: next(it) for k in keys} for keys in snames]
    return trace, params, state


def _state(side):
    return side.state() if hasattr(side, "state") else None
