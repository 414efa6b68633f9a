"""A custom torch.autograd.Function's backward, validated against autograd.

``SigmoidLinear`` fuses ``y = sigmoid(x @ W.T + b)`` and writes its backward by hand.
The manual side is a network of modules that call it: autograd's engine runs, but
every derivative through those layers is the hand-written one. The reference is
the same network written with plain torch ops, which autograd differentiates itself.
Both are nn.Modules, so bpcheck wraps both the same way and compares, per layer and
step: delta (dL/d layer output, here after the sigmoid), error_prev (dL/d layer
input), grad_weight, grad_bias and the weights after each update. The modules keep
nn.Linear's (out, in) weight layout on both sides, so no conversion is involved.

Run: python examples/custom_function.py   (tests/test_examples.py runs it, and breaks it)
"""
import math

import torch
from torch import nn

from bpcheck.testing import assert_backprop_close


class SigmoidLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        y = torch.sigmoid(x @ weight.T + bias)  # (B, in) @ (in, out) -> (B, out)
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, error):  # error = dL/dy
        x, weight, y = ctx.saved_tensors
        delta = y * (1 - y) * error  # delta = sigma'(z) * error, from the output y
        error_prev = delta @ weight  # (B, out) @ (out, in) -> (B, in)
        dW = delta.T @ x  # (out, B) @ (B, in) -> (out, in), nn.Linear's layout
        db = delta.sum(0)  # bias gradient: delta summed over the batch
        return error_prev, dW, db


class FusedLayer(nn.Module):
    """One sigmoid layer whose backward is SigmoidLinear's."""

    def __init__(self, n_in, n_out):
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))

    def forward(self, x):
        return SigmoidLinear.apply(x, self.weight, self.bias)


class PlainLayer(FusedLayer):
    """The same layer in plain torch ops: autograd derives its backward."""

    def forward(self, x):
        return torch.sigmoid(x @ self.weight.T + self.bias)


def check(fused_layer=FusedLayer, sizes=(5, 8, 3), steps=10, **kw):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, sizes[0], generator=g), torch.rand(16, sizes[-1], generator=g)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    manual = nn.Sequential(*[fused_layer(a, b) for a, b in pairs])
    reference = nn.Sequential(*[PlainLayer(a, b) for a, b in pairs])
    kw.setdefault("dtype", torch.float64)
    return assert_backprop_close(manual, reference, x, t, loss="mse", optimizer=0.5, steps=steps,
                                 name="sigmoid-linear-function", **kw)


if __name__ == "__main__":
    report = check()
    print(f"SigmoidLinear.backward matches autograd: {len(report)} rows, "
          f"largest difference {report['max_abs_diff'].max():.2e}")
