"""The logic behind bpcheck's pytest plugin (the hooks are in bpcheck.plugin).

- ``Checker``: what the ``backprop`` fixture returns. Calling it runs
  ``bpcheck.testing.assert_backprop_close`` on the fixture's device and dtype,
  names the case after the test, and adds the report to the session's CSV.
- ``SessionReport``: the one CSV of ``--bpcheck-report PATH``. Like ``--junitxml``
  it replaces the previous session's file; its folder is checked when pytest starts.
  Under pytest-xdist (``-n N``) each worker writes its own part, a hidden file beside
  PATH named by ``part_for``; when the session finishes the controller merges the parts
  (one header, each part's rows in worker order, the settings records joined) into a
  temporary file and renames it to PATH, so the report is one valid CSV, never
  interleaved, and appears whole.
- ``marker_params``: the (device, dtype) pairs of ``@pytest.mark.bpcheck``.
"""
import json
import os
import uuid

import pandas as pd
import torch

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.runner import resolve_device, resolve_dtype
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.diagnosis.settings import sidecar_path
from bpcheck.compare.io.writer import ReportWriter
from bpcheck.testing import assert_backprop_close

DEVICES = ("cpu", "cuda")
DTYPES = ("float64", "float32")


class SessionReport:
    def __init__(self, path, worker=False):
        """``worker``: ``path`` is an xdist worker's part (no empty file when it ran no check)."""
        self.path, self.rows, self.worker, self.parts = path, 0, worker, []
        self.writer = ReportWriter(path, force=True) if path else None
        self.token = uuid.uuid4().hex[:8]

    def add(self, report):
        if self.writer is not None:
            self.writer.write(report)
            self.rows += len(report)

    def part_for(self, worker_id):
        """The part file of xdist worker ``worker_id`` (the controller merges it at the end)."""
        folder, name = os.path.split(os.path.abspath(self.path))
        part = os.path.join(folder, f".{name}.{self.token}.{worker_id}.part")
        self.parts.append(part)
        return part

    def close(self):
        if self.writer is None:
            return
        if self.parts:  # xdist's controller: the workers' merged parts replace its own (empty) file
            self.writer.abort()
            self.merge()
        else:  # the writer leaves a valid report, empty where no check ran (compare.io.writer)
            self.writer.close()
        self.writer = None

    def merge(self):
        """The workers' parts -> PATH, atomically; the parts are removed."""
        folder, name = os.path.split(os.path.abspath(self.path))
        tmp, settings = os.path.join(folder, f".{name}.{self.token}.merged"), {}
        with open(tmp, "wb") as out:
            out.write((",".join(COLUMNS) + "\n").encode())
            for part in self.parts:
                if not os.path.exists(part):  # a worker that ran no check
                    continue
                with open(part, "rb") as fh:
                    fh.readline()  # the part's header
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        out.write(chunk)
                        self.rows += chunk.count(b"\n")  # report fields hold no newline
                os.remove(part)
                if os.path.exists(sidecar_path(part)):
                    with open(sidecar_path(part)) as fh:
                        settings.update(json.load(fh))
                    os.remove(sidecar_path(part))
        os.replace(tmp, self.path)
        if settings:
            with open(sidecar_path(self.path), "w") as fh:
                json.dump(settings, fh, indent=1, sort_keys=True)
        self.parts = []



class Checker:
    """``checker(manual, reference, inputs, targets, **kw)`` = assert_backprop_close on this
    checker's device and dtype. ``device``, ``dtype`` and ``factory_kwargs``
    (``{"device": ..., "dtype": ...}``) are there to build the manual side in the right place."""

    def __init__(self, device, dtype, session=None, name="bpcheck"):
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.session, self.name, self.calls = session, name, 0

    @property
    def factory_kwargs(self):
        return {"device": self.device, "dtype": self.dtype}

    def __call__(self, manual, reference, inputs, targets, **kw):
        __tracebackhide__ = True  # a failure shows the test's line and bpcheck's message only
        self.calls += 1
        kw.setdefault("name", self.name if self.calls == 1 else f"{self.name}#{self.calls}")
        kw.setdefault("device", self.device)
        kw.setdefault("dtype", self.dtype)
        try:
            report = assert_backprop_close(manual, reference, inputs, targets, **kw)
        except AssertionError as e:
            if self.session is not None and hasattr(e, "report"):
                self.session.add(e.report)
            raise
        if self.session is not None:
            self.session.add(report)
        return report

    def __repr__(self):
        return f"Checker(device={str(self.device)!r}, dtype={str(self.dtype).replace('torch.', '')!r})"


def check_options(device, dtype):
    """Validate --bpcheck-device and --bpcheck-dtype once, when pytest starts."""
    resolve_device(device)
    resolve_dtype(dtype)


def marker_params(marker):
    """[(device, dtype, skip_reason or None)] for ``@pytest.mark.bpcheck(devices=..., dtypes=...)``."""
    if marker.args:
        raise UsageError("@pytest.mark.bpcheck takes keyword arguments only: devices=[...], dtypes=[...]")
    unknown = set(marker.kwargs) - {"devices", "dtypes"}
    if unknown:
        raise UsageError(f"@pytest.mark.bpcheck got unknown arguments {sorted(unknown)} (known: devices, dtypes)")
    devices = marker.kwargs.get("devices", DEVICES)
    dtypes = marker.kwargs.get("dtypes", DTYPES)
    devices, dtypes = ([v] if isinstance(v, str) else list(v) for v in (devices, dtypes))
    for dt in dtypes:
        resolve_dtype(dt)
    out = []
    for dev in devices:
        if torch.device(dev).type not in ("cpu", "cuda"):
            raise UsageError(f"@pytest.mark.bpcheck: device {dev!r} is not supported (cpu or cuda)")
        skip = "no CUDA GPU" if torch.device(dev).type == "cuda" and not torch.cuda.is_available() else None
        out += [(dev, dt, skip) for dt in dtypes]
    return out
