"""The summary of a report: the worst difference per layer and quantity, its margin
(max |m - r| in units of the allowance: the row passes at <= 1), the rule that
decided, and where the tolerance was first exceeded.

Words, the same as ``bpcheck devices`` (compare.diagnosis.devices): in float32,
float16 and bfloat16 a quantity that passes the rule but not torch's table for the
dtype is ``rounding`` (what torch's table would have flagged is the dtype's own
rounding, by the measured yardstick); a failing one is ``formula`` or
``precision`` as the own-or-inherited rerun in float64 says (compare.diagnosis.origin);
in free mode, ``drift`` where the step's formulas agree in lockstep.

The head line's word is PASS, FAIL, or INTERRUPTED for a case whose run a signal
ended (``halted`` says "interrupted by ..."): what ran may all have passed, but the
run was not the one asked for, so it is never called PASS. The table names each layer
by its site (``fc2``, ``tap:h``) where a case names its sites (a user's case), by its
number where the sites are the seed cases' ``layer<N>``.
"""
import numpy as np
import pandas as pd
import torch

from bpcheck.compare.core.tolerances import TORCH

from bpcheck.compare.diagnosis.origin import describe_origin

KEYS = ["case", "layer", "time", "quantity"]


def worst(df):
    """One row per (case, layer, time, quantity): worst differences and failed-row count."""
    out = _worst(df)
    if "site" in df:
        sites = df.drop_duplicates(["case", "layer"]).set_index(["case", "layer"])["site"]
        out["site"] = [sites.get((c, l), "") for c, l in zip(out["case"], out["layer"])]
    return out


def named_sites(w):
    """True when some layer's site is a name of its own (not ``layer<N>``, not empty)."""
    if "site" not in w:
        return False
    own = [str(s) for s, l in zip(w["site"], w["layer"]) if isinstance(s, str) and s and s != f"layer{int(l)}"]
    return bool(own)


def _worst(df):
    g = df.groupby(KEYS, sort=False, dropna=False)
    if "_rows" in df:  # a summary report (compare.io.keep): its count columns are exact
        out = g.agg(max_abs_diff=("max_abs_diff", "max"), max_rel_diff=("max_rel_diff", "max"),
                    margin=("margin", "max"), failed=("_failed", "sum"), rows=("_rows", "sum"),
                    torch_flag=("torch_flag", "max"))
        return out.reset_index()
    out = g.agg(max_abs_diff=("max_abs_diff", "max"), max_rel_diff=("max_rel_diff", "max"),
                margin=("margin", "max"), failed=("passed", lambda p: int((~p.astype(bool)).sum())),
                rows=("passed", "size"), torch_flag=("torch_flag", "max"))
    return out.reset_index()


def torch_flags(df):
    """Rows that torch's table for their dtype would likely fail: some element is past
    both its atol and its rtol (necessary for failing it; the report keeps no element)."""
    tol = {str(d).replace("torch.", ""): v for d, v in TORCH.items()}
    rt = df["dtype"].map(lambda d: tol.get(str(d), (np.inf, np.inf))[0]).astype(float)
    at = df["dtype"].map(lambda d: tol.get(str(d), (np.inf, np.inf))[1]).astype(float)
    return (df["max_abs_diff"] > at) & (df["max_rel_diff"] > rt)


def first_failure(df):
    """The first failing row, in step order (then layer, then quantity as reported), or None."""
    bad = df[~df["passed"].astype(bool)]
    return None if bad.empty else bad.iloc[0]


def describe(row):
    t = "" if pd.isna(row["time"]) else f" time {int(row['time'])}"
    idx = f" index ({row['index']})" if row["index"] else ""
    note = f" [{row['note']}]" if row["note"] else ""
    site = row.get("site", "")
    site = f" (site {site})" if isinstance(site, str) and site and site != f"layer{int(row['layer'])}" else ""
    return (f"case {row['case']} step {int(row['step'])} layer {int(row['layer'])}{t} {row['quantity']}{site}{idx}: "
            f"|m - r| = {row['max_abs_diff']:.3g} > atol {row['atol']:.3g} + rtol {row['rtol']:.3g} * |r| "
            f"(margin {row['margin']:.3g}, rule {row['rule']}){note}")


def unaligned_kinks(modules):
    """The line a failing run gets when its ReLU kinks could not be aligned."""
    return (f"kinks not aligned: the manual side reports no pre-activations, so an element whose z rounding puts "
            f"on the other side of 0 than the reference's does fails, at {', '.join(modules[:3])}"
            f"{' ...' if len(modules) > 3 else ''}; return z as trace['pre'] (docs/check.md#relus-kink)")


