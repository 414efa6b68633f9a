"""The default executor: a pool of local processes (concurrent.futures), no extra dependency.

Decisions:

- ``jobs`` workers (default: the CPUs this process may use), each running torch with
  ``threads = max(1, cpus // jobs)`` intra-op threads, so that N workers never ask for
  more threads than there are cores. The thread count is part of a row's numerics
  settings (its ``settings`` id), so a cell's rows equal those of the same run made
  alone at that thread count.
- Workers are started by a ``forkserver``: a fresh interpreter that imports torch,
  torch._dynamo (torch.optim imports it on a process's first optimizer: seconds) and
  bpcheck once, runs no torch op, and forks each worker from there. So a worker starts
  in milliseconds, warm, and is never a forked copy of a parent whose OpenMP pool may be
  in use (the driver may have run torch itself: a test, a notebook). Each worker puts
  itself in its own process group, so a Ctrl-C at the terminal reaches the driver only;
  the driver then stops the workers (cells in flight are lost, finished ones are on disk).
- At most ``2 * jobs`` cells are in flight: a 100,000-cell grid is not queued at once.
- A worker that dies (SIGKILL, out of memory) breaks the pool: every cell in flight
  fails with it, and concurrent.futures cannot say which one killed it. The pool then
  raises ``WorkerLost``: the sweep stops with the finished cells written and
  ``--resume`` runs the rest, rather than rerunning a cell that may kill again.
"""
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from bpcheck.sweeps.executors import WorkerLost


PRELOAD = ["torch", "torch._dynamo", "bpcheck.cases", "bpcheck.compare.core.runner", "bpcheck.sweeps.cell"]


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker(threads):
    os.setpgrp()  # Ctrl-C at the terminal: the driver's to handle, not each worker's
    import torch

    torch.set_num_threads(threads)


def _run(cell, threads):
    from bpcheck.sweeps.cell import run_cell

    return run_cell(cell, threads)


class LocalPool:
    name = "local"

    def __init__(self, cells, jobs=None, threads=None):
        self.cells = list(cells)
        self.jobs = min(jobs or cpu_count(), max(1, len(self.cells)))
        self.threads = threads or max(1, cpu_count() // self.jobs)
        self.pool = None

    def describe(self):
        return f"local pool, {self.jobs} worker(s) x {self.threads} thread(s)"

    def __iter__(self):
        if not self.cells:  # all finished before (--resume): start nothing
            return
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self.pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker,
                                        initargs=(self.threads,))
        todo, running = iter(self.cells), {}
        try:
            while True:
                while len(running) < 2 * self.jobs:
                    cell = next(todo, None)
                    if cell is None:
                        break
                    running[self.pool.submit(_run, cell, self.threads)] = cell
                if not running:
                    self.close(wait=True)
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    cell = running.pop(f)
                    try:
                        yield f.result()
                    except BrokenProcessPool:
                        lost = [cell.id] + [c.id for c in running.values()]
                        raise WorkerLost(f"a worker of the local pool died; {len(lost)} cell(s) in flight "
                                         f"were not finished", lost) from None
        finally:
            self.close()

    def close(self, wait=False):
        """Stop the pool; without ``wait``, cells in flight are abandoned and their workers
        terminated (Python 3.14 calls this terminate_workers(); before it, the pool's own
        table of processes, taken before shutdown() drops it)."""
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        procs = [] if wait else list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=wait, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
