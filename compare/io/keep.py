"""What a run keeps in memory of the rows it has written: all of them, or a summary.

With a CSV or Parquet target the rows stream to disk chunk by chunk; keeping them all
in memory too would grow without bound (10 rows per trask step). ``Summary`` keeps,
whatever the number of steps, a bounded set of the report's own rows:

- per (case, layer, time, quantity): the rows with the largest ``max_abs_diff``,
  ``max_rel_diff`` and ``margin`` (the worst table), and its first kink row;
- every row of the first step with a failing row (the first failure, and the rows the
  own-or-inherited diagnosis reruns: compare.diagnosis.origin);
- every row of the first step (the order of the keys) and of the last step (the step
  count of the summary line);

in step order, plus three columns that make the summary's counts exact: ``_rows``,
``_failed`` and ``_kinks``, the number of rows, failed rows and kink rows of the full
report that a kept row stands for (each key's counts sit on one of its kept rows,
0 on the others). compare.diagnosis.summary sums them when they are there. The
report's ``attrs["kept"]`` is ``"summary"`` (or ``"all"``) and ``attrs["rows"]`` the
number of rows of the full report. The file at the target holds every row.

``run(keep=...)``: ``"all"``, ``"summary"``, or None (default): ``"summary"`` when a
target is given and the run has more than ``SUMMARY_STEPS`` steps, else ``"all"``.
"""
import numpy as np
import pandas as pd

KEYS = ["case", "layer", "time", "quantity"]
SUMMARY_STEPS = 10_000
KEEP = ("all", "summary")


def choose(keep, target, steps):
    from bpcheck.compare.core.errors import UsageError

    if keep is None:
        return "summary" if target is not None and steps > SUMMARY_STEPS else "all"
    if keep not in KEEP:
        raise UsageError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if keep == "summary" and target is None:
        raise UsageError("keep='summary' needs a target (csv=) that holds every row")
    return keep


class Summary:
    def __init__(self):
        self.kept, self.counts, self.first_bad, self.last, self.rows = None, None, None, None, 0
        self.first = None

    def append(self, df):  # as the runner appends to its list of frames
        if not len(df):
            return
        df = df.reset_index(drop=True)
        df["_row"] = np.arange(self.rows, self.rows + len(df))
        self.rows += len(df)
        if self.first is None:
            self.first = df[df["step"] == df["step"].iloc[0]]
        failed = ~df["passed"].astype(bool)
        kink = df["note"].astype(str).str.contains("kink:", regex=False)
        g = pd.DataFrame({"_rows": 1, "_failed": failed.astype(np.int64), "_kinks": kink.astype(np.int64)})
        counts = g.groupby([df[k] for k in KEYS], sort=False, dropna=False).sum()
        self.counts = counts if self.counts is None else self.counts.add(counts, fill_value=0).astype(np.int64)
        parts = [] if self.kept is None else [self.kept]
        if self.first_bad is None and failed.any():
            step = df.loc[failed, "step"].iloc[0]
            parts.append(df[df["step"] == step])
            self.first_bad = step
        parts.append(df[kink].drop_duplicates(KEYS))
        parts.append(self._worst(df))
        self.kept = self._worst_and_fixed(pd.concat(parts, ignore_index=True))
        self.last = df[df["step"] == df["step"].iloc[-1]]

    @staticmethod
    def _worst(df):
        """Per key the rows of the largest max_abs_diff and max_rel_diff (NaN counts as
        smallest, as the summary's max skips it)."""
        values = df[["max_abs_diff", "max_rel_diff", "margin"]].astype(float).fillna(-np.inf)
        g = values.groupby([df[k] for k in KEYS], sort=False, dropna=False)
        index = pd.concat([g[c].idxmax() for c in values.columns]).unique()
        return df.loc[index]

    def _worst_and_fixed(self, df):
        """Bounded again: the worst rows per key, the first failing step's, the first kink rows."""
        df = df.drop_duplicates("_row").reset_index(drop=True)
        fixed = df[df["step"] == self.first_bad] if self.first_bad is not None else df.iloc[:0]
        kinks = df[df["note"].astype(str).str.contains("kink:", regex=False)].sort_values("_row").drop_duplicates(KEYS)
        worst = self._worst(df)
        return pd.concat([fixed, kinks, worst], ignore_index=True).drop_duplicates("_row")

    add = append

    def report(self, columns):
        """The summary report: the kept rows in the written order, with the count columns."""
        if self.kept is None:
            return pd.DataFrame(columns=list(columns) + ["_rows", "_failed", "_kinks"])
        df = pd.concat([self.first, self.kept, self.last], ignore_index=True)
        df = df.drop_duplicates("_row").sort_values("_row")
        df = df.reset_index(drop=True)
        first = ~df.duplicated(KEYS)  # each key's counts on its first kept row
        counts = self.counts.reset_index()
        merged = df[KEYS].merge(counts, on=KEYS, how="left")
        for c in ("_rows", "_failed", "_kinks"):
            df[c] = np.where(first, merged[c].to_numpy(), 0).astype(np.int64)
        return df[list(columns) + ["_rows", "_failed", "_kinks"]]


ROW_BYTES = 250  # a report row in memory (pandas, 17 columns; measured on trask: docs/reliability.md)


def rows_per_step(setup, copies=None):
    """An estimate of the rows per step: loss and output, and per layer its backward
    quantities (delta, error_prev), each parameter's gradient and value, and optimizer state."""
    per_layer = [2 + 3 * len(p) for p in setup.manual.params]
    return (2 + sum(per_layer)) * max(1, copies or 1)


def available_memory():
    """Bytes of memory available now (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(setup, steps, copies=None):
    """Refuse (UsageError) a run without a target whose report would not fit in memory."""
    from bpcheck.compare.core.errors import UsageError

    free = available_memory()
    need = steps * rows_per_step(setup, None if copies is None else len(copies)) * ROW_BYTES
    if free is not None and need > free:
        raise UsageError(f"a report of {steps} steps needs about {need / 2**30:.1f} GiB in memory and "
                         f"{free / 2**30:.1f} GiB are available: give a target (--csv/--parquet, csv=), "
                         f"which keeps every row on disk and a summary in memory, or fewer steps")


def as_summary(df):
    """A full report with the summary's count columns (each row stands for itself), so
    that it concatenates with summary reports (``bpcheck run all``)."""
    if "_rows" in df:
        return df
    df = df.copy()
    df["_rows"] = 1
    df["_failed"] = (~df["passed"].astype(bool)).astype(np.int64)
    df["_kinks"] = df["note"].astype(str).str.contains("kink:", regex=False).astype(np.int64)
    return df
