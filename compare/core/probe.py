"""The yardstick's probe: the reference side again, in another precision.

``Probe(setup, mode, rule)`` copies the reference side (``copy.deepcopy``, then its
module, x and a floating t cast to the rule's probe dtype) before the first step.
``probe.atol(block)`` gives, for every key both sides report, one atol per step of
the block (compare.core.tolerances: ``K * S + floor``, S = ``scale * max|probe - r|``):

- lockstep: the probe evaluates autograd at the weights the reference was loaded
  with, the manual side's weights before each step (the run's initial weights,
  then each step's recorded parameters), and applies its own optimizer's update;
  batched over the block's steps where reference.batched takes the reference,
  one step at a time otherwise;
- free: the probe trains its own copy step by step, so its distance is the drift
  rounding alone gives the trajectory.

The spread of a step is the largest of that step's and the WINDOW - 1 steps' before
it: a quantity of a few elements (a 2-unit layer's delta, one z far below its terms)
can, by chance, come out of one evaluation nearly exact in float32, while the manual
side's rounding there is as large as the terms allow; neighbouring steps have the
same conditioning and seldom the same luck.

It costs one more evaluation of the reference per step, in the probe's dtype
(benchmarks: docs/verdicts.md). What the probe cannot copy or run (a reference
without a ``module``, an error in its step) gives ``None``: the rows fall back to
the torch rule's atol and say so in the ``rule`` column ("torch (no probe)").
"""
import copy

import torch

from bpcheck.compare.core.errors import Unbatchable
from bpcheck.compare.engines.replay import _cat, _map, _take, observed

WINDOW = 8  # steps over which the measured spread of a quantity is taken (Probe._window)
GROUP = 8  # states per batched probe evaluation, always (Probe._values)


class Probe:
    def __init__(self, setup, mode, rule):
        self.rule, self.mode, self.dtype = rule, mode, rule.probe
        self.why, self.past = None, {}
        ref = _inner(setup.reference)
        if not isinstance(getattr(ref, "module", None), torch.nn.Module):
            self.ref, self.why = None, "the reference has no nn.Module to copy"
            return
        try:
            self.ref = copy.deepcopy(ref)
            for name in ("step", "update", "load", "state"):  # an instance's own override may close over the
                if callable(vars(self.ref).get(name)):  # original side (deepcopy keeps functions): the class's
                    delattr(self.ref, name)
            self.ref.module.to(self.dtype)
            for state in getattr(getattr(self.ref, "optimizer", None), "state", {}).values():  # none yet, as a rule
                for k, v in state.items():
                    if torch.is_tensor(v) and v.is_floating_point():
                        state[k] = v.to(self.dtype)
        except Exception as e:  # noqa: BLE001 (a reference that cannot be copied: the torch rule decides)
            self.ref, self.why = None, f"the reference cannot be copied ({type(e).__name__})"
            return
        self.x = setup.x.detach().to(self.dtype)
        self.t = setup.t.detach().to(self.dtype) if setup.t.is_floating_point() else setup.t
        self.before = [{n: v.detach().clone() for n, v in p.items()} for p in setup.manual.params]
        self.names = [list(p) for p in setup.manual.params]
        self.batched = None if mode != "lockstep" else self._batched()

    def _batched(self):
        from bpcheck.reference.batched import BatchedReference

        try:
            return BatchedReference(self.ref, self.x, self.t)
        except Unbatchable:
            return None

    def atol(self, block):
        """{key: (T,) atol tensor} for the block's keys, or None (no probe)."""
        if self.ref is None:
            return None
        n = len(block["step"])
        try:
            values = self._values(block, n)
        except Exception:  # noqa: BLE001 (a probe that cannot run this block: its rows take the fallback atol)
            values = {}
        out = {}
        for key, rvals in block["reference"].items():
            if key[2].startswith("_") or key not in block["manual"]:
                continue
            largest, spread = _spreads(rvals, values.get(key))
            out[key] = self.rule.atol_of(self._window(key, spread.nan_to_num(nan=float("inf"))), largest)
        return out

    def _window(self, key, spread):
        """The largest spread over this step and the WINDOW - 1 before it (across blocks):
        one evaluation's distance on a quantity of few elements can be small by chance."""
        past = self.past.get(key)
        full = spread if past is None else torch.cat([past.to(spread.device), spread])
        self.past[key] = full[-(WINDOW - 1):]
        if WINDOW == 1:
            return spread
        pad = torch.cat([full.new_zeros(WINDOW - 1 - (len(full) - len(spread))), full])
        return pad.unfold(0, WINDOW, 1).amax(1)

    def _values(self, block, n):
        from bpcheck.compare.core.runner import observe

        if self.mode == "free":
            obs = []
            for _ in range(n):
                tr = self.ref.step(self.x, self.t)
                self.ref.update(tr)
                obs.append(observe(tr, self.ref.params, _state(self.ref)))
            return _stack(obs)
        after = [{name: _stacked(block["manual"][(i, None, name)]) for name in names}
                 for i, names in enumerate(self.names, 1)]
        before = [{k: torch.cat([b[k][None].to(a[k].device, a[k].dtype), a[k][:-1]]).to(self.dtype)
                   for k in b} for b, a in zip(self.before, after)]
        self.before = [{k: a[k][-1].detach().clone() for k in a} for a in after]
        if self.batched is not None:
            try:  # autograd in groups of exactly GROUP states (the last padded with its final state),
                # so that no state's values depend on how many steps a block holds: the report is
                # bit-identical for any chunk (a batched kernel's rounding depends on the batch size).
                # The update then runs on the real states only (a stateful optimizer steps in turn).
                parts = []
                for i in range(0, n, GROUP):
                    k = min(GROUP, n - i)
                    pad = _map(lambda w: torch.cat([w[i:i + k], w[i + k - 1:i + k].expand(GROUP - k, *w.shape[1:])]),
                               before)
                    index = torch.zeros(GROUP, dtype=torch.long, device=pad[0][next(iter(pad[0]))].device)
                    parts.append(_take(self.batched(pad, index, None), 0, k))
                trace = _cat(parts)
                aft, state = self.batched.updated(before, trace, 1)
                return observed(trace, aft, state)
            except (RuntimeError, Unbatchable):
                self.batched = None
        obs = []
        for j in range(n):
            self.ref.load([{k: w[j] for k, w in p.items()} for p in before])
            tr = self.ref.step(self.x, self.t)
            self.ref.update(tr)
            obs.append(observe(tr, self.ref.params, _state(self.ref)))
        return _stack(obs)


