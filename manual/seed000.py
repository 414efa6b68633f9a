"""Seed 000's two code examples as written, where they depart from backprop.

Signs follow bpcheck (error = dL/d output); the seed's ``error = t - oz`` with
``w += lr * dw`` is the same update negated twice (see bpcheck.manual).

Example 1 (numpy; ReLU hidden, sigmoid output, no biases):

- It prints ``L = sum((t - oz)^2)`` (SSE) but sends back ``error = t - oz``,
  which is the derivative of HALF that sum: every gradient is half of dL/dw
  (``SSEAsPrinted``).
- ``delta_h[h < 0] = 0`` (``h`` is the pre-activation ``hy``; the code never
  defines ``h``) keeps delta_h where hy == 0, where torch's ReLU backward
  gives 0 (``ReLUMaskAsWritten``).

Example 2 (torch tensors without autograd; sigmoid layers with biases):

- ``b1 += d_hidn.sum() * lr`` sums the hidden delta over the batch AND the
  hidden units, and adds that one number to every hidden bias; backprop's
  db1 is the sum over the batch, per unit (``SummedBiasMLP``). ``b2`` gets the
  same treatment, which is right only because the output has one unit.
"""
import torch

from .activations import ReLU
from .losses import SSE
from .mlp import MLP
from .optim import SGD


class SSEAsPrinted(SSE):
    """L = sum((y - t)^2), as example 1 prints it; its error is the code's, half of dL/dy."""

    def error(self, y, t):
        return y - t  # the code's error (t - oz, negated): dL/dy / 2, not dL/dy = 2(y - t)


class ReLUMaskAsWritten(ReLU):
    def delta(self, error, a, z):
        # delta_h = error_h, zeroed where hy < 0: kept where hy == 0 (torch: 0 there)
        return torch.where(z < 0, torch.zeros((), dtype=error.dtype, device=error.device), error)


class Example1AsWritten(MLP):
    """Example 1's network with its code's error and ReLU mask. ``loss`` is the loss the
    report differentiates: "sse" (what the code prints) or "half_sse" (what its error
    differentiates; that leaves the ReLU mask as the only departure)."""

    def __init__(self, w1, w2, lr, loss="sse"):
        super().__init__([w1, w2], None, ("relu", "sigmoid"), "half_sse", SGD(lr))
        self.acts[0] = ReLUMaskAsWritten()
        if loss == "sse":
            self.loss = SSEAsPrinted()


class SummedBiasMLP(MLP):
    """Example 2's bias update: db = delta summed over the batch and the units, one number for all units."""

    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if "grad_bias" in q:
            q["grad_bias"] = delta.sum().expand(q["grad_bias"].shape).clone()  # d_hidn.sum(): batch AND units
        return q
