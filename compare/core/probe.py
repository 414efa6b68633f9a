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

Each step is evaluated on the batch it ran on (per-step data: ``block["data"]``), with
its ReLU kinks aligned to the manual's pre-activations (``block["manual"]`` key
``_pre``) as the run's reference aligns them; and the loss's atol carries the output's
(``_carry_to_loss``).

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
from bpcheck.compare.core.tolerances import kink_tolerance
from bpcheck.compare.engines.manualrun import MEMORY_BUDGET, stack_steps
from bpcheck.compare.engines.replay import _cat, _map, _take, observed

WINDOW = 8  # steps over which the measured spread of a quantity is taken (Probe._window)
GROUP = 8  # states per batched probe evaluation, always (Probe._batched_part)
PART = MEMORY_BUDGET // 8  # bytes of probe values held at once (Probe._parts)


class Probe:
    def __init__(self, setup, mode, rule):
        self.rule, self.mode, self.dtype, self.tol = rule, mode, rule.probe, kink_tolerance(rule)
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
        self.x, self.t = _cast(setup.x, self.dtype), _cast(setup.t, self.dtype)
        self.per_step = getattr(setup, "batch", None) is not None  # each step's (x, t) is in block["data"]
        self.before = [{n: v.detach().clone() for n, v in p.items()} for p in setup.manual.params]
        self.names = [list(p) for p in setup.manual.params]
        self.batched = None if mode != "lockstep" or self.per_step else self._batched()

    def _batched(self):
        from bpcheck.reference.batched import BatchedReference

        try:
            batched = BatchedReference(self.ref, self.x, self.t, tol=self.tol)
        except Unbatchable:
            return None
        # a group of wide states would hold GROUP evaluations at once: those step in turn
        return batched if GROUP * batched.bytes_per_state() <= MEMORY_BUDGET else None

    def atol(self, block):
        """{key: (T,) atol tensor} for the block's keys, or None (no probe)."""
        if self.ref is None:
            return None
        keys = [k for k in block["reference"] if not k[2].startswith("_") and k in block["manual"]]
        got = {k: [] for k in keys}
        try:
            for s, values in self._parts(block, len(block["step"])):
                e = s + _steps_in(values)
                for k in keys:
                    got[k].append(_spreads(block["reference"][k][s:e], values.get(k)))
        except Exception:  # noqa: BLE001 (a probe that cannot run this block: its rows take the fallback atol)
            got = {k: [_spreads(block["reference"][k], None)] for k in keys}
        out = {}
        for key, parts in got.items():
            largest, spread = (torch.cat(c) for c in zip(*parts))
            out[key] = self.rule.atol_of(self._window(key, spread.nan_to_num(nan=float("inf"))), largest)
        self._carry_to_loss(block, out)
        return out

    def _carry_to_loss(self, block, out):
        """Add to the loss's allowance what the output's allowance allows it, to first order:
        ``sum_i |dL/dy_i| * (atol_y + rtol |y_i|)``, dL/dy by autograd at the reference's y.

        The loss is one number summed from the output. Late in a run y - t cancels, and the
        reference's float32 sum can land nearer the truth than its terms would let one
        expect, step after step (a million float32 trask steps: the loss failed with margin
        11.7 while every output passed, docs/verdicts.md "Long runs"). A manual side whose
        output is within its allowance is then within this one on the loss. Where dL/dy
        cannot be taken, the loss keeps its own allowance (the stricter)."""
        lk, yk = (0, None, "loss"), (0, None, "output")
        if lk not in out or yk not in out:
            return
        try:
            y = _stacked(block["reference"][yk]).detach()
            slopes = self._slopes(block, y)
            if slopes is None:
                return
            n = len(y)
            allowed = out[yk].to(y.device)[:, None] + self.rule.rtol * y.reshape(n, -1).abs().double()
            extra = (slopes.reshape(n, -1).double() * allowed).sum(1).nan_to_num(nan=0.0, posinf=float("inf"))
        except Exception:  # noqa: BLE001 (an output that is not one tensor: the loss keeps its own allowance)
            return
        out[lk] = out[lk] + extra.to(out[lk].device)

    def _slopes(self, block, y):
        """|dL/dy| per step, (T, *y.shape[1:]), by autograd on the probe's copy of the loss at
        the reference's outputs ``y``; None where the loss cannot be differentiated so."""
        loss_fn = getattr(self.ref, "loss_fn", None)
        if loss_fn is None or not y.is_floating_point():
            return None
        y = y.to(self.dtype)
        if not self.per_step:
            try:
                t = self.t
                return torch.func.vmap(torch.func.grad(lambda v: loss_fn(v, t)))(y).abs()
            except Exception:  # noqa: BLE001 (a loss vmap cannot take: one step at a time below)
                pass
        try:
            got = []
            with torch.enable_grad():
                for j in range(len(y)):
                    v = y[j].clone().requires_grad_(True)
                    got.append(torch.autograd.grad(loss_fn(v, self._data(block, j)[1]), v)[0].abs())
            return torch.stack(got)
        except Exception:  # noqa: BLE001 (no dL/dy: the loss keeps its own allowance)
            return None

    def _pre(self, block):
        """The manual's pre-activations per layer, each (T, ...) or None (None: no kinks).
        The probe puts its z on the manual's side of ReLU's kink where the two straddle
        it, within the kink tolerance, as the run's reference does (compare.engines.kinks):
        its spread is then rounding, not a kink's jump, which would excuse that step's
        quantity, a wrong derivative at the kink included."""
        pre = [block["manual"].get((i, None, "_pre")) for i in range(1, len(self.names) + 1)]
        return None if all(z is None for z in pre) else [None if z is None else _stacked(z) for z in pre]

    def _align(self, pre, j):
        if pre is not None and hasattr(self.ref, "align_kinks"):
            self.ref.align_kinks([None if z is None else z[j] for z in pre], *self.tol)

    def _data(self, block, j):
        """Step j's (x, t) of the block, in the probe's dtype: where the data changes by step,
        the batch that step ran on (compare.core.runner records it), else the one batch."""
        if not self.per_step:
            return self.x, self.t
        x, t = block["data"][j]
        return _cast(x, self.dtype), _cast(t, self.dtype)

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

    def _parts(self, block, n):
        """(index of its first step in the block, {key: (m, ...) probe values}) for consecutive
        parts of the block, each about PART bytes of probe values (at least one step; whole
        groups of GROUP states where batched): the probe holds one part at a time."""
        from bpcheck.compare.core.runner import observe

        pre = self._pre(block)
        size = max(1, sum(v[0].numel() for v in block["reference"].values()) * _itemsize(self.dtype))
        per = max(1, PART // size)
        if self.mode == "free":  # the probe's own trajectory, a step at a time
            for s in range(0, n, per):
                obs = []
                for j in range(s, min(n, s + per)):
                    self._align(pre, j)
                    tr = self.ref.step(*self._data(block, j))
                    self.ref.update(tr)
                    obs.append(observe(tr, self.ref.params, _state(self.ref), clone=per > 1))
                yield s, _stack(obs)
            return
        first = self.before  # the manual's parameters before the block's first step
        after = [{k: block["manual"][(i, None, k)] for k in names} for i, names in enumerate(self.names, 1)]
        self.before = [{k: v[n - 1].detach().clone() for k, v in a.items()} for a in after]

        def before(j, cast=True):  # the manual's parameters before the block's step j (cast: in the probe's dtype)
            return [{k: (b[k] if j == 0 else a[k][j - 1]).to(self.dtype if cast else b[k].dtype) for k in b}
                    for b, a in zip(first, after)]

        start = 0
        if self.batched is not None:
            per = -(-per // GROUP) * GROUP
            for start in range(0, n, per):
                try:
                    part = self._batched_part(before, pre, start, min(n, start + per))
                except (RuntimeError, Unbatchable):
                    self.batched = None  # this part and the rest step in turn
                    break
                yield start, part
            else:
                return
        for s in range(start, n, per):
            obs = []
            for j in range(s, min(n, s + per)):
                self.ref.load(before(j, cast=False))  # load converts as it copies in
                self._align(pre, j)
                tr = self.ref.step(*self._data(block, j))
                self.ref.update(tr)
                obs.append(observe(tr, self.ref.params, _state(self.ref), clone=per > 1))
            yield s, _stack(obs)

    def _batched_part(self, before, pre, s, e):
        """Steps s..e-1 evaluated by autograd in groups of exactly GROUP states (the last padded
        with its final state), so that no state's values depend on how many steps a block
        holds: the report is bit-identical for any chunk (a batched kernel's rounding depends
        on the batch size). The update then runs on the real states only (a stateful
        optimizer steps in turn)."""
        states = [before(j) for j in range(s, e)]
        stacked = [{k: torch.stack([st[i][k] for st in states]) for k in states[0][i]} for i in range(len(states[0]))]
        zs = None if pre is None else [None if z is None else z[s:e] for z in pre]
        parts = []
        for i in range(0, e - s, GROUP):
            k = min(GROUP, e - s - i)

            def grouped(w, i=i, k=k):
                return torch.cat([w[i:i + k], w[i + k - 1:i + k].expand(GROUP - k, *w.shape[1:])])
            pad = _map(grouped, stacked)
            index = torch.zeros(GROUP, dtype=torch.long, device=pad[0][next(iter(pad[0]))].device)
            parts.append(_take(self.batched(pad, index, _map(grouped, zs)), 0, k))
        trace = _cat(parts)
        aft, state = self.batched.updated(stacked, trace, 1)
        return observed(trace, aft, state)


def _steps_in(values):
    return len(next(iter(values.values()))) if values else 0


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


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


def _cast(v, dtype):
    """Floating data in the probe's dtype; integer data (labels, token ids) as it is."""
    return v.detach().to(dtype) if v.is_floating_point() else v


def _stacked(v):
    return v if torch.is_tensor(v) else torch.stack(list(v))


def _stack(obs):
    return {k: stack_steps([o[k].detach() for o in obs]) for k in obs[0]} if obs else {}