def format_summary(df, stopped=None, origin=None, halted=None, origin_missing=None, kinks_unreported=None):
    """The per-case summary. ``stopped``, ``origin``, ``halted``, ``origin_missing`` and
    ``kinks_unreported`` are the report's attrs of those names (by case); ``origin`` adds
    the own-or-inherited lines, ``origin_missing`` says why a failing case has none, and
    ``kinks_unreported`` that a failing case's ReLU kinks were not aligned."""
    from bpcheck.compare.core import tolerances

    lines = []
    for case, part in df.groupby("case", sort=False):
        part = part.assign(torch_flag=torch_flags(part))
        w = worst(part)
        steps = int(part["step"].max())
        why = str((halted or {}).get(case) or "")
        status = "INTERRUPTED" if why.startswith("interrupted") else "PASS" if w["failed"].sum() == 0 else "FAIL"
        head = part.iloc[0]
        rule = str(head["rule"])
        tol = (f"rule {rule}" if rule == "yardstick" else f"rtol {head['rtol']:g}, atol {head['atol']:g}, rule {rule}")
        lines.append(f"{case}: {status}  ({steps} steps, {head['mode']}, {head['device']}, {head['dtype']}, {tol})")
        dt = getattr(torch, str(head["dtype"]), None)
        if isinstance(dt, torch.dtype) and dt in tolerances.TORCH:
            r = tolerances.rule(dt, None if rule in ("yardstick", "torch") else None,
                                None if rule != "user" else head["rtol"], None if rule != "user" else head["atol"])
            r = tolerances.rule(dt, "torch") if rule.startswith("torch") else r
            lines.append("  " + tolerances.describe(r) + (" (the reference could not be probed)" if "no probe" in rule else ""))
        st = (stopped or {}).get(case)
        if st and any(v is not None for v in st.values()):
            lines.append("  stopped: " + ", ".join(f"{k} at step {v}" if v else f"{k} did not stop" for k, v in st.items()))
        kinds = {(e["layer"], e["quantity"]): e.get("kind") for e in ((origin or {}).get(case) or [])}
        # the float64 rerun judges the whole failing step; a row it gave no word (the loss, when
        # only layer 0 failed) takes the step's word, or none: never "formula" without a rerun
        step_word = next((k for k in kinds.values() if k), "undiagnosed")
        low = dt in (torch.float32, torch.float16, torch.bfloat16)
        by_site = named_sites(w)
        width = max([4] + [len(str(s)) for s in w["site"]])
        # named sites (a module path may be a bare number: nn.Sequential's "0"): the layer number and the site
        where = lambda r: f"{int(r['layer']):>5} {(r['site'] if isinstance(r['site'], str) else ''):<{width}}" \
            if by_site else f"{int(r['layer']):>5}"  # noqa: E731
        lines.append(f"  {'layer':>5}{' ' + 'site'.ljust(width) if by_site else ''} {'time':>4}  {'quantity':<22} {'max_abs_diff':>12} "
                     f"{'max_rel_diff':>12} {'margin':>9}  failed" + ("  verdict" if low else ""))
        for _, r in w.iterrows():
            t = "" if pd.isna(r["time"]) else int(r["time"])
            word = ""
            if low:
                word = ("  " + (kinds.get((r["layer"], r["quantity"])) or step_word) if r["failed"]
                        else "  rounding" if r["torch_flag"] else "  ok")
            lines.append(f"  {where(r)} {t:>4}  {r['quantity']:<22} {r['max_abs_diff']:>12.3e} "
                         f"{r['max_rel_diff']:>12.3e} {r['margin']:>9.3g}  {r['failed']}/{r['rows']}{word}")
        if low and w["failed"].sum() == 0 and w["torch_flag"].any():
            lines.append("  rounding: torch's table for the dtype would flag these; the measured yardstick says the "
                         "dtype's own rounding")
        bad = first_failure(part)
        if bad is not None:
            lines.append("  first failure: " + describe(bad))
        kinks = part[part["note"].astype(str).str.contains("kink:", regex=False)]
        if not kinks.empty:
            lines.append(f"  kinks: {int(kinks['_kinks'].sum()) if '_kinks' in kinks else len(kinks)} delta row(s) had elements straddling ReLU's kink at 0 within "
                         f"tolerance (legitimately ambiguous, compared at the manual's side; note kink:N)")
        unaligned = (kinks_unreported or {}).get(case)
        if bad is not None and unaligned:
            lines.append("  " + unaligned_kinks(unaligned))
        entries = (origin or {}).get(case)
        if entries:
            lines.append(f"  own or inherited (step {entries[0]['step']}, rerun with the reference's upstream error):")
            lines += ["    " + describe_origin(e) for e in entries]
        elif bad is not None and (origin_missing or {}).get(case):
            lines.append(f"  own or inherited: not diagnosed: {origin_missing[case]}")
        kind = next((e.get("kind") for e in entries or [] if e.get("kind") in ("formula", "precision")), None)
        if low and bad is not None and kind:
            lines.append("  verdict: " + ("a formula error: the failing step, rerun in float64 from the same weights, "
                                          "fails too; not rounding" if kind == "formula" else
                                          "precision: rerun in float64 from the same weights the step passes, or "
                                          "misses by as many units of roundoff: right formulas that lose digits "
                                          "autograd keeps"))
        why = (halted or {}).get(case)
        if why:
            lines.append(f"  ended early: {why}; the report holds steps 1-{steps}")
    return "\n".join(lines)
