"""``--ray``: cells as Ray tasks, on this machine or on a cluster.

Decisions:

- Ray is optional (``pip install "bpcheck[ray]"``); it is imported here only, and its
  absence is one UsageError line. Without ``address`` and with no Ray running in this
  process, ``ray.init`` starts a local Ray (``jobs`` CPUs, default all) and shuts it
  down at the end; ``address`` ("auto", "ray://host:10001", "host:6379") joins an
  existing cluster. A Ray already initialised by the caller (``ray.init(num_cpus=2)``
  in a test) is used as it is and left running.
- A task asks for ``num_cpus=threads`` (default 1) and runs torch with that many
  threads; a CUDA cell also asks for ``num_gpus=gpus_per_cell`` (default 1), so Ray
  places it on a node with a free GPU and sets its CUDA_VISIBLE_DEVICES; CPU cells ask
  for none, so a mixed grid lands on the right nodes.
- The driver writes OUT_DIR: a task returns its record and rows (an Arrow table, through
  Ray's object store), so workers need no shared file system. A ``FILE.py:NAME`` case
  must exist at the same path on every node (a shared folder, or Ray's runtime_env).
- A task whose worker dies is retried by Ray (``max_retries``, default 1); if it still
  fails, the cell is left unfinished (``--resume`` runs it) and the sweep goes on.
- At most ``4 * cluster CPUs`` tasks are in flight, and results are collected in
  batches (``ray.wait`` with a short timeout), so a 100,000-cell grid costs the driver
  neither 100,000 pending references at once nor a scan of them per finished cell.
"""
from bpcheck.compare.core.errors import UsageError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install \"bpcheck[ray]\"") from None
    return ray


def _task(cell, threads):
    from bpcheck.sweeps.cell import run_cell

    return run_cell(cell, threads)


class RayExecutor:
    name = "ray"

    def __init__(self, cells, jobs=None, address=None, threads=None, gpus_per_cell=1, max_retries=1):
        self.ray = _import_ray()
        self.cells, self.jobs, self.address = list(cells), jobs, address
        self.threads, self.gpus, self.retries = threads or 1, gpus_per_cell, max_retries
        self.started, self.lost, self.cpus = False, [], None
        self.refs = {}

    def describe(self):
        where = f"Ray cluster {self.address}" if self.address else "local Ray"
        cpus = "" if self.cpus is None else f", {self.cpus:g} CPU(s)"
        return f"{where}{cpus}, {self.threads} thread(s) per cell"

    def start(self):
        ray = self.ray
        if not ray.is_initialized():
            kw = {"address": self.address} if self.address else {"num_cpus": self.jobs, "include_dashboard": False}
            try:
                ray.init(log_to_driver=False, configure_logging=False, **kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UsageError(f"cannot start or join Ray{' at ' + self.address if self.address else ''}: "
                                 f"{' '.join(str(e).split())}") from None
            self.started = True
        self.cpus = ray.cluster_resources().get("CPU", 0)

    def __iter__(self):
        ray = self.ray
        if not self.cells:  # all finished before (--resume): start nothing
            return
        self.start()
        task = ray.remote(_task)
        window = max(4, 4 * int(self.cpus))
        todo = iter(self.cells)
        try:
            while True:
                while len(self.refs) < window:
                    cell = next(todo, None)
                    if cell is None:
                        break
                    opts = dict(num_cpus=self.threads, num_gpus=self.gpus if cell.cuda else 0, max_retries=self.retries)
                    self.refs[task.options(**opts).remote(cell, self.threads)] = cell
                if not self.refs:
                    return
                ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0.05, fetch_local=True)
                if not ready:
                    ready, _ = ray.wait(list(self.refs), num_returns=1)
                for ref in ready:
                    cell = self.refs.pop(ref)
                    try:
                        yield ray.get(ref)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.OutOfMemoryError) as e:
                        self.lost.append((cell.id, type(e).__name__))
        finally:
            self.close()

    def close(self):
        ray = self.ray
        for ref in self.refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 (already finished or gone: nothing to stop)
                pass
        self.refs = {}
        if self.started:
            ray.shutdown()
            self.started = False
