"""Faults during a run: non-finite values, and a reference that refuses them.

- NaN or Inf in either side's values is a failed row whose ``note`` names the side
  (``nonfinite:manual``, ``nonfinite:reference``, ``nonfinite:both``; compare.diff),
  never a crash. Some torch ops refuse non-finite input (binary_cross_entropy raises
  on NaN); when the reference raises while its weights or inputs hold NaN or Inf,
  ``reference_step`` records that step's reference values as NaN instead.
  The same when the weights are finite but a value overflowed on the way: the
  reference raises while the manual side's trace of that step holds NaN or Inf, or
  with one of torch's overflow messages (``OVERFLOW``: binary_cross_entropy's
  "between 0 and 1" on a NaN input, "cannot be converted ... without overflow").
- An update that overflows (``lr=1e300`` in float32: torch.optim's ``add_(g, alpha=-lr)``
  refuses an ``alpha`` the dtype cannot hold) sets the reference's parameters to
  NaN instead of raising (``guard_update``), in any dtype: the next rows fail
  with their ``nonfinite`` note, as the overflowed values would.
- ``stop_on_nonfinite`` ends the run at the first step with a non-finite row
  (``cut_at_nonfinite``); otherwise the run goes on.
"""
import torch

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.engines.kinks import KINKS


OVERFLOW = ("without overflow", "should be between 0 and 1", "overflow")


def _finite(tensors):
    return all(bool(torch.isfinite(v).all()) for v in tensors if torch.is_tensor(v) and v.is_floating_point())


def overflowed(error, *traces):
    """Whether a RuntimeError is the fault of a non-finite value: torch's overflow
    messages, or a trace of the same step (the manual side's) holding NaN or Inf."""
    if any(m in str(error) for m in OVERFLOW):
        return True
    for tr in traces:
        if isinstance(tr, dict):
            values = [tr.get("loss"), tr.get("output")] + [v for q in tr.get("layers") or () if isinstance(q, dict)
                                                           for v in q.values()]
            if not _finite(values):
                return True
    return False


def overflowing_settings(ref):
    """Whether a torch.optim setting of ``ref`` (lr=1e300) exceeds its parameters' dtype:
    torch then refuses to convert it ("cannot be converted ... without overflow")."""
    opt = getattr(ref, "optimizer", None)
    if not isinstance(opt, torch.optim.Optimizer):
        return True  # not a torch.optim reference: guard it anyway (it takes the stepping engine)
    for group in opt.param_groups:
        for p in group["params"]:
            if not p.is_floating_point():
                continue
            big = torch.finfo(p.dtype).max
            for v in group.values():
                values = v if isinstance(v, tuple) else (v,)
                if any(isinstance(x, float) and x == x and abs(x) > big for x in values):
                    return True
    return False


def guard_update(ref):
    """Make ``ref.update`` turn an overflow into NaN parameters (see the module docstring).
    Installed only where an optimizer setting overflows the dtype (or the reference is no
    torch.optim one): the instance's own ``update`` makes a Reference unbatchable
    (reference.batched), so the fast engines stay where the update cannot overflow.
    Idempotent; the instance's own attribute, so the class stays as it is."""
    update = getattr(ref, "update", None)
    if update is None or getattr(update, "_guarded", False) or not overflowing_settings(ref):
        return ref

    def guarded(trace):
        try:
            return update(trace)
        except RuntimeError as e:
            if not overflowed(e, trace):
                raise
            with torch.no_grad():
                for ps in getattr(ref, "_params", None) or ref.params:
                    for p in ps.values():
                        p.fill_(float("nan"))

    guarded._guarded = True
    try:
        ref.update = guarded
    except AttributeError:  # a class with __slots__: leave it
        pass
    return ref


def reference_step(ref, x, t, mt, tol=None):
    """The reference's step for the manual trace ``mt`` of the same step: told the
    manual's pre-activations at kinks (compare.kinks) when both sides support it, and
    NaN-filled when it raises on non-finite weights or inputs."""
    pre = mt.get("pre") if isinstance(mt, dict) else None
    aligned = pre is not None and tol is not None and hasattr(ref, "align_kinks")
    if aligned:
        ref.align_kinks(pre, *tol)
    try:
        return ref.step(x, t)
    except RuntimeError as e:
        values = [x] + [v for p in ref.params for v in p.values()]
        if _finite(values) and not overflowed(e, mt):
            raise
        trace = nan_trace(ref, mt)
        if aligned:  # shaped like an aligned step: no kink counted in the layers that count them
            for q, z in zip(trace["layers"], pre):
                if z is not None:
                    q[KINKS] = torch.zeros((), dtype=torch.long)
        return trace


def nan_trace(ref, mt):
    """A reference trace of NaN, shaped like the manual's; its gradients become NaN too,
    so that a free-running reference's next update carries the NaN on."""
    nan = float("nan")
    layers = [{k: torch.full_like(v, nan) for k, v in q.items()} for q in mt["layers"]]
    for ps in getattr(ref, "_params", []):
        for p in ps.values():
            p.grad = torch.full_like(p, nan)
    return {"loss": torch.full_like(mt["loss"], nan), "output": torch.full_like(mt["output"], nan), "layers": layers}


INPUT_ERRORS = {  # torch's message -> what it means about the case
    "grad can be implicitly created only for scalar outputs":
        "the loss must return a scalar (one number per step), it returned a tensor with more elements",
}


def input_error(e):
    """A UsageError for an exception raised during a run that is the input's fault, else None."""
    if isinstance(e, RuntimeError):
        for needle, meaning in INPUT_ERRORS.items():
            if needle in str(e):
                return UsageError(f"{meaning} ({needle})")
    return None


def cut_at_nonfinite(df):
    """(rows up to the first step holding a non-finite value, that step or None)."""
    bad = df["note"].astype(str).str.startswith("nonfinite")
    if not bad.any():
        return df, None
    step = int(df.loc[bad, "step"].min())
    return df[df["step"] <= step].reset_index(drop=True), step

