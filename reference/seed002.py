"""Seed 002's graph as an nn.Module on scalar parameters: dz/dw and dz/db come from autograd.

The whole graph is one layer whose output is z; the loss is ``z - target``
(the seed's delta_z), so autograd's parameter gradients are dz/dw and dz/db.
The update is the seed's, not gradient descent: ``TargetStep``.
"""
import torch
from torch import nn

from .side import Reference


class ChainRuleZ(nn.Module):
    """z = (2w + 3b)(2b + 1), w and b 0-dim parameters. No input: forward takes an empty placeholder."""

    def __init__(self, w, b):
        super().__init__()
        self.w = nn.Parameter(w.detach().clone())
        self.b = nn.Parameter(b.detach().clone())

    def forward(self, inputs):
        x = 2 * self.w + 3 * self.b
        y = 2 * self.b + 1
        return x * y


class TargetStep(torch.optim.Optimizer):
    """Seed 002's update with autograd's gradients: ``p -= share * delta_z / factor``.

    ``factor`` is dz/dp: p.grad at the first step when ``recompute`` is False (the
    chord method), the current p.grad when True (Newton's method for a single
    parameter). ``share`` is the part of delta_z charged to p (1, or 1/2 each for
    w and b). delta_z, the loss, comes from the closure, as torch's step(closure)
    convention has it; ``state[p]["factor"]`` keeps the factor."""

    def __init__(self, params, share=1.0, recompute=False):
        super().__init__(params, dict(share=share, recompute=recompute))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("TargetStep.step needs a closure that returns delta_z")
        with torch.enable_grad():
            delta_z = closure()
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                if group["recompute"] or "factor" not in st:
                    st["factor"] = p.grad.detach().clone()
                p.sub_(group["share"] * delta_z / st["factor"])
        return delta_z


class ChainRuleReference(Reference):
    """Reference for the chain-rule toy: the optimizer gets delta_z through its closure,
    and state() reports TargetStep's factors."""

    def update(self, trace):
        self.optimizer.step(lambda: trace["loss"])

    def state(self):
        st = [{n: self.optimizer.state[p]["factor"] for n, p in ps.items() if "factor" in self.optimizer.state.get(p, {})}
              for ps in self._params]
        return st if any(st) else None


def build_chain_rule(w, b, vary="b", recompute=False):
    module = ChainRuleZ(w, b)
    moving = [getattr(module, n) for n in vary]
    opt = TargetStep(moving, share=1.0 / len(vary), recompute=recompute)
    return ChainRuleReference(module, [module], lambda z, target: z - target, opt)
