"""``--seeds N``: N independently initialised copies of a case, run as one.

Each copy is the case built with its own seed (``seed, seed+1, ..., seed+N-1``;
``seed`` defaults to 0). The manual MLP's formulas take a leading stack axis
(bpcheck.manual.xp), so the N copies' parameters are stacked and step together;
in lockstep the reference evaluates every (step, copy) state in one batch
(compare.replay). Each copy's rows carry its seed in the ``seed`` column; with
``per_seed="worst"`` the report keeps, per seed and quantity, only the row of the
largest difference over all steps (compare.frame.worst_per_seed).
"""
import torch

from bpcheck.manual import MLP

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Setup

PER_SEED = ("rows", "worst")


def check(seeds, per_seed, mode):
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds <= 0:
        raise UsageError(f"seeds must be a positive integer, got {seeds!r}")
    if per_seed not in PER_SEED:
        raise UsageError(f"unknown per_seed {per_seed!r} (known: {', '.join(PER_SEED)})")
    if mode != "lockstep":
        raise UsageError("--seeds runs in lockstep mode only")


def stacked_setup(case, build, check_sides, dtype, device, first, n, options):
    """The case built with seeds first..first+n-1, its manual copies stacked in one MLP."""
    seeds = list(range(first, first + n))
    setups = [build(case, dtype, device, s, options) for s in seeds]
    check_sides(setups[0].manual, setups[0].reference)
    if any(type(s.manual) is not MLP for s in setups):
        raise UsageError(f"case {case.name}: --seeds needs the built-in MLP manual side")
    if any(s.stop_below is not None or getattr(s, "stop_when", None) is not None for s in setups):
        raise UsageError(f"case {case.name}: --seeds cannot run a case that stops on its loss")
    manual = setups[0].manual
    manual.loss.lead = 1  # one loss per copy (manual.losses)
    manual.params = [{k: torch.stack([s.manual.params[i][k] for s in setups]) for k in layer}
                     for i, layer in enumerate(manual.params)]
    x, t = setups[0].x, setups[0].t
    if any(not (torch.equal(s.x, x) and torch.equal(s.t, t)) for s in setups):
        x, t = torch.stack([s.x for s in setups]), torch.stack([s.t for s in setups])
    return Setup(manual, setups[0].reference, x, t), seeds
