"""Own or inherited: is a failing layer's error its own, or passed down from above?

In a lockstep run, take the first step at which a row fails, and each layer with a
failing backward row at that step. Replay that step (rebuild the case, run the
manual side alone up to it, load its weights into the reference) and rerun the
manual layer's backward with the **reference's** upstream error fed in, through the
manual side's optional ``layer_backward(layer, error)`` (compare.protocol):

- upstream error of layer l = dL/d(output of layer l): the reference's
  ``error_prev`` of layer l+1, or, for the top layer, the reference's dL/dy
  (its trace's ``output_error``);
- the rerun's value of the layer's first failing quantity is compared with the
  reference's, under the same tolerance.

Verdicts:

- ``own``: still wrong with the right upstream error: the layer's formulas are wrong.
- ``inherited from layer l+1``: right with the right upstream error, and layer l+1
  fails too: the error came down from it.
- ``inherited from layer l+1 (within its tolerance there, amplified here)``: right
  with the right upstream error; layer l+1 passes, and its reported error_prev,
  fed in, gives exactly the value the run reported: a difference that was within
  tolerance above grew past it here (float32 cancellation, say).
- ``hand-off from layer l+1``: right with the right upstream error, layer l+1's
  rows all pass, but its reported error_prev, fed in, does not give the value the
  run reported: what was handed down is not layer l+1's error_prev (wiring).
- ``inherited from the loss``: the top layer is right given the reference's dL/dy:
  the loss's error formula is wrong.
- ``update``: the layer's backward rows pass; its first failing row is the update.

Each entry keeps both numbers: ``reported`` (max |m - r| as run) and ``own``
(max |m - r| with the reference's upstream error), so that a reader, or
bpcheck.testing, can quote them.
"""
import pandas as pd
import torch

from bpcheck.compare.core.diff import compare_stacked
from bpcheck.compare.engines.faults import reference_step

BACKWARD_Q = ("delta", "error_prev")


def _backward(q):
    return q in BACKWARD_Q or q.startswith("grad_")


def diagnose(case, build_kw, report, rtol, atol):
    """A list of dicts (case, step, layer, quantity, reported, own, verdict), one per
    failing layer at the first failing step, from the top down; [] when nothing fails;
    None when the manual side has no ``layer_backward``."""
    passed = report["passed"].to_numpy(dtype=bool)
    if passed.all():  # the common case, without a frame filter (a 1-step check costs a few ms)
        return []
    bad = report[~passed]
    bad = bad[(bad["layer"] > 0) & bad["time"].isna()]
    if bad.empty:
        return []
    step = int(bad["step"].iloc[0])
    at = report[(report["step"] == step) & (report["layer"] > 0)]
    failing = at[~at["passed"].astype(bool)]
    setup = case.build(**build_kw)
    man, ref = setup.manual, setup.reference
    if not hasattr(man, "layer_backward"):
        return None
    tol = (rtol, atol)
    data = getattr(setup, "batch", None) or (lambda s: (setup.x, setup.t))  # per-step data, or the one batch
    with torch.no_grad():
        for s in range(1, step):
            man.update(man.step(*data(s)))
    ref.load(man.params)
    x, t = data(step)
    mt = man.step(x, t)
    rt = reference_step(ref, x, t, mt, tol)
    L = len(man.params)
    failing_layers = set(failing["layer"])
    out = []
    for layer in sorted(failing_layers, reverse=True):
        row = failing[failing["layer"] == layer].iloc[0]
        q = row["quantity"]
        entry = {"case": case.name, "step": step, "layer": int(layer), "quantity": q,
                 "reported": float(row["max_abs_diff"]), "own": None, "verdict": "update"}
        if _backward(q):
            up = rt.get("output_error") if layer == L else rt["layers"][layer].get("error_prev")
            with torch.no_grad():
                mine = None if up is None else man.layer_backward(int(layer), up.detach()).get(q)
            theirs = rt["layers"][layer - 1].get(q)
            if mine is None or theirs is None or tuple(mine.shape) != tuple(theirs.shape):
                entry["verdict"] = "own"
                entry["own"] = float("inf")
            else:
                cols = compare_stacked(mine[None], theirs[None].to(mine.dtype), rtol, atol)
                entry["own"] = float(cols["max_abs_diff"][0])
                if not cols["passed"][0]:
                    entry["verdict"] = "own"
                elif layer == L:
                    entry["verdict"] = "inherited from the loss"
                elif layer + 1 in failing_layers:
                    entry["verdict"] = f"inherited from layer {layer + 1}"
                elif _explained(man, mt, layer, q, rtol, atol):
                    entry["verdict"] = f"inherited from layer {layer + 1} (within its tolerance there, amplified here)"
                else:
                    entry["verdict"] = f"hand-off from layer {layer + 1}"
        out.append(entry)
    return out


def _explained(man, mt, layer, q, rtol, atol):
    """Does the manual's own reported error_prev of the layer above, fed in, give the
    value the run reported? Then what came down is what was reported (a difference
    within tolerance, amplified); otherwise something else was handed down."""
    up = mt["layers"][layer].get("error_prev")
    ran = mt["layers"][layer - 1].get(q)
    if up is None or ran is None:
        return False
    again = man.layer_backward(int(layer), up).get(q)
    if again is None or again.shape != ran.shape:
        return False
    return bool(compare_stacked(again[None], ran[None], 0.0, 0.0)["passed"][0])


def origin_frame(report):
    """The report's own/inherited entries (``report.attrs["origin"]``) as a DataFrame."""
    rows = [e for entries in report.attrs.get("origin", {}).values() for e in (entries or [])]
    return pd.DataFrame(rows, columns=["case", "step", "layer", "quantity", "reported", "own", "verdict"])


def describe_origin(e):
    own = "n/a" if e["own"] is None else f"{e['own']:.3g}"
    if e["verdict"] == "update":
        return (f"layer {e['layer']} {e['quantity']}: |m - r| = {e['reported']:.3g}; its backward rows pass, "
                f"so the error is in the update: own")
    return (f"layer {e['layer']} {e['quantity']}: |m - r| = {e['reported']:.3g} as run, {own} with the "
            f"reference's upstream error fed in: {e['verdict']}")
