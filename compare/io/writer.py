"""Writes the report as it goes: CSV appended chunk by chunk, so that an interrupted
run leaves a valid file holding every finished step.

A path ending in ``.parquet`` (or ``.pq``) gets Parquet instead, one row group per
chunk (compare.fastio); CSV rows are written by pyarrow (compare.fastio).
All checks happen in the constructor, before anything is written.

The numerics settings that the rows' ``settings`` ids name are written beside the
CSV, to ``<csv>.settings.json`` (compare/diagnosis/settings.py), as they appear.
"""
import json
import os
import tempfile

from bpcheck.compare.io import fastio
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.diagnosis.settings import RECORDS, ids_in, sidecar_path


def check_output_path(path, force=False, what=""):
    """Refuse, before any work, an output path that cannot or should not be written:
    a missing or unwritable folder, a folder in its place, or an existing file
    without ``force``. ``what`` names the file in the message (e.g. "plot ")."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {what}{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {what}{path}: folder {parent} is not writable")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what}{path}: it is a folder")
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; pass --force (force=True) to overwrite it")
    try:  # permission bits don't bind root, and some folders take no new files: try one
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise UsageError(f"cannot write {what}{path}: folder {parent} is not writable ({e.strerror})") from None
    return path


class ReportWriter:
    def __init__(self, path, force=False, parquet=None):
        """``parquet``: True or False to choose the format; None (default) decides by the
        path's extension (``.parquet``, ``.pq``)."""
        path = check_output_path(path, force)
        if os.path.isdir(sidecar_path(path)):
            raise UsageError(f"cannot write {sidecar_path(path)}: it is a folder")
        self.path, self.fh, self.settings = path, None, {}
        if parquet is None:
            parquet = path.lower().endswith(fastio.PARQUET_SUFFIXES)
        self.parquet = fastio.ParquetSink(path) if parquet else None

    def write(self, df):
        if self.parquet is not None:
            self.parquet.write(df)
        else:
            if self.fh is None:
                self.fh = open(self.path, "wb")
                self.fh.write((",".join(COLUMNS) + "\n").encode())
            fastio.write_csv_rows(self.fh, df)
            self.fh.flush()
        new = [i for i in ids_in(df["settings"]) if i not in self.settings] if "settings" in df else []
        if new:
            self.settings.update((i, RECORDS[i]) for i in new)
            with open(sidecar_path(self.path), "w") as fh:
                json.dump(self.settings, fh, indent=1, sort_keys=True)

    def close(self):
        if self.parquet is not None:
            self.parquet.close()
        if self.fh is not None:
            self.fh.close()
            self.fh = None
