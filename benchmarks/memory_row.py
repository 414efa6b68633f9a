"""Peak memory of one wide row of target 7, in both modes, without the timings:

    python benchmarks/memory_row.py NET BATCH DTYPE STEPS     # e.g. 3 256 float32 20

NET indexes bench.WIDE. Prints the two sides' own peaks and each check's, and the check's
excess over the sides in units of MEMORY_BUDGET (the bound is 1), measured as bench.py
measures it (torch's profiler memory timeline)."""
import sys

import torch

from bench import WIDE, peak_memory
from bpcheck.cases import get_case
from bpcheck.compare import run
from bpcheck.compare.engines.manualrun import MEMORY_BUDGET


def main(net, batch, dtype, steps):
    sizes, acts = WIDE[net]
    opts = dict(sizes=sizes, activations=acts, batch=batch, loss="cross_entropy_probs")

    def setup():
        return get_case("mlp").build(dtype=dtype, device=torch.device("cpu"), seed=0, **opts)

    def manual():
        s = setup()
        with torch.no_grad():
            for _ in range(steps):
                s.manual.update(s.manual.step(s.x, s.t))

    def reference():
        s = setup()
        for _ in range(steps):
            s.reference.update(s.reference.step(s.x, s.t))

    m, r = peak_memory(manual, "cpu"), peak_memory(reference, "cpu")
    out = []
    for mode in ("lockstep", "free"):
        c = peak_memory(lambda: run("mlp", steps=steps, mode=mode, dtype=dtype, seed=0, **opts), "cpu")
        out.append(f"{mode} {c / 2**20:.0f} MiB, (check - sides) / budget {(c - m - r) / MEMORY_BUDGET:.3f}")
    print(f"{'-'.join(map(str, sizes))} {acts[0]}, batch {batch}, {str(dtype)[6:]}, {steps} steps: "
          f"manual {m / 2**20:.0f} MiB, reference {r / 2**20:.0f} MiB; " + "; ".join(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3]), int(sys.argv[4]))
