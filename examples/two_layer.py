"""Your own two-layer network checked against autograd: 19 lines of code, all of them yours.

Run `python examples/two_layer.py`: it exits silently when the hand backward matches
autograd over 20 SGD steps, and raises AssertionError naming the step, layer and
quantity when it does not. tests/test_examples.py runs it and counts its lines.
The network has no update(): bpcheck applies W -= lr * dW (lr 0.5) to both sides.
"""
import torch
from torch import nn
from bpcheck.testing import assert_backprop_close


class TwoLayer:  # z = x @ W with W of shape (in, out), sigmoid after each layer, L = 1/2 sum((y - t)^2)
    def __init__(self, W1, W2):
        self.W1, self.W2, self.params = W1, W2, [{"weight": W1}, {"weight": W2}]

    def step(self, x, t):
        h = torch.sigmoid(x @ self.W1)  # (B, 3) @ (3, 4) -> (B, 4)
        y = torch.sigmoid(h @ self.W2)  # (B, 4) @ (4, 1) -> (B, 1)
        delta2 = y * (1 - y) * (y - t)  # delta = f'(z) * error, with error = dL/dy = y - t
        error1 = delta2 @ self.W2.T  # error_prev = delta @ W.T: (B, 1) @ (1, 4) -> (B, 4)
        delta1 = h * (1 - h) * error1  # delta = f'(z) * error
        layers = [{"delta": delta1, "grad_weight": x.T @ delta1},  # dW = X_prev.T @ delta: (3, B) @ (B, 4)
                  {"delta": delta2, "error_prev": error1, "grad_weight": h.T @ delta2}]  # (4, B) @ (B, 1)
        return {"loss": 0.5 * ((y - t) ** 2).sum(), "output": y, "layers": layers}


x, t = torch.rand(8, 3, dtype=torch.float64), torch.rand(8, 1, dtype=torch.float64)
net = TwoLayer(torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
reference = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Sigmoid(), nn.Linear(4, 1, bias=False), nn.Sigmoid())
assert_backprop_close(net, reference, x, t, steps=20, optimizer=0.5)
