"""cProfile of one wide check: ``python benchmarks/profile_wide.py [yardstick|torch] [steps]``.

The 784-1024-1024-10 ReLU/softmax mlp, batch 64, float32, lockstep: a 2-step warm-up, one
timed run, then the profile of a third (the 35 largest cumulative entries)."""
import cProfile
import pstats
import sys
import time

import torch

from bpcheck.compare import run

OPTS = dict(sizes=(784, 1024, 1024, 10), activations=("relu", "relu", "softmax"), batch=64,
            loss="cross_entropy_probs", dtype=torch.float32, seed=0)

if __name__ == "__main__":
    tol = sys.argv[1] if len(sys.argv) > 1 else "yardstick"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    run("mlp", steps=2, tolerance=tol, **OPTS)
    t = time.perf_counter()
    run("mlp", steps=steps, tolerance=tol, **OPTS)
    print(f"wall {time.perf_counter() - t:.2f} s for {steps} steps, rule {tol}")
    prof = cProfile.Profile()
    prof.runcall(run, "mlp", steps=steps, tolerance=tol, **OPTS)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
