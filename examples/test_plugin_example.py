"""A pytest file that uses bpcheck's plugin (installed with bpcheck: nothing to configure).

    pytest examples/test_plugin_example.py                      # cpu, float64 and float32
    pytest examples/test_plugin_example.py --bpcheck-report r.csv   # and one CSV of every check

The ``backprop`` fixture asserts that a manual backward matches autograd;
``@pytest.mark.bpcheck`` runs the test once per device and dtype (cuda is skipped
without a GPU). ``backprop.factory_kwargs`` builds tensors on the test's device and dtype.
"""
import pytest
import torch
from torch import nn


class TanhNet:
    """Two layers, ``h = tanh(x @ W1 + b1)``, ``y = h @ W2 + b2``, mean squared error."""

    def __init__(self, W1, b1, W2, b2):
        self.params = [{"weight": W1, "bias": b1}, {"weight": W2, "bias": b2}]

    def step(self, x, t):
        (W1, b1), (W2, b2) = ((p["weight"], p["bias"]) for p in self.params)
        h = torch.tanh(x @ W1 + b1)  # (B, 3) @ (3, 5) -> (B, 5)
        y = h @ W2 + b2  # (B, 5) @ (5, 2) -> (B, 2)
        delta2 = 2 * (y - t) / y.numel()  # delta = error = dL/dy for L = mean((y - t)^2); identity output
        error1 = delta2 @ W2.T  # error_prev = delta @ W.T: (B, 2) @ (2, 5) -> (B, 5)
        delta1 = (1 - h * h) * error1  # delta = tanh'(z) * error
        layers = [{"delta": delta1, "grad_weight": x.T @ delta1, "grad_bias": delta1.sum(0)},  # dW = X_prev.T @ delta
                  {"delta": delta2, "error_prev": error1, "grad_weight": h.T @ delta2, "grad_bias": delta2.sum(0)}]
        return {"loss": ((y - t) ** 2).mean(), "output": y, "layers": layers}

    def update(self, trace):
        for p, q in zip(self.params, trace["layers"]):
            for name, w in p.items():
                w -= 0.1 * q[f"grad_{name}"]  # W -= lr * dW


def reference():
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


@pytest.mark.bpcheck(devices=["cpu", "cuda"], dtypes=["float64", "float32"])
def test_tanh_net_matches_autograd(backprop):
    torch.manual_seed(0)
    kw = backprop.factory_kwargs
    net = TanhNet(torch.randn(3, 5, **kw), torch.zeros(5, **kw), torch.randn(5, 2, **kw), torch.zeros(2, **kw))
    report = backprop(net, reference(), torch.randn(16, 3), torch.randn(16, 2), loss="mse", optimizer=0.1, steps=5)
    assert set(report["layer"]) == {0, 1, 2}
