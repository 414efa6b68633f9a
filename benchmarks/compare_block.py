"""python benchmarks/compare_block.py [T]: the comparison of one block of T steps of the
784-1024-1024-10 network's compared values (lists of per-step tensors, as
runner._steps collects them, random float32 values), the previous path (stack, then
the previous element test, kept here as it was, per pass) against compare.diff's
now, interleaved, best of 5 (issue 17; docs/benchmarks.md)."""
import os
import sys
import time

import torch

from bpcheck.compare.core import diff
from bpcheck.compare.core.diff import Reduce, compare_many

def old_element_test(m, r, rtol, atol):
    red = Reduce(None, m)
    m_ok, r_ok = red.sum(m * 0) == 0, red.sum(r * 0) == 0
    a = atol if isinstance(atol, (int, float)) else red.spread(atol.to(m.dtype))
    d = (m - r).abs_().nan_to_num_(nan=float("inf")); ar = r.abs()
    max_abs = red.max(d); idx = red.first(d == red.spread(max_abs))
    q = torch.div(d, ar).masked_fill_(~(ar > 0), 0.0); max_rel = red.max(q)
    allowed = ar.mul_(rtol).add_(a)
    margin = red.max(torch.div(d, allowed, out=q).masked_fill_(d == 0, 0.0))
    ok = (red.max(d.sub_(allowed)) <= 0) & m_ok & r_ok
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "index": idx, "margin": margin,
            "manual_norm": torch.sqrt(red.sum(m * m)), "reference_norm": torch.sqrt(red.sum(r * r)),
            "passed": ok, "m_finite": m_ok, "r_finite": r_ok}

def old_path(ms, rs, rtol, atol):
    out = []
    for m, r in zip(ms, rs):
        m, r = torch.stack(m), torch.stack(r)
        T = m.shape[0]; m2, r2 = m.reshape(T, -1), r.reshape(T, -1)
        per = max(1, diff.ROW_BUDGET // m2.shape[1])
        parts = [old_element_test(m2[s:s + per], r2[s:s + per], rtol, atol) for s in range(0, T, per)]
        out.append({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    return out

T = int(sys.argv[1]) if len(sys.argv) > 1 else 4
dt = torch.float32
shapes = [(784, 1024), (1024,), (1024, 1024), (1024,), (1024, 10), (10,), (64, 1024), (64, 1024), (64, 784), (64, 10)]
torch.manual_seed(0)
ms = [[torch.randn(s, dtype=dt) for _ in range(T)] for s in shapes]
rs = [[v + 1e-6 * torch.randn_like(v) for v in m] for m in ms]
ms, rs = ms * 2, rs * 2  # gradients and weights
best = {"old": 1e9, "new": 1e9}
for _ in range(5):
    for name, f in (("old", lambda: old_path(ms, rs, 1e-6, 1e-5)), ("new", lambda: compare_many(ms, rs, 1e-6, 1e-5))):
        t0 = time.perf_counter(); f(); best[name] = min(best[name], time.perf_counter() - t0)
print(f"block of {T} steps, {sum(v[0].numel() for v in ms)} compared elements a side a step, float32: "
      f"previous {best['old']:.3f} s, now {best['new']:.3f} s, ratio {best['new'] / best['old']:.2f}; load {os.getloadavg()}")
