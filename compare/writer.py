"""Writes the report as it goes: CSV appended chunk by chunk, so that an interrupted
run leaves a valid file holding every finished step.

A path ending in ``.parquet`` (or ``.pq``) gets Parquet instead, one row group per
chunk (compare.fastio); CSV rows are written by pyarrow (compare.fastio).
All checks happen in the constructor, before anything is written.
"""
import os

from . import fastio
from .errors import UsageError
from .schema import COLUMNS


class ReportWriter:
    def __init__(self, path, force=False, parquet=None):
        """``parquet``: True or False to choose the format; None (default) decides by the
        path's extension (``.parquet``, ``.pq``)."""
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot write {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"cannot write {path}: folder {parent} is not writable")
        if os.path.isdir(path):
            raise UsageError(f"cannot write {path}: it is a folder")
        if os.path.exists(path) and not force:
            raise UsageError(f"{path} exists; pass --force (force=True) to overwrite it")
        self.path, self.fh = path, None
        if parquet is None:
            parquet = path.lower().endswith(fastio.PARQUET_SUFFIXES)
        self.parquet = fastio.ParquetSink(path) if parquet else None

    def write(self, df):
        if self.parquet is not None:
            self.parquet.write(df)
            return
        if self.fh is None:
            self.fh = open(self.path, "wb")
            self.fh.write((",".join(COLUMNS) + "\n").encode())
        fastio.write_csv_rows(self.fh, df)
        self.fh.flush()

    def close(self):
        if self.parquet is not None:
            self.parquet.close()
        if self.fh is not None:
            self.fh.close()
            self.fh = None
