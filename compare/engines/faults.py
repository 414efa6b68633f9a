"""Faults during a run: non-finite values, and a reference that refuses them.

- NaN or Inf in either side's values is a failed row whose ``note`` names the side
  (``nonfinite:manual``, ``nonfinite:reference``, ``nonfinite:both``; compare.diff),
  never a crash. Some torch ops refuse non-finite input (binary_cross_entropy raises
  on NaN); when the reference raises while its weights or inputs hold NaN or Inf,
  ``reference_step`` records that step's reference values as NaN instead.
- ``stop_on_nonfinite`` ends the run at the first step with a non-finite row
  (``cut_at_nonfinite``); otherwise the run goes on.
"""
import torch

from bpcheck.compare.engines.kinks import KINKS


def _finite(tensors):
    return all(bool(torch.isfinite(v).all()) for v in tensors)


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
    except RuntimeError:
        values = [x] + [v for p in ref.params for v in p.values()]
        if _finite(values):
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


def cut_at_nonfinite(df):
    """(rows up to the first step holding a non-finite value, that step or None)."""
    bad = df["note"].astype(str).str.startswith("nonfinite")
    if not bad.any():
        return df, None
    step = int(df.loc[bad, "step"].min())
    return df[df["step"] <= step].reset_index(drop=True), step

