"""The sweep's summary: one record per cell, and the table and text made of them.

A record (a dict, JSON in the cell file's metadata) holds:

- ``n``, ``cell``, ``params``: the cell's position in the SPEC's grid, its id, its parameters;
- ``status``: PASS (every row passed), FAIL (a row failed), ERROR (the run raised: ``error``
  holds its one-line message, and the cell has no rows);
- ``margin``: the worst difference in units of the absolute tolerance, the largest
  ``max_abs_diff / atol`` over the cell's rows (inf for a non-finite difference), and
  ``worst``: the row's layer and quantity. It is a scale for the eye and for the grid plot,
  not the verdict: a row passes when every element has |m - r| <= atol + rtol |r|, so a
  row of large values can pass above 1; ``status`` comes from the ``passed`` column alone;
- ``max_abs_diff``: the largest over the rows; ``first_failure``: the first failing row in
  the words of ``bpcheck run``'s summary ("" when none);
- ``quantities``: ``{"<layer> <quantity>": margin}``, the worst over steps and time steps
  (the grid plot's columns);
- ``rows``, ``seconds`` (the run's wall time in its worker), ``engine`` (the engine that
  ran, ``report.attrs["engine"]``), ``worker`` (host:pid), ``settings`` (the numerics
  records the rows' ``settings`` ids name).
"""
import math

import numpy as np
import pandas as pd

STATUSES = ("PASS", "FAIL", "ERROR")
FIELDS = ("status", "margin", "worst", "max_abs_diff", "first_failure", "error", "rows", "seconds", "engine", "worker")


def record(cell, report, seconds):
    from bpcheck.compare.diagnosis.summary import describe, first_failure

    margins = _margins(report)
    out = _base(cell, seconds)
    out.update(status="PASS" if report["passed"].all() else "FAIL", rows=len(report),
               engine=report.attrs.get("engine"))
    if len(report):
        i = int(np.argmax(margins.to_numpy()))
        row = report.iloc[i]
        out.update(margin=_float(margins.iloc[i]), worst=_where(row),
                   max_abs_diff=_float(np.nan_to_num(report["max_abs_diff"].to_numpy(float), nan=np.inf).max()))
        key = report["layer"].astype(str) + " " + report["quantity"].astype(str)
        out["quantities"] = {k: _float(v) for k, v in margins.groupby(key, sort=False).max().items()}
    bad = first_failure(report) if len(report) else None
    out["first_failure"] = "" if bad is None else describe(bad)
    return out


def error_record(cell, message, seconds):
    out = _base(cell, seconds)
    out.update(status="ERROR", error=message, rows=0)
    return out


def _base(cell, seconds):
    return {"n": cell.n, "cell": cell.id, "params": cell.params, "status": None, "margin": None, "worst": "",
            "max_abs_diff": None, "first_failure": "", "error": "", "rows": 0, "seconds": round(seconds, 6),
            "engine": None, "worker": "", "quantities": {}, "settings": {}}


def _margins(report):
    d = report["max_abs_diff"].to_numpy(dtype=float)
    return pd.Series(np.nan_to_num(d, nan=np.inf) / report["atol"].to_numpy(dtype=float), index=report.index)


def _where(row):
    t = "" if pd.isna(row["time"]) else f" time {int(row['time'])}"
    return f"step {int(row['step'])} layer {int(row['layer'])}{t} {row['quantity']}"


def _float(v):
    v = float(v)
    return math.inf if math.isnan(v) else v


def table(records, cells=None):
    """The summary DataFrame: one row per cell, in grid order; the parameters first (one
    column per SPEC key), then ``FIELDS``. ``cells``: the SPEC's cells, so that cells
    not run yet appear with status ``PENDING``."""
    by_id = {r["cell"]: r for r in records}
    if cells is not None:
        rows = [by_id.get(c.id) or {"n": c.n, "cell": c.id, "params": c.params, "status": "PENDING"} for c in cells]
    else:
        rows = sorted(records, key=lambda r: r["n"])
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    data = {"n": [r["n"] for r in rows], "cell": [r["cell"] for r in rows]}
    for k in keys:
        data[k] = _column([r["params"].get(k) for r in rows])
    for f in FIELDS:
        data[f] = [r.get(f) for r in rows]
    df = pd.DataFrame(data)
    for f in ("margin", "max_abs_diff", "seconds"):
        df[f] = pd.to_numeric(df[f]).astype(float)
    df["rows"] = pd.to_numeric(df["rows"]).fillna(0).astype(int)
    for f in ("worst", "first_failure", "error", "engine", "worker"):
        df[f] = df[f].fillna("").astype(str)
    df.attrs["params"] = keys
    return df


def _column(values):
    """A parameter column Parquet can hold: its values as they are when they share one
    scalar type, else as text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) == 1 and kinds <= {int, float, str, bool}:
        return values
    if kinds <= {int, float}:
        return [None if v is None else float(v) for v in values]
    return [None if v is None else str(v) for v in values]


def counts(df):
    return {s: int((df["status"] == s).sum()) for s in STATUSES + ("PENDING",)}


def exit_code(df):
    """0 every cell passed; 1 a cell failed, raised, or has not run."""
    return 0 if (df["status"] == "PASS").all() else 1


def format_table(df, limit=40):
    """The summary as text: a count line, then one line per cell (only the cells that did
    not pass when there are more than ``limit``)."""
    c = counts(df)
    head = f"sweep: {len(df)} cells: " + ", ".join(f"{v} {k}" for k, v in c.items() if v or k != "PENDING")
    shown = df if len(df) <= limit else df[df["status"] != "PASS"]
    if len(df) > limit and len(shown):
        head += f" (the {len(shown)} that did not pass below)"
    keys = df.attrs.get("params") or [k for k in df.columns if k not in ("n", "cell") + FIELDS]
    labels = [" ".join(f"{k}={r[k]}" for k in keys if not _missing(r[k])) for _, r in shown.iterrows()]
    width = max([len(s) for s in labels] + [6])
    lines = [head]
    if len(shown):
        lines.append(f"  {'cell':<12}  {'params':<{width}}  {'status':<7} {'margin':>9} {'seconds':>8}  engine / first failure / error")
    for label, (_, r) in zip(labels, shown.iterrows()):
        margin = "" if _missing(r["margin"]) else f"{r['margin']:.3g}"
        secs = "" if _missing(r["seconds"]) else f"{r['seconds']:.2f}"
        what = r["error"] or r["first_failure"] or r["engine"] or ""
        lines.append(f"  {r['cell']:<12}  {label:<{width}}  {r['status']:<7} {margin:>9} {secs:>8}  {what}")
    return "\n".join(lines)


def _missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def grid(records):
    """The grid view's data: one row per finished cell (grid order; index: the cell's
    parameters as text), one column per "<layer> <quantity>" in the order first met, each
    value the cell's worst margin there (NaN where the cell has no such rows). ``attrs``:
    ``status``, the cells' statuses in the same order."""
    rows = sorted(records, key=lambda r: r["n"])
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    varied = [k for k in keys if len({repr(r["params"].get(k)) for r in rows}) > 1] or keys
    labels = [" ".join(f"{k}={r['params'].get(k)}" for k in varied) for r in rows]
    df = pd.DataFrame([r.get("quantities") or {} for r in rows], index=labels, dtype=float)
    df.attrs["status"] = [r["status"] for r in rows]
    return df
