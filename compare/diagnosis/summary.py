"""The summary of a report: the worst difference per layer and quantity, and where
the tolerance was first exceeded."""
import pandas as pd

from bpcheck.compare.diagnosis.origin import describe_origin

KEYS = ["case", "layer", "time", "quantity"]


def worst(df):
    """One row per (case, layer, time, quantity): worst differences and failed-row count."""
    g = df.groupby(KEYS, sort=False, dropna=False)
    if "_rows" in df:  # a summary report (compare.io.keep): its count columns are exact
        out = g.agg(max_abs_diff=("max_abs_diff", "max"), max_rel_diff=("max_rel_diff", "max"),
                    failed=("_failed", "sum"), rows=("_rows", "sum"))
        return out.reset_index()
    out = g.agg(max_abs_diff=("max_abs_diff", "max"), max_rel_diff=("max_rel_diff", "max"),
                failed=("passed", lambda p: int((~p.astype(bool)).sum())), rows=("passed", "size"))
    return out.reset_index()


def first_failure(df):
    """The first failing row, in step order (then layer, then quantity as reported), or None."""
    bad = df[~df["passed"].astype(bool)]
    return None if bad.empty else bad.iloc[0]


def describe(row):
    t = "" if pd.isna(row["time"]) else f" time {int(row['time'])}"
    idx = f" index ({row['index']})" if row["index"] else ""
    note = f" [{row['note']}]" if row["note"] else ""
    return (f"case {row['case']} step {int(row['step'])} layer {int(row['layer'])}{t} {row['quantity']}{idx}: "
            f"|m - r| = {row['max_abs_diff']:.3g} > atol {row['atol']:g} + rtol {row['rtol']:g} * |r|{note}")


def format_summary(df, stopped=None, origin=None, halted=None):
    """The per-case summary. ``stopped``, ``origin`` and ``halted`` are the report's
    attrs of those names (by case); ``origin`` adds the own-or-inherited lines."""
    lines = []
    for case, part in df.groupby("case", sort=False):
        w = worst(part)
        steps = int(part["step"].max())
        status = "PASS" if w["failed"].sum() == 0 else "FAIL"
        head = part.iloc[0]
        lines.append(f"{case}: {status}  ({steps} steps, {head['mode']}, {head['device']}, {head['dtype']}, "
                     f"rtol {head['rtol']:g}, atol {head['atol']:g})")
        st = (stopped or {}).get(case)
        if st and any(v is not None for v in st.values()):
            lines.append("  stopped: " + ", ".join(f"{k} at step {v}" if v else f"{k} did not stop" for k, v in st.items()))
        lines.append(f"  {'layer':>5} {'time':>4}  {'quantity':<22} {'max_abs_diff':>12} {'max_rel_diff':>12}  failed")
        for _, r in w.iterrows():
            t = "" if pd.isna(r["time"]) else int(r["time"])
            lines.append(f"  {int(r['layer']):>5} {t:>4}  {r['quantity']:<22} {r['max_abs_diff']:>12.3e} "
                         f"{r['max_rel_diff']:>12.3e}  {r['failed']}/{r['rows']}")
        bad = first_failure(part)
        if bad is not None:
            lines.append("  first failure: " + describe(bad))
        kinks = part[part["note"].astype(str).str.contains("kink:", regex=False)]
        if not kinks.empty:
            lines.append(f"  kinks: {int(kinks['_kinks'].sum()) if '_kinks' in kinks else len(kinks)} delta row(s) had elements straddling ReLU's kink at 0 within "
                         f"tolerance (legitimately ambiguous, compared at the manual's side; note kink:N)")
        entries = (origin or {}).get(case)
        if entries:
            lines.append(f"  own or inherited (step {entries[0]['step']}, rerun with the reference's upstream error):")
            lines += ["    " + describe_origin(e) for e in entries]
        why = (halted or {}).get(case)
        if why:
            lines.append(f"  ended early: {why}; the report holds steps 1-{steps}")
    return "\n".join(lines)
