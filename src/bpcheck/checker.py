"""The logic behind bpcheck's pytest plugin (the hooks are in bpcheck.plugin).

- ``Checker``: what the ``backprop`` fixture returns. Calling it runs
  ``bpcheck.testing.assert_backprop_close`` on the fixture's device and dtype,
  names the case after the test, and adds the report to the session's CSV.
- ``SessionReport``: the one CSV of ``--bpcheck-report PATH``. Like ``--junitxml``
  it replaces the previous session's file; its folder is checked when pytest starts.
- ``marker_params``: the (device, dtype) pairs of ``@pytest.mark.bpcheck``.
"""
import pandas as pd
import torch

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.runner import resolve_device, resolve_dtype
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.io.writer import ReportWriter
from bpcheck.testing import assert_backprop_close

DEVICES = ("cpu", "cuda")
DTYPES = ("float64", "float32")


class SessionReport:
    def __init__(self, path):
        self.path, self.rows = path, 0
        self.writer = ReportWriter(path, force=True) if path else None

    def add(self, report):
        if self.writer is not None:
            self.writer.write(report)
            self.rows += len(report)

    def close(self):
        if self.writer is not None:
            if self.writer.fh is None:  # no check ran: still leave a valid, empty report
                self.writer.write(pd.DataFrame(columns=list(COLUMNS)))
            self.writer.close()


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
