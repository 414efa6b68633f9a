"""Where cells run. An executor is an iterable of ``(record, payload)`` pairs, one per
cell as each finishes (bpcheck.sweeps.cell.run_cell), with ``close()`` to stop what
is in flight. ``local.LocalPool`` (default, no extra dependency) and
``raycluster.RayExecutor`` (``--ray``, the optional ``bpcheck[ray]``)."""


class WorkerLost(RuntimeError):
    """A worker died (killed, out of memory) with cells in flight: those cells are not
    finished, and ``--resume`` runs them again. ``cells``: the ids in flight."""

    def __init__(self, message, cells=()):
        super().__init__(message)
        self.cells = list(cells)
