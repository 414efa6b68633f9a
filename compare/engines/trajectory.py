"""The manual side's lean trajectory, stepped in a forked process beside this one.

On the numpy twin (compare.replay) the manual side's loop is a chain of small numpy
calls that hold the GIL, so no thread can run beside it, and a run in one process
costs the loop plus everything else (autograd on the recorded states, the
comparison, the rows, the CSV). But the loop is all that has to run in order: each
step's weights depend only on the step before, and its trace only on its weights
(``ManualRun.trace_of``). So ``Trajectory`` forks once; the child steps the manual
side lean (``ManualRun.steps``) and writes the weights after every step into shared
memory, a chunk at a time, up to ``SLOTS`` chunks ahead; this process takes each
chunk as it is done and computes the rest. On two cores the halves overlap
(benchmarks/README.md).

The child runs numpy only, on its copy-on-write view of the parent's memory. It
ignores SIGINT (a Ctrl-C is the parent's to answer) and never outlives the run: the
parent kills it on any exit, normal, error or interrupt. An exception in its steps is
raised here; a KeyboardInterrupt raised by the steps themselves (a test's injected
one) ends the chunk at the last finished step, as in one process. After each chunk
the parent's manual tensors are set to the child's weights, so the manual side ends
in the same state as an in-process run.
"""
import gc
import mmap
import multiprocessing
import os
import signal
import sys
import warnings

import numpy as np
import torch

SLOTS = 3  # chunks the child may run ahead


def available():
    """Linux only: elsewhere a forked child's numpy may call a BLAS that is not fork-safe
    (macOS's Accelerate), and Windows has no fork."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class Trajectory:
    def __init__(self, run, steps, chunk):
        """``run``: a lean compare.manualrun.ManualRun on the numpy twin."""
        self.run, self.steps, self.chunk = run, steps, chunk
        tensors = [w for p in run.manual.params for w in p.values()]
        self.names = [list(p) for p in run.manual.params]
        nbytes = [chunk * w.numel() * w.element_size() for w in tensors]
        self.mem = mmap.mmap(-1, SLOTS * sum(nbytes))  # anonymous and shared: the child writes, we read
        offsets = np.cumsum([0] + nbytes * SLOTS)
        self.slots = [[np.ndarray((chunk,) + tuple(w.shape), w.numpy().dtype, self.mem, offsets[s * len(tensors) + j])
                       for j, w in enumerate(tensors)] for s in range(SLOTS)]

    def __iter__(self):
        """Per chunk: ((None, parameters after each step [{name: (n, ...)}], None), n, the
        KeyboardInterrupt that cut it short or None): what ManualRun.steps returns."""
        ours, theirs = multiprocessing.Pipe()
        froze = gc.get_freeze_count() == 0  # (a caller's own frozen objects stay as they are)
        if froze:
            gc.freeze()  # the collector leaves the objects of now alone: no copy-on-write of pages it would touch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child touches none
                pid = os.fork()
        except OSError:  # no process to be had (limits, memory): the steps run here
            if froze:
                gc.unfreeze()
            ours.close()
            theirs.close()
            yield from self.run.chunks(self.steps, self.chunk)
            return
        if pid == 0:  # the child
            ours.close()
            self._child(theirs)
        theirs.close()
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - 1))  # the child has a core: torch's pool shares the rest
        try:
            chunks = -(-self.steps // self.chunk)
            for s in range(min(SLOTS, chunks)):
                ours.send(s)
            done, sent = 0, min(SLOTS, chunks)
            while done < self.steps:
                try:
                    slot, n, stopped, error = ours.recv()
                except EOFError:
                    raise RuntimeError("the manual side's process ended without a word") from None
                if error is not None:
                    raise error
                flat = [torch.from_numpy(b[:n].copy()) for b in self.slots[slot]]
                if sent < chunks and not stopped:  # the slot is free for a chunk still to run
                    ours.send(slot)
                    sent += 1
                it = iter(flat)
                after = [{k: next(it) for k in keys} for keys in self.names]
                if n:
                    for p, a in zip(self.run.manual.params, after):
                        for k, w in p.items():
                            w.copy_(a[k][-1])
                done += n
                yield (None, after, None), n, KeyboardInterrupt() if stopped else None
                if stopped:
                    return
        finally:
            if froze:
                gc.unfreeze()
            torch.set_num_threads(threads)
            ours.close()
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):  # already gone and reaped
                pass

    def _child(self, conn):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            start = 0
            while start < self.steps:
                slot = conn.recv()
                (_, after, _), n, stop = self.run.steps(min(self.chunk, self.steps - start))
                bufs = iter(self.slots[slot])
                for p in after:
                    for w in p.values():
                        next(bufs)[:n] = w.numpy()
                conn.send((slot, n, stop is not None, None))
                if stop is not None:
                    break
                start += n
        except BaseException as e:  # noqa: BLE001 (raised in the parent)
            try:
                conn.send((None, 0, False, e))
            except Exception:  # noqa: BLE001 (an exception that does not pickle)
                conn.send((None, 0, False, RuntimeError(f"{type(e).__name__}: {e}")))
        finally:
            os._exit(0)
