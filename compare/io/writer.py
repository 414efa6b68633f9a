"""Writes the report as it goes, atomically: the rows stream, chunk by chunk, into a
partial file beside the target, which is renamed onto the target only when the run
ends (or stops at a handled interrupt, holding every finished step).

Decisions (docs/reliability.md):

- **Partial file.** ``<target>.partial`` in the target's folder (so the rename stays
  on one file system). ``close()`` fsyncs it and renames it onto the target;
  ``abort()`` (any other exception: a crash, a full disk) deletes it. A SIGKILL can
  leave it behind; the previous file at the target is never touched before the rename.
- **Exclusive claim.** The constructor opens the partial file and takes an exclusive
  ``flock`` on it, then checks the target again: a second run on the same target is
  refused (UsageError) before it computes anything, with or without ``force``. A
  partial file left by a killed run holds no lock and is taken over.
- **Paths refused at start**: empty, bytes, ending in a slash, a folder, a symlink loop,
  a dangling symlink, anything that is not a regular file (``/dev/null``), a missing or
  unwritable folder, an existing file (or settings sidecar) without ``force``. A
  symlink to a regular file is followed: the file it names is replaced.
- **Write errors** (a full disk, an I/O error) raise ``OutputError`` (exit 3 in the CLI)
  after deleting the partial file.

A path ending in ``.parquet`` (or ``.pq``) gets Parquet instead, one row group per
chunk (compare.io.fastio); CSV rows are written by pyarrow (compare.io.fastio).
The numerics settings that the rows' ``settings`` ids name are written beside the
report, to ``<report>.settings.json`` (compare/diagnosis/settings.py), also atomically,
with, under the key ``summary``, the run's summary attrs where the CLI sets them
(``bpcheck report`` prints them: bpcheck/report.py);
a Parquet report carries them in its own key-value metadata too (key ``bpcheck.settings``).
"""
import errno
import json
import os
import tempfile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, the other checks remain
    fcntl = None

from bpcheck.compare.io import fastio, interrupt
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.diagnosis.settings import RECORDS, ids_in, sidecar_path

PARTIAL = ".partial"
SETTINGS_KEY = "bpcheck.settings"


class OutputError(OSError):
    """An output could not be written (a full disk, an I/O error); the previous file at
    the target is untouched. The CLI prints it on one line and exits 3."""

    exit_code = 3


def partial_path(path):
    return os.fspath(path) + PARTIAL


def check_output_path(path, force=False, what=""):
    """Refuse, before any work, an output path that cannot or should not be written
    (see the module docstring); -> the path as a str. ``what`` names the file in the
    message (e.g. "plot ")."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"the {what or 'report '}path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise UsageError(f"the {what or 'report '}path must be a str, got {type(path).__name__}")
    if not path:
        raise UsageError(f"the {what or 'report '}path is empty")
    if "\0" in path:
        raise UsageError(f"cannot write {what}{path!r}: the path holds a NUL character")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UsageError(f"cannot write {what}{path}: it names a folder (ends in {path[-1]})")
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"cannot write {what}{path}: it is a symlink loop") from None
        if os.path.islink(path):
            raise UsageError(f"cannot write {what}{path}: it is a dangling symlink (to {os.readlink(path)})") from None
        if e.errno not in (errno.ENOENT,):
            raise UsageError(f"cannot write {what}{path}: {e.strerror}") from None
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {what}{path}: folder {parent} does not exist")
    if os.path.isdir(real):
        raise UsageError(f"cannot write {what}{path}: it is a folder")
    if os.path.exists(real) and not os.path.isfile(real):
        raise UsageError(f"cannot write {what}{path}: it is not a regular file")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {what}{path}: folder {parent} is not writable")
    if os.path.exists(real) and not force:
        raise UsageError(f"{path} exists; pass --force (force=True) to overwrite it")
    try:  # permission bits don't bind root, and some folders take no new files: try one
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise UsageError(f"cannot write {what}{path}: folder {parent} is not writable ({e.strerror})") from None
    return path


def check_distinct(named):
    """Refuse outputs that would land on the same file: ``named`` is {label: path or None};
    a report's settings sidecar counts as one of its files."""
    seen = {}
    for label, path in named.items():
        if not path:
            continue
        files = [path] + ([sidecar_path(path)] if label in ("--csv", "--parquet") else [])
        for f in files:
            key = os.path.normcase(os.path.realpath(f))
            if key in seen and seen[key] != label:
                raise UsageError(f"{seen[key]} and {label} name the same file {f}")
            seen[key] = label


