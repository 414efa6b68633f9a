"""Fast report writing: CSV rows through pyarrow, and Parquet.

pandas' ``DataFrame.to_csv`` formats every value in Python; pyarrow's CSV writer
does it in C++. For the 60,000-step trask report (600,000 rows) pandas takes
several times longer than the run it reports, pyarrow a small fraction of it
(benchmarks/README.md). The file holds the same values: ``pandas.read_csv``
reads back the same frame from either writer (tests/test_fast_paths.py).
Text differs only in form: pyarrow quotes every string and writes floats in
shortest form (``1e-7``, ``0``); ``passed`` is written ``True``/``False`` as pandas does.

Parquet keeps the column types and is several times smaller; a run appends one
row group per chunk, and the file is complete once the writer is closed (the
runner closes it on an interrupt too).
"""
try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - pyarrow is a dependency; pandas' writer remains
    pa = None

PARQUET_SUFFIXES = (".parquet", ".pq")


def to_table(df, schema=None):
    if df.attrs:  # the rows only: a report's attrs (the rule, the origin) belong to the run, not the file
        df = df.copy(deep=False)
        df.attrs = {}
    table = pa.Table.from_pandas(df, preserve_index=False)
    return table if schema is None else table.cast(schema)


def write_csv_rows(fh, df):
    """Append ``df``'s rows (no header) to the binary file ``fh``."""
    if pa is None:
        fh.write(df.to_csv(header=False, index=False).encode())
        return
    table = to_table(df)
    i = table.schema.get_field_index("passed")
    if i >= 0:  # True/False, as pandas writes them (pyarrow: true/false)
        table = table.set_column(i, "passed", pc.if_else(table.column(i), "True", "False"))
    pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="needed"))


class ParquetSink:
    """Row groups appended chunk by chunk; the schema is the first chunk's."""

    def __init__(self, path):
        if pa is None:  # pragma: no cover
            raise RuntimeError("writing Parquet needs pyarrow")
        self.path, self.writer = path, None

    def write(self, df):
        table = to_table(df, None if self.writer is None else self.writer.schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
