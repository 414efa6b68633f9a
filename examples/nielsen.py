"""A Nielsen-style network, validated through bpcheck's protocol.

The network keeps the conventions of Michael Nielsen's book: weights of shape
(out, in), biases (out, 1), samples as column vectors, ``z = w @ a + b``, and a
``backprop`` that returns the gradients summed over the mini-batch, applied as
``w -= (eta / m) * nabla_w``. The cost is the book's quadratic cost per sample,
``1/2 ||a - y||^2``, summed over the batch (bpcheck's ``half_sse``); the book's
update is then SGD with learning rate ``eta / m``.

bpcheck's protocol wants the other layout (``x @ W``, W (in, out), samples as rows).
``NielsenSide`` converts in one place: it hands bpcheck transposed *views* of the
network's own tensors, so the network is checked as it is, not a copy of it.

Run: python examples/nielsen.py   (tests/test_examples.py runs it, and breaks it)
"""
import torch
from torch import nn

from bpcheck.testing import assert_backprop_close


def sigmoid_prime(z):
    s = torch.sigmoid(z)
    return s * (1 - s)  # sigma'(z) = sigma(z)(1 - sigma(z))


class Network:
    def __init__(self, sizes, dtype=torch.float64, device="cpu", seed=0):
        g = torch.Generator().manual_seed(seed)
        self.sizes = sizes
        self.weights = [torch.randn(n_out, n_in, generator=g, dtype=dtype).to(device)
                        for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        self.biases = [torch.randn(n_out, 1, generator=g, dtype=dtype).to(device) for n_out in sizes[1:]]

    def feedforward(self, a):
        for w, b in zip(self.weights, self.biases):
            a = torch.sigmoid(w @ a + b)  # (out, in) @ (in, m) -> (out, m)
        return a

    def cost_derivative(self, output, y):
        return output - y  # dC/da for C = 1/2 ||a - y||^2

    def backprop(self, x, y):
        """x (in, m), y (out, m): columns are samples. Returns nabla_b, nabla_w (summed over
        the m samples) and, per layer, delta = dC/dz (out, m) and error_prev = dC/da_prev (in, m)."""
        activation, activations, zs = x, [x], []
        for w, b in zip(self.weights, self.biases):
            z = w @ activation + b  # (out, in) @ (in, m) -> (out, m)
            zs.append(z)
            activation = torch.sigmoid(z)
            activations.append(activation)
        L = len(self.weights)
        nabla_b, nabla_w, deltas, errors_prev = [None] * L, [None] * L, [None] * L, [None] * L
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])  # BP1: delta = dC/da * sigma'(z)
        for l in range(L - 1, -1, -1):
            if l < L - 1:
                delta = errors_prev[l + 1] * sigmoid_prime(zs[l])  # BP2: delta = (w_next.T @ delta_next) * sigma'(z)
            deltas[l] = delta
            nabla_b[l] = delta.sum(1, keepdim=True)  # BP3: dC/db = delta, summed over samples
            nabla_w[l] = delta @ activations[l].T  # BP4: (out, m) @ (m, in) -> (out, in)
            errors_prev[l] = self.weights[l].T @ delta  # (in, out) @ (out, m) -> (in, m)
        return nabla_b, nabla_w, deltas, errors_prev

    def update_mini_batch(self, nabla_b, nabla_w, m, eta):
        for w, b, nw, nb in zip(self.weights, self.biases, nabla_w, nabla_b):
            w.sub_((eta / m) * nw)  # w -= eta/m * sum of per-sample gradients
            b.sub_((eta / m) * nb)


class NielsenSide:
    """The protocol on top of a Network: the one place where (out, in) and columns become
    bpcheck's (in, out) and rows. ``params`` are views, so bpcheck sees the network's own tensors."""

    def __init__(self, net, eta):
        self.net, self.eta = net, eta

    @property
    def params(self):
        return [{"weight": w.T, "bias": b[:, 0]} for w, b in zip(self.net.weights, self.net.biases)]

    def step(self, x, t):
        X, Y = x.T, t.T  # rows -> columns
        nabla_b, nabla_w, deltas, errors_prev = self.net.backprop(X, Y)
        out = self.net.feedforward(X)
        layers = [{"delta": d.T, "error_prev": e.T, "grad_weight": nw.T, "grad_bias": nb[:, 0]}
                  for d, e, nw, nb in zip(deltas, errors_prev, nabla_w, nabla_b)]
        return {"loss": 0.5 * ((out - Y) ** 2).sum(), "output": out.T, "layers": layers}

    def update(self, trace):
        g = trace["layers"]
        self.net.update_mini_batch([q["grad_bias"][:, None] for q in g], [q["grad_weight"].T for q in g],
                                   m=trace["output"].shape[0], eta=self.eta)


def check(net, eta=3.0, m=10, steps=5, **kw):
    """net against nn.Linear + nn.Sigmoid layers, SGD with lr eta/m, on a fixed random batch."""
    g = torch.Generator().manual_seed(1)
    dtype, device = net.weights[0].dtype, net.weights[0].device
    x = torch.rand(m, net.sizes[0], generator=g, dtype=dtype).to(device)
    t = torch.rand(m, net.sizes[-1], generator=g, dtype=dtype).to(device)
    mods = []
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:]):
        mods += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return assert_backprop_close(NielsenSide(net, eta), nn.Sequential(*mods), x, t, loss="half_sse",
                                 optimizer=eta / m, steps=steps, name="nielsen", **kw)


if __name__ == "__main__":
    report = check(Network([4, 6, 5, 3]))
    print(f"Nielsen-style network matches autograd: {len(report)} rows, "
          f"largest difference {report['max_abs_diff'].max():.2e}")
