"""Seed 002: the chain-rule toy ``z = (2w + 3b)(2b + 1)``, driven to z = 150.

Start w = 3, b = 4 (x = 18, y = 9, z = 162, so delta_z = 12). The manual side
gives dz/dw = 2y and dz/db = 3y + 2x (two paths) by hand; the reference gives
them by autograd on 0-dim tensors (reference/seed002.py). Both update with the
seed's rule ``p -= share * delta_z / factor`` (not gradient descent), the
reference through a torch.optim.Optimizer (TargetStep) fed autograd's gradients.

The seed's four printed runs are options (``bpcheck run chain-rule -o vary=wb -o recompute=True``):

=========  =========  ===========================================================
vary       recompute  the seed's run
=========  =========  ===========================================================
``b``      False      b alone, factor kept at 63: final b = 3.805937, 5 updates
``b``      True       b alone, factor recomputed: final b = 3.805937, 3 updates
``wb``     False      w and b, half of delta_z each, factors 18 and 63 kept
``wb``     True       w and b, factors recomputed
=========  =========  ===========================================================

A run stops at the first forward with |delta_z| < ``tol`` = 1e-5, which is
what the printed runs need: the first run goes on at delta_z = 0.000011 and the
third stops at 0.000005. (The seed's text says 1e-4; its printed runs did not
use that.) ``--print-trace`` prints the seed's table with 6 decimals.

``vary="w"`` is the text's first example (w alone, factor 18). z is linear in w,
so one step lands on 150 to rounding; the text's 150.0003 for that step (its
worked formulas are images) is not what the rule gives (tests/test_seed002.py).
"""
import torch

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.manual.seed002 import RUNS, ChainRule
from bpcheck.reference.seed002 import build_chain_rule

from . import register
from .options import FLAG, NUMBER, Option, one_of


def chain_rule(dtype, device, seed=None, w=3.0, b=4.0, target=150.0, vary="b", recompute=False, tol=1e-5):
    """vary: "b", "w" or "wb" (the parameters that move); recompute: recompute the factors each step."""
    if (vary, recompute) not in RUNS or not isinstance(recompute, bool):
        raise UsageError(f"chain-rule: vary must be 'b', 'w' or 'wb' and recompute True or False, "
                         f"got vary={vary!r} recompute={recompute!r}")
    for name, v in (("w", w), ("b", b), ("target", target), ("tol", tol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"chain-rule: {name} must be a number, got {v!r}")
    w_, b_, t = (torch.tensor(float(v), dtype=dtype, device=device) for v in (w, b, target))
    manual = ChainRule(w_.clone(), b_.clone(), vary, recompute)
    reference = build_chain_rule(w_, b_, vary, recompute)
    inputs = torch.zeros(0, dtype=dtype, device=device)  # the graph has no input
    return Setup(manual, reference, inputs, t, stop_when=lambda trace: abs(float(trace["loss"])) < tol)


register(Case("chain-rule", "seed 002: z = (2w+3b)(2b+1) to 150 by delta = delta_z/factor; -o vary=b|wb "
              "-o recompute=False|True", chain_rule, steps=100,
              options={"w": Option(NUMBER, "w at the start"), "b": Option(NUMBER, "b at the start"),
                       "target": Option(NUMBER, "the z to reach"),
                       "vary": Option(one_of("b", "w", "wb"), "the parameters that move"),
                       "recompute": Option(FLAG, "recompute the factors every step"),
                       "tol": Option(NUMBER, "stop at the first forward with |delta_z| below this")}))
