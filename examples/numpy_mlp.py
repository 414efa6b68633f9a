"""A network written in numpy, trained on mini-batches from a DataLoader, checked by bpcheck.

``NumpyMLP`` is a 2-layer tanh MLP in plain numpy with its own SGD: nothing of torch.
The reference is ``nn.Sequential(nn.Linear, nn.Tanh, nn.Linear)``, whose sites are
its entries' names "0", "1", "2"; the manual side names its parameters and quantities
by those sites (nn.Linear's weight is shown as (in, out), the manual layout ``x @ W``).
The Tanh site has no parameters: its delta (dL/d tanh output) and error_prev
(dL/d pre-activation) are compared on their own, so a slip in tanh' is reported
at "1", not folded into a Linear.

bpcheck hands a numpy manual side numpy arrays (x and t of each batch) and reads its
arrays as tensors without a copy, so the manual's own in-place update is what the
report's parameter rows see. The data is a ``torch.utils.data.DataLoader``, one
batch per step, given as ``inputs`` with no ``targets``; the run has as many steps
as the loader has batches. Loss mse: dL/dy = 2 (y - t) / y.size.

Two ways to run the same check:
    python examples/numpy_mlp.py                                 (assert_backprop_close)
    bpcheck run examples/numpy_mlp.py:numpy_mlp                  (the case below)
tests/test_sites.py runs both, and breaks a formula.
"""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bpcheck

LR = 0.1


class NumpyMLP:
    def __init__(self, n_in, H, n_out, lr=LR, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        u = lambda n, *shape: (rng.uniform(-1, 1, shape) / np.sqrt(n)).astype(dtype)  # noqa: E731
        self.params = {"0": {"weight": u(n_in, n_in, H), "bias": u(n_in, H)},
                       "2": {"weight": u(H, H, n_out), "bias": u(H, n_out)}}
        self.lr = lr

    def step(self, x, t):
        (W1, b1), (W2, b2) = (self.params[site].values() for site in ("0", "2"))
        z = x @ W1 + b1  # (B, in) @ (in, H) -> (B, H)
        h = np.tanh(z)
        y = h @ W2 + b2  # (B, H) @ (H, out) -> (B, out)
        error = 2 * (y - t) / y.size  # dL/dy for mse
        dh = error @ W2.T  # (B, out) @ (out, H) -> (B, H)
        dz = dh * (1 - h ** 2)  # tanh'(z) = 1 - tanh(z)^2
        return {"loss": np.mean((y - t) ** 2), "output": y, "sites": {
            "0": {"delta": dz, "error_prev": dz @ W1.T,  # (B, H) @ (H, in) -> (B, in)
                  "grad_weight": x.T @ dz, "grad_bias": dz.sum(0)},  # (in, B) @ (B, H) -> (in, H)
            "1": {"delta": dh, "error_prev": dz},
            "2": {"delta": error, "error_prev": dh,
                  "grad_weight": h.T @ error, "grad_bias": error.sum(0)}}}  # (H, B) @ (B, out) -> (H, out)

    def update(self, trace):
        for site, params in self.params.items():
            for name, p in params.items():
                p -= self.lr * trace["sites"][site][f"grad_{name}"]  # W -= lr * dW, in place


def reference(n_in, H, n_out):
    return nn.Sequential(nn.Linear(n_in, H), nn.Tanh(), nn.Linear(H, n_out))


def loader(n=40, n_in=3, n_out=2, batch_size=8):
    """A regression set in shuffled mini-batches. bpcheck draws each batch once and hands
    the same (x, t) to both sides; the seeded generator makes reruns draw the same order."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    t = torch.sin(x @ torch.randn(n_in, n_out, generator=g, dtype=torch.float64))
    order = torch.Generator().manual_seed(4)
    return DataLoader(TensorDataset(x, t), batch_size=batch_size, shuffle=True, generator=order)


def build(dtype, device, manual_class=NumpyMLP, n_in=3, H=5, n_out=2):
    """assert_backprop_close's arguments, fresh for every run (bpcheck.case calls this)."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype  # the run's dtype, as numpy spells it
    return {"manual": manual_class(n_in, H, n_out, dtype=np_dtype), "reference": reference(n_in, H, n_out),
            "inputs": loader(n_in=n_in, n_out=n_out), "loss": "mse", "optimizer": LR}


numpy_mlp = bpcheck.case("numpy_mlp", build, steps=5, description="numpy 2-layer tanh MLP on DataLoader mini-batches")


def check(manual_class=NumpyMLP):
    return bpcheck.assert_backprop_close(**build(torch.float64, "cpu", manual_class), name="numpy_mlp")


if __name__ == "__main__":
    report = check()
    print(f"PASS: {report['step'].max()} mini-batches, {len(report)} rows, "
          f"largest difference {report['max_abs_diff'].max():.2e}")
