"""Read back a report CSV written by bpcheck (``bpcheck report``, ``bpcheck plot``), and
print a report's summary: ``print_report`` is what ``bpcheck run`` prints after a run
and ``bpcheck report`` prints from the file, fed from the report and its attrs (the
stopped steps, the own-or-inherited diagnosis, why a run ended early). ``run --csv``
keeps those attrs in the report's sidecar, ``<report>.settings.json``, under the key
``summary``, beside the settings records the rows' ``settings`` ids name.

The CSV holds the columns of ``bpcheck.compare.core.schema.COLUMNS``; reading restores
the types the runner's DataFrame has (``time`` as nullable Int64, ``passed`` as
bool, ``index`` and ``note`` as strings, "" when empty).
"""
import json
import os

import numpy as np
import pandas as pd

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.diagnosis import settings

ATTRS = ("stopped", "origin", "halted", "origin_missing", "kinks_unreported")

NUMBERS = ("seed", "step", "layer", "max_abs_diff", "max_rel_diff", "manual_norm", "reference_norm", "atol", "rtol", "margin")


def read_report(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"report {path} " + ("is not a file" if os.path.exists(path) else "does not exist"))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"report {path} is not a bpcheck CSV: {why}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(f"report {path} is not a bpcheck CSV: it lacks the columns {', '.join(missing)}")
    if df.empty:
        raise UsageError(f"report {path} holds no rows")
    try:
        for c in NUMBERS:
            df[c] = pd.to_numeric(df[c].replace("", np.nan))
        df["time"] = pd.to_numeric(df["time"].replace("", np.nan)).astype("Int64")
        if not df["passed"].isin(["True", "False"]).all():
            raise ValueError("passed must be True or False")
        df["passed"] = df["passed"] == "True"
        for c in ("step", "layer", "seed"):
            empty = df[c].isna()
            if empty.any():
                raise ValueError(f"row {int(empty.idxmax()) + 2} has no {c}")
            df[c] = df[c].astype(np.int64)
    except (ValueError, TypeError, OverflowError) as e:
        raise UsageError(f"report {path} is not a bpcheck CSV: {e}") from None
    return df[list(COLUMNS)]


def read_summary(path):
    """The run's summary attrs from the report's sidecar (empty where there is none: a
    report written by the Python API); its settings records join settings.RECORDS."""
    attrs = {k: {} for k in ATTRS}
    side = settings.sidecar_path(path)
    if not os.path.isfile(side):
        return attrs
    try:
        with open(side) as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UsageError(f"{side} is not a bpcheck settings file: {e}") from None
    for rid, record in data.items():
        if rid != "summary":
            settings.RECORDS.setdefault(rid, record)
    attrs.update({k: v for k, v in (data.get("summary") or {}).items() if k in ATTRS and isinstance(v, dict)})
    return attrs


def print_report(report, attrs):
    """The summary of ``report`` (compare.diagnosis.summary) and the settings its rows name."""
    from bpcheck.compare.diagnosis.summary import format_summary

    print(format_summary(report, **{k: attrs.get(k) for k in ATTRS}))
    for rid in settings.ids_in(report["settings"]):
        print(settings.describe(rid))
