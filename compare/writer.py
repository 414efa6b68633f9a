"""Writes the report as it goes: CSV appended chunk by chunk, so that an interrupted
run leaves a valid file holding every finished step.

All checks happen in the constructor, before anything is written.

The numerics settings that the rows' ``settings`` ids name are written beside the
CSV, to ``<csv>.settings.json`` (compare/settings.py), as they appear.
"""
import json
import os
import tempfile

from .errors import UsageError
from .schema import COLUMNS
from .settings import RECORDS, ids_in, sidecar_path


class ReportWriter:
    def __init__(self, path, force=False):
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
        try:  # permission bits don't bind root, and some folders take no new files: try one
            tempfile.TemporaryFile(dir=parent).close()
        except OSError as e:
            raise UsageError(f"cannot write {path}: folder {parent} is not writable ({e.strerror})") from None
        if os.path.isdir(sidecar_path(path)):
            raise UsageError(f"cannot write {sidecar_path(path)}: it is a folder")
        self.path, self.fh, self.settings = path, None, {}

    def write(self, df):
        if self.fh is None:
            self.fh = open(self.path, "w", newline="")
            self.fh.write(",".join(COLUMNS) + "\n")
        df.to_csv(self.fh, header=False, index=False)
        self.fh.flush()
        new = [i for i in ids_in(df["settings"]) if i not in self.settings] if "settings" in df else []
        if new:
            self.settings.update((i, RECORDS[i]) for i in new)
            with open(sidecar_path(self.path), "w") as fh:
                json.dump(self.settings, fh, indent=1, sort_keys=True)

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None
