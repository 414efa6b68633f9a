"""One cell of a sweep: one ``bpcheck.compare.run``, in whatever process runs it.

``run_cell(cell, threads)`` is the only code an executor ships to a worker. It
returns ``(record, payload)``: the cell's summary record (bpcheck.sweeps.summary) and
its file's bytes, the report rows and the record encoded as Parquet here, in the
worker (bpcheck.sweeps.dataset.encode), so that the driver, which alone writes
OUT_DIR, needs no shared file system with the workers and only writes bytes.

A cell whose run raises (a case that fails to build, a CUDA cell where no GPU is
found, any Exception) is an ERROR record with the exception's one-line message and
no rows; the sweep goes on. KeyboardInterrupt and other BaseExceptions are not
caught: an interrupted cell is not finished, and ``--resume`` runs it again.
"""
import os
import socket
import time

from bpcheck.sweeps import dataset, summary


def run_cell(cell, threads=None):
    import torch

    from bpcheck.compare.core.runner import run
    from bpcheck.compare.diagnosis.settings import RECORDS, ids_in

    if threads:
        torch.set_num_threads(threads)
    kw, options = cell.call()
    start = time.perf_counter()
    try:
        report = run(kw.pop("case"), **kw, **options)
    except Exception as e:  # noqa: BLE001 (any failure of the cell is its ERROR row)
        record = summary.error_record(cell, one_line(e), time.perf_counter() - start)
        table = dataset.table_of(None)
    else:
        record = summary.record(cell, report, time.perf_counter() - start)
        record["settings"] = {i: RECORDS[i] for i in ids_in(report["settings"])} if len(report) else {}
        table = dataset.table_of(report)
    record["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return record, dataset.encode(record, table)


def one_line(e):
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
