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

The entry's verdict is that of the layer's first failing quantity; ``others`` gives
each other failing backward quantity of the layer its own: the same inheritance when
the rerun makes it right (a layer fed a wrong upstream error is never ``own``: the
1/batch slip in a softmax delta leaves the top layer's grad_weight and error_prev
"inherited from the loss"), ``own`` when the rerun leaves it wrong.

In free mode the trajectories have their own weights, so a failing row may only say
that they drifted apart. ``diagnose`` then reruns the first failing step in lockstep
from the manual side's weights at that step (``rerun``: the one runner, one step):

- ``drift since step p, growing g x a step``: the step's own formulas agree; the
  parameter rows of the report first parted at step p, by more than PARTED units of
  roundoff (u times the larger norm, even below the tolerance), and their difference
  grew by g a step on average since: about 1 is linear drift, above 1 divergence;
- otherwise the lockstep verdicts below, from the rerun.

In float32, float16 and bfloat16 every entry also says whether its failing step,
rerun in float64 from the same weights, passes (``precision``: right formulas that
lose more than the dtype's rounding) or fails (``formula``: wrong in any dtype),
the words of ``bpcheck devices``; in float64 the word is ``formula``.

Each entry keeps both numbers: ``reported`` (max |m - r| as run) and ``own``
(max |m - r| with the reference's upstream error), so that a reader, or
bpcheck.testing, can quote them.
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from bpcheck.compare.core.diff import compare_stacked
from bpcheck.compare.core.tolerances import kink_tolerance
from bpcheck.compare.engines.faults import reference_step

BACKWARD_Q = ("delta", "error_prev")


def _backward(q):
    return q in BACKWARD_Q or q.startswith("grad_")


NO_LAYER_BACKWARD = ("the manual side has no layer_backward(layer, error), so no layer can be rerun with the "
                     "reference's upstream error (docs/cases.md)")


def diagnose(case, build_kw, report, rule):
    """A list of dicts (case, step, layer, quantity, reported, own, verdict), one per
    failing layer at the first failing step, from the top down; [] when nothing fails;
    None when the manual side has no ``layer_backward``. ``rule``: the run's
    compare.core.tolerances.Rule; each rerun is judged with its row's atol and rtol."""
    passed = report["passed"].to_numpy(dtype=bool)
    if passed.all():  # the common case, without a frame filter (a 1-step check costs a few ms)
        return []
    if report["mode"].iloc[0] == "free":
        return _free(case, build_kw, report, rule)
    out = _lockstep(case, build_kw, report, rule)
    if out and build_kw.get("dtype") not in (None, torch.float64):
        word = _word(case, build_kw, int(out[0]["step"]), report)
        for e in out:
            e["kind"] = word
    elif out:
        for e in out:
            e["kind"] = "formula"
    return out


def _lockstep(case, build_kw, report, rule):
    passed = report["passed"].to_numpy(dtype=bool)
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
    rtol = rule.rtol
    tol = kink_tolerance(rule)
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
                again = {} if up is None else man.layer_backward(int(layer), up.detach())
            own = {}  # failing quantity -> |m - r| with the reference's upstream error (inf: none or misshapen)
            for _, r in failing[(failing["layer"] == layer) & failing["quantity"].map(_backward)].iterrows():
                mine, theirs = again.get(r["quantity"]), rt["layers"][layer - 1].get(r["quantity"])
                if mine is None or theirs is None or tuple(mine.shape) != tuple(theirs.shape):
                    own[r["quantity"]] = (float("inf"), False)
                else:
                    cols = compare_stacked(mine[None], theirs[None].to(mine.dtype), rtol, float(r["atol"]))
                    own[r["quantity"]] = (float(cols["max_abs_diff"][0]), bool(cols["passed"][0]))
            entry["own"], right = own[q]
            if not right:
                entry["verdict"] = "own"
            elif layer == L:
                entry["verdict"] = "inherited from the loss"
            elif layer + 1 in failing_layers:
                entry["verdict"] = f"inherited from layer {layer + 1}"
            elif _explained(man, mt, layer, q):
                entry["verdict"] = f"inherited from layer {layer + 1} (within its tolerance there, amplified here)"
            else:
                entry["verdict"] = f"hand-off from layer {layer + 1}"
            # the layer's other failing quantities: right given the right upstream error -> the same inheritance
            entry["others"] = {k: ("own" if not ok else entry["verdict"] if right else "own (from its " + q + ")")
                               for k, (_, ok) in own.items() if k != q}
        out.append(entry)
    return out


PARTED = 64.0  # units of roundoff (u x the larger norm) from which two trajectories have parted


def manual_weights(case, build_kw, step):
    """The manual side's parameters before ``step``: its trajectory alone (in both modes
    it never reads the reference's), as CPU copies."""
    setup = case.build(**build_kw)
    man = setup.manual
    data = getattr(setup, "batch", None) or (lambda s: (setup.x, setup.t))  # per-step data, or the one batch
    with torch.no_grad():
        for s in range(1, step):
            man.update(man.step(*data(s)))
    return [{n: v.detach().clone() for n, v in p.items()} for p in man.params]


def rerun(case, build_kw, weights, rule=None, dtype=None):
    """One lockstep step of ``case`` from ``weights`` with the one runner, under the run's
    ``rule`` (None: the default) and in ``dtype`` (None: the run's): its report."""
    from bpcheck.compare.core.runner import run

    def build(**kw):
        setup = case.build(**kw)
        with torch.no_grad():
            for p, w in zip(setup.manual.params, weights):
                for n, v in p.items():
                    v.copy_(w[n].to(v.dtype))
        return setup

    kw = dict(build_kw)
    dt = dtype or kw.pop("dtype")
    kw.pop("dtype", None)
    tol = {}
    if rule is not None and rule.name == "user":
        tol = dict(rtol=rule.rtol, atol=rule.atol)
    elif rule is not None and rule.name == "torch":
        tol = dict(tolerance="torch")
    return run(replace(case, build=build), steps=1, mode="lockstep", dtype=dt, device=kw.pop("device", "cpu"),
               seed=kw.pop("seed", None), **tol, **kw)


SCALES_WITH_U = 100.0  # as compare.diagnosis.devices: an error that scales with u is precision


def _word(case, build_kw, step, report):
    """formula or precision: the failing step rerun in float64 from the run's weights.
    Precision when it passes there, or when its float64 error in units of float64's u
    is within SCALES_WITH_U of the run's in units of the run's u (lost digits scale
    with u; a wrong formula is the same absolute error in every dtype)."""
    try:
        again = rerun(case, build_kw, manual_weights(case, build_kw, step), None, torch.float64)
    except Exception:  # noqa: BLE001 (no word rather than no diagnosis)
        return "formula"
    if again["passed"].all():
        return "precision"
    low = report[report["step"] == step]
    units = lambda df, dt: (df["max_abs_diff"] / (torch.finfo(dt).eps / 2 *  # noqa: E731
                                                  np.maximum(df["manual_norm"], df["reference_norm"]).clip(1e-300))).max()
    return "precision" if units(again, torch.float64) <= SCALES_WITH_U * max(units(low, build_kw["dtype"]), 1.0) \
        else "formula"


def _free(case, build_kw, report, rule):
    """Free mode: drift, or the lockstep verdicts of the first failing step's rerun."""
    bad = report[~report["passed"].astype(bool)]
    step = int(bad["step"].iloc[0])
    again = rerun(case, build_kw, manual_weights(case, build_kw, step), rule)
    failing = bad[bad["step"] == step]
    still = again[~again["passed"].astype(bool)]
    still_keys = set(zip(still["layer"], still["time"].fillna(-1), still["quantity"]))
    since, growth = parted(report, step)
    out = []
    for _, row in failing.drop_duplicates(["layer", "quantity"]).iterrows():
        key = (row["layer"], -1 if pd.isna(row["time"]) else row["time"], row["quantity"])
        entry = {"case": case.name, "step": step, "layer": int(row["layer"]), "quantity": row["quantity"],
                 "reported": float(row["max_abs_diff"]), "own": None, "kind": "formula"}
        if key in still_keys:
            r = still[(still["layer"] == row["layer"]) & (still["quantity"] == row["quantity"])].iloc[0]
            entry["own"] = float(r["max_abs_diff"])
            entry["verdict"] = "update" if not _backward(row["quantity"]) and row["layer"] > 0 else "own"
        else:
            entry["own"] = float(again[(again["layer"] == row["layer"]) & (again["quantity"] == row["quantity"])]
                                 ["max_abs_diff"].max())
            entry["verdict"] = f"drift since step {since}, growing {growth:.3g}x a step" if since else "drift"
            entry["since"], entry["growth"] = since, growth
            entry["kind"] = "drift"
        out.append(entry)
    return out


def parted(report, upto):
    """(first step, growth a step): where the parameter rows first differ by more than
    PARTED units of roundoff, and the geometric mean growth of their largest
    difference from there to step ``upto``; (None, nan) if they never did."""
    params = report[(report["layer"] > 0) & ~report["quantity"].map(_backward)
                    & ~report["quantity"].str.startswith("optimizer_state") & (report["step"] <= upto)]
    if params.empty:
        return None, float("nan")
    u = torch.finfo(getattr(torch, str(report["dtype"].iloc[0]))).eps / 2
    scale = np.maximum(params["manual_norm"], params["reference_norm"]).to_numpy() * u
    units = pd.Series(np.where(params["max_abs_diff"] > 0, params["max_abs_diff"] / np.maximum(scale, 1e-300), 0.0),
                      index=params.index).groupby(params["step"]).max()
    over = units[units > PARTED]
    if over.empty:
        return None, float("nan")
    first = int(over.index[0])
    last = int(units.index[-1])
    growth = (units.iloc[-1] / units.loc[first]) ** (1.0 / (last - first)) if last > first else 1.0
    return first, float(growth)


def _explained(man, mt, layer, q):
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
    return pd.DataFrame(rows, columns=["case", "step", "layer", "quantity", "reported", "own", "verdict", "kind"])


def describe_origin(e):
    own = "n/a" if e["own"] is None else f"{e['own']:.3g}"
    if e.get("kind") == "drift":
        return (f"layer {e['layer']} {e['quantity']}: |m - r| = {e['reported']:.3g} as run, {own} rerun in lockstep "
                f"from the manual's weights at step {e['step']}: {e['verdict']}")
    if e["verdict"] == "update":
        return (f"layer {e['layer']} {e['quantity']}: |m - r| = {e['reported']:.3g}; its backward rows pass, "
                f"so the error is in the update: own")
    others = "".join(f"; {k}: {v}" for k, v in (e.get("others") or {}).items())
    kind = f" [{e['kind']}]" if e.get("kind") in ("precision",) else ""
    return (f"layer {e['layer']} {e['quantity']}: |m - r| = {e['reported']:.3g} as run, {own} with the "
            f"reference's upstream error fed in: {e['verdict']}{others}{kind}")