def replace_atomically(tmp, path, force):
    """Rename ``tmp`` onto ``path``; without ``force`` never replace a file that appeared
    meanwhile (a hard link fails if the name exists)."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        raise UsageError(f"{path} appeared during the run; pass --force (force=True) to overwrite it") from None
    except OSError:  # no hard links here (some file systems): rename, checked just before
        if os.path.lexists(path):
            os.unlink(tmp)
            raise UsageError(f"{path} appeared during the run; pass --force (force=True) to overwrite it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_text_atomically(path, text, force=True):
    """``text`` into ``path`` through a temporary file in its folder; an OSError leaves
    the previous file and no temporary behind (OutputError)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + ".",
                               suffix=PARTIAL)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        replace_atomically(tmp, path, force)
    except OSError as e:
        _remove(tmp)
        raise OutputError(e.errno, f"cannot write {path}: {e.strerror or e}; the previous file is untouched") from None
    except BaseException:
        _remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class ReportWriter:
    def __init__(self, path, force=False, parquet=None):
        """``parquet``: True or False to choose the format; None (default) decides by the
        path's extension (``.parquet``, ``.pq``)."""
        path = check_output_path(path, force)
        side = sidecar_path(path)
        if os.path.lexists(side) and (os.path.isdir(side) or not os.path.isfile(side)):
            what = "a folder" if os.path.isdir(side) else "not a regular file"
            raise UsageError(f"cannot write {side}: it is {what}")
        if os.path.exists(side) and not force:
            raise UsageError(f"{side} exists; pass --force (force=True) to overwrite it")
        self.path, self.force, self.fh, self.settings = path, force, None, {}
        self.summary = None  # the run's summary attrs (stopped, origin, halted), set by the CLI for `bpcheck report`
        self.target = os.path.realpath(path)
        self.partial = partial_path(self.target)
        self.fd = self._claim()
        if parquet is None:
            parquet = path.lower().endswith(fastio.PARQUET_SUFFIXES)
        self.parquet = fastio.ParquetSink(self.partial) if parquet else None
        self.done, self.rows = False, 0

    def _claim(self):
        """Open and lock the partial file; refuse if another run holds it (UsageError)."""
        for _ in range(3):
            try:
                fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise UsageError(f"cannot write {self.path}: {e.strerror} ({self.partial})") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise UsageError(f"another run is writing {self.path} (it holds {self.partial})") from None
            try:  # the file locked must still be the one at the name (not renamed onto a target meanwhile)
                same = os.path.samestat(os.fstat(fd), os.stat(self.partial))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if os.path.exists(self.target) and not self.force:  # another run finished meanwhile
                os.close(fd)
                raise UsageError(f"{self.path} exists; pass --force (force=True) to overwrite it")
            os.ftruncate(fd, 0)  # a killed run's leftovers
            return fd
        raise UsageError(f"cannot claim {self.path}: {self.partial} keeps changing")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        """Keep the report on success, the finished steps on an interrupt; discard it on an error."""
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt):
            self.interrupted()
        else:
            self.abort()

    def interrupted(self):
        """At an interrupt: keep the finished steps if there are any, else write nothing."""
        self.close() if self.rows else self.abort()

    def _failed(self, e):
        self.abort()
        why = e.strerror or e
        raise OutputError(e.errno, f"cannot write {self.path}: {why}; the previous file is untouched") from None

    def write(self, df):
        if self.done:
            raise ValueError(f"the writer of {self.path} is closed")
        try:
            if self.parquet is not None:
                self.parquet.write(df)
            else:
                if self.fh is None:
                    self.fh = os.fdopen(os.dup(self.fd), "wb")
                    self.fh.write((",".join(COLUMNS) + "\n").encode())
                fastio.write_csv_rows(self.fh, df)
                self.fh.flush()
        except OSError as e:
            self._failed(e)
        self.rows += len(df)
        if "settings" in df:
            self.settings.update((i, RECORDS[i]) for i in ids_in(df["settings"]) if i not in self.settings)

    def close(self):
        """Finish the file and rename it onto the target (the report appears whole). A
        SIGINT or SIGTERM inside is held until the rename is done (compare.io.interrupt)."""
        if self.done:
            return
        with interrupt.deferred():
            self._close()

    def _close(self):
        try:
            if self.parquet is not None:
                if self.parquet.writer is None:  # no row at all: still a valid, empty report
                    self.parquet.write(_empty())
                self.parquet.writer.add_key_value_metadata({SETTINGS_KEY: json.dumps(self.settings, sort_keys=True)})
                self.parquet.close()
            else:
                if self.fh is None:
                    self.fh = os.fdopen(os.dup(self.fd), "wb")
                    self.fh.write((",".join(COLUMNS) + "\n").encode())
                self.fh.close()
                self.fh = None
            os.fsync(self.fd)
            side = json.loads(json.dumps(self.settings, sort_keys=True))  # the records, sorted as before
            if self.summary:
                side["summary"] = self.summary  # in its own order: the summary prints it so
            if side:
                write_text_atomically(sidecar_path(self.target), json.dumps(side, indent=1, default=_plain),
                                      force=True)  # checked at start; this run holds the claim
            replace_atomically(self.partial, self.target, self.force)
        except OSError as e:
            self._failed(e)
        except BaseException:
            self.abort()
            raise
        self._release()

    def abort(self):
        """Discard the partial file; the target stays as it was."""
        if self.done:
            return
        for close in (lambda: self.parquet and self.parquet.close(), lambda: self.fh and self.fh.close()):
            try:
                close()
            except Exception:  # noqa: BLE001 (the file is being thrown away)
                pass
        self.fh = None
        if self.parquet is not None:
            self.parquet.writer = None
        _remove(self.partial)
        self._release()

    def _release(self):
        self.done = True
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None


def _plain(v):
    """numpy scalars in the summary attrs, as JSON numbers."""
    return v.item() if hasattr(v, "item") else str(v)


def _empty():
    import pandas as pd

    return pd.DataFrame(columns=list(COLUMNS))
