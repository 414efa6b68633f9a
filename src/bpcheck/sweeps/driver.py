"""``sweep(spec, out, ...)``: run every cell of a SPEC and write OUT_DIR.

The driver parses and checks the SPEC (bpcheck.sweeps.spec), checks and prepares
OUT_DIR (bpcheck.sweeps.dataset), skips the cells already finished there when
``resume``, hands the rest to an executor (bpcheck.sweeps.executors) and writes each
cell's file as it arrives, then the summary. Only the driver writes OUT_DIR.

Interruptions: a Ctrl-C (SIGINT) or SIGTERM stops the executor, writes the summary of
what finished and raises ``Interrupted`` (compare.io.interrupt) with ``.report`` set to
the summary; a cell file being written when the signal arrives is finished first
(``interrupt.deferred``). A worker that dies ends the sweep the same way, without the
exception: the summary's ``attrs["lost"]`` names the cells it took down. Either way
``resume=True`` runs what is missing, and finished cells are never run again.
"""
import time

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.io import interrupt
from bpcheck.sweeps import dataset, spec, summary
from bpcheck.sweeps.executors import WorkerLost


def sweep(spec_or_path, out, *, jobs=None, ray=False, address=None, resume=False, threads=None,
          gpus_per_cell=1, quiet=True):
    """Run the sweep; return the summary DataFrame (bpcheck.sweeps.summary.table), one row
    per cell of the SPEC, with ``attrs``: ``executor`` (its description), ``ran`` (cells
    run now), ``skipped`` (finished before, with ``resume``), ``lost`` (cell ids a dead
    worker took down), ``seconds``, ``write_seconds`` (the driver's time writing cell files). Bad input raises UsageError before any cell runs."""
    for name, v in (("jobs", jobs), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    if address is not None and not ray:
        raise UsageError("--address joins a Ray cluster: it needs --ray")
    cells = spec.parse(spec_or_path)
    executor_type = _executor(ray)
    out = dataset.prepare(out, resume, cells)
    done = set(dataset.finished(out))
    todo = [c for c in cells if c.id not in done]
    if ray:
        executor = executor_type(todo, jobs=jobs, address=address, threads=threads, gpus_per_cell=gpus_per_cell)
    else:
        executor = executor_type(todo, jobs=jobs, threads=threads)
    start, lost, writing = time.perf_counter(), [], 0.0
    got = {}  # the records of the cells run now; those finished before are read back at the end
    bar = _bar(len(cells), len(cells) - len(todo), quiet)
    failed = 0
    try:
        with interrupt.handled():
            try:
                for record, payload in executor:
                    t = time.perf_counter()
                    with interrupt.deferred():
                        dataset.write_cell(out, record["cell"], payload)
                    writing += time.perf_counter() - t
                    got[record["cell"]] = record
                    failed += record["status"] != "PASS"
                    if bar is not None:
                        bar.set_postfix_str(f"failed {failed}", refresh=False)
                        bar.update(1)
            except WorkerLost as e:
                lost = e.cells
            except KeyboardInterrupt as e:
                executor.close()
                result = _finish(out, cells, executor, got, len(cells) - len(todo), lost, start)
                raise interrupt.Interrupted(getattr(e, "signum", 2), result) from None
    finally:
        if bar is not None:
            bar.close()
    lost += [cid for cid, _ in getattr(executor, "lost", [])]
    table = _finish(out, cells, executor, got, len(cells) - len(todo), lost, start)
    table.attrs["write_seconds"] = writing
    return table


def _executor(ray):
    if ray:
        from bpcheck.sweeps.executors.raycluster import RayExecutor, _import_ray

        _import_ray()  # absent: one line, before OUT_DIR is touched
        return RayExecutor
    from bpcheck.sweeps.executors.local import LocalPool

    return LocalPool


def _finish(out, cells, executor, got, skipped, lost, start):
    table = summary.table(list(got.values()) + dataset.records(out, skip=got), cells)
    with interrupt.deferred():
        dataset.write_summary(out, table)
    table.attrs.update(executor=executor.describe(), ran=len(got), skipped=skipped, lost=lost,
                       seconds=time.perf_counter() - start, out=out)
    return table


def _bar(total, initial, quiet):
    """One bar over cells (on a terminal, not under quiet), with the failures so far."""
    import sys

    from bpcheck.progress import _isatty

    if quiet or not _isatty(sys.stdout):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="cell", desc="sweep", file=sys.stdout, leave=False,
                dynamic_ncols=True, postfix="failed 0")