def _spreads(rvals, p):
    """(max |r|, max |p - r|) per step, float64, NaN largest as inf; the spread NaN where
    the probe has no value of r's shape. ``rvals``: stacked (T, ...) or a list per step,
    read a pass of steps at a time (compare.core.diff.rows: no stacked copy of the block);
    p - r is taken in float64 by type promotion (exact, as converting both first)."""
    from bpcheck.compare.core.diff import ROW_BUDGET, rows

    T = len(rvals)
    if T == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    first = rvals[0]
    shape, size = (T,) + tuple(first.shape), first.numel()
    per = max(1, ROW_BUDGET // max(1, size))
    same = p is not None and tuple(p.shape) == shape
    largest, spread = [], []
    for s in range(0, T, per):
        part = rows(rvals, s, s + per, first.dtype)
        n = part.shape[0]
        if part.shape[1] == 0:
            largest.append(part.new_zeros(n, dtype=torch.float64))
            spread.append(part.new_zeros(n, dtype=torch.float64) if same else None)
            continue
        largest.append(part.abs().amax(1).double())
        if same:
            q = p[s:s + n].reshape(n, -1).to(part.device)
            d = torch.sub(q, part) if q.dtype == torch.float64 else torch.sub(q.double(), part)
            spread.append(d.abs_().amax(1))
    largest = torch.cat(largest).nan_to_num(nan=float("inf")) if largest else torch.zeros(0, dtype=torch.float64)
    if not same:
        return largest, torch.full((T,), float("nan"), dtype=torch.float64, device=largest.device)
    return largest, torch.cat(spread) if spread else torch.zeros(0, dtype=torch.float64)


def _inner(ref):
    """The side a wrapper forwards to (bpcheck.testing records a side through ``.side`` and
    ``__getattr__``; deep-copying such a wrapper recurses): the innermost ``side``."""
    seen = set()
    while id(ref) not in seen and "module" not in vars(ref) and vars(ref).get("side") is not None:
        seen.add(id(ref))
        ref = vars(ref)["side"]
    return ref


def _state(side):
    return side.state() if hasattr(side, "state") else None


def _stacked(v):
    return v if torch.is_tensor(v) else torch.stack(list(v))


def _stack(obs):
    return {k: torch.stack([o[k].detach() for o in obs]) for k in obs[0]} if obs else {}
