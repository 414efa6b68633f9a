"""OUT_DIR: the sweep's Parquet dataset, partitioned by cell, and its summary.

Layout (decision):

    OUT_DIR/sweep.json                          the grid: every cell's n, id and parameters
    OUT_DIR/cells/cell=<id>/part-0.parquet      one file per finished cell: its report rows
    OUT_DIR/summary.parquet                     one row per cell (bpcheck.sweeps.summary)

- ``cells/`` is a Hive-partitioned dataset: ``pandas.read_parquet(OUT_DIR + "/cells")``
  (or ``pyarrow.dataset``) reads every row of every cell, with a ``cell`` column. The
  columns are ``bpcheck.compare.core.schema.COLUMNS``, typed by ``SCHEMA`` (a column
  added to COLUMNS that SCHEMA does not know is stored as text).
- A cell file carries its summary record as JSON in the Parquet metadata (key
  ``bpcheck.cell``): rows and verdict appear together or not at all. An ERROR cell
  is a file with no rows and its record.
- The worker encodes the cell's Parquet file (``encode``: the rows and the record), so
  that the driver's whole share of a cell is one write and one rename (``write_cell``):
  the file is written to ``cells/.tmp-<id>-<pid>.parquet`` and renamed into place
  (``os.replace``, atomic on one file system), so a crash or a kill of bpcheck or of any
  worker never leaves a half-written cell; a temporary name starts with ``.``, which
  Parquet readers skip, and the next ``--resume`` deletes it. A cell is finished when
  its file exists. There is no fsync (it tripled the driver's time per cell here): a
  power cut may lose the last cells written, as the file system decides.
- ``summary.parquet`` and ``sweep.json`` are written the same way. The summary is
  derived: ``bpcheck report OUT_DIR`` rebuilds it from the cell files, so a sweep
  killed before writing it loses nothing.
"""
import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.schema import COLUMNS

KEY = b"bpcheck.cell"
GRID = "sweep.json"
SUMMARY = "summary.parquet"
CELLS = "cells"
TYPES = {"seed": pa.int64(), "step": pa.int64(), "layer": pa.int64(), "time": pa.int64(), "passed": pa.bool_(),
         **{c: pa.float64() for c in ("max_abs_diff", "max_rel_diff", "manual_norm", "reference_norm", "atol", "rtol")}}
SCHEMA = pa.schema([(c, TYPES.get(c, pa.string())) for c in COLUMNS])


def table_of(report):
    """A report DataFrame (or None: no rows) -> an Arrow table of SCHEMA."""
    if report is None or not len(report):
        return SCHEMA.empty_table()
    df = report[list(COLUMNS)]
    arrays = []
    for field in SCHEMA:
        col = df[field.name]
        if pa.types.is_string(field.type):
            col = col.map(lambda v: None if v is None or v != v else str(v))  # v != v: NaN, <NA>
        arrays.append(pa.array(col, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def frame_of(table):
    """An Arrow table of SCHEMA -> the report DataFrame, with the runner's types
    (``time`` nullable Int64, text "" where empty)."""
    df = table.select(list(COLUMNS)).to_pandas()
    df["time"] = df["time"].astype("Int64")
    for field in SCHEMA:
        if pa.types.is_string(field.type):
            df[field.name] = df[field.name].fillna("").astype(object)
    return df


def cell_path(out, cell_id):
    return os.path.join(out, CELLS, f"cell={cell_id}", "part-0.parquet")


def encode(record, table):
    """A cell's file, as bytes: its rows, and its record in the Parquet metadata."""
    meta = dict(table.schema.metadata or {})
    meta[KEY] = json.dumps(record).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    return sink.getvalue().to_pybytes()


def write_cell(out, cell_id, payload):
    """Write one finished cell's file (``encode``'s bytes), atomically."""
    final = cell_path(out, cell_id)
    tmp = os.path.join(out, CELLS, f".tmp-{cell_id}-{os.getpid()}.parquet")
    with open(tmp, "wb") as fh:
        fh.write(payload)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(tmp, final)


def replace_atomically(path, write):
    """``write(file)`` into a temporary file beside ``path``, then rename it into place."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def finished(out):
    """{cell id: path} of every finished cell in OUT_DIR."""
    paths = glob.glob(os.path.join(glob.escape(os.path.join(out, CELLS)), "cell=*", "part-0.parquet"))
    return {os.path.basename(os.path.dirname(p))[len("cell="):]: p for p in paths}


def read_record(path):
    meta = pq.read_schema(path).metadata or {}
    if KEY not in meta:
        raise UsageError(f"{path} is not a bpcheck sweep cell (no {KEY.decode()} metadata)")
    return json.loads(meta[KEY])


def records(out, skip=()):
    """The summary record of every finished cell (but those in ``skip``)."""
    try:
        return [read_record(p) for cid, p in finished(out).items() if cid not in skip]
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        raise UsageError(f"sweep {out}: a cell file cannot be read: {e}") from None


def read_rows(out, cell_id):
    """One finished cell's report rows as the runner's DataFrame."""
    return frame_of(pq.read_table(cell_path(out, cell_id)))


def read_all(out):
    """Every row of every finished cell, with its ``cell`` column."""
    import pyarrow.dataset as ds

    data = ds.dataset(os.path.join(out, CELLS), format="parquet", partitioning="hive", schema=_with_cell())
    return data.to_table().to_pandas()


def _with_cell():
    return SCHEMA.append(pa.field("cell", pa.string()))


def is_sweep(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, GRID))


def read_grid(out):
    with open(os.path.join(out, GRID)) as fh:
        return json.load(fh)


def prepare(out, resume, cells):
    """Check OUT_DIR before any cell runs, create it, and record the grid. Without
    ``resume``, OUT_DIR must not hold a sweep (or anything else); with it, stale
    temporary files of a killed sweep are deleted."""
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"cannot write sweep to {out}: it is a file")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write sweep to {out}: folder {parent} does not exist")
    if os.path.isdir(out) and os.listdir(out):
        if not resume:
            what = "a sweep" if is_sweep(out) else "other files"
            raise UsageError(f"{out} holds {what}; pass --resume to finish it, or choose an empty folder")
        if not is_sweep(out):
            raise UsageError(f"{out} holds no sweep to resume (no {GRID})")
    try:
        os.makedirs(os.path.join(out, CELLS), exist_ok=True)
        for tmp in glob.glob(os.path.join(glob.escape(os.path.join(out, CELLS)), ".tmp-*")):
            os.remove(tmp)
        grid = {"cells": [{"n": c.n, "cell": c.id, "params": c.params} for c in cells]}
        replace_atomically(os.path.join(out, GRID), lambda fh: fh.write(json.dumps(grid, indent=1).encode()))
    except OSError as e:
        raise UsageError(f"cannot write sweep to {out}: {e.strerror or e}") from None
    return out


def write_summary(out, df):
    table = pa.Table.from_pandas(df, preserve_index=False)
    replace_atomically(os.path.join(out, SUMMARY), lambda fh: pq.write_table(table, fh))
