"""Writes the report as it goes: CSV appended chunk by chunk, so that an interrupted
run leaves a valid file holding every finished step.

All checks happen in the constructor, before anything is written.
"""
import os
import tempfile

from .errors import UsageError
from .schema import COLUMNS


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
        self.path, self.fh = path, None

    def write(self, df):
        if self.fh is None:
            self.fh = open(self.path, "w", newline="")
            self.fh.write(",".join(COLUMNS) + "\n")
        df.to_csv(self.fh, header=False, index=False)
        self.fh.flush()

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None
