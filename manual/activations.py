"""Activations with their derivatives written next to them.

``delta(error, a, z)`` is formula 1 of seed 000: ``delta = f'(z) * error``.
Where the seeds do so, f' is taken from the output ``a`` (sigmoid: ``a*(1-a)``).
"""
import torch


class Sigmoid:
    def f(self, z):
        return torch.sigmoid(z)

    def delta(self, error, a, z):
        return a * (1 - a) * error  # delta = a(1-a) * error


class ReLU:
    kink = True  # f' jumps at z == 0: the trace reports z here (compare.kinks)

    def f(self, z):
        return torch.relu(z)

    def delta(self, error, a, z):
        # delta = 1[z > 0] * error; at z == 0 the derivative is taken as 0, as torch does
        return torch.where(z > 0, error, torch.zeros((), dtype=error.dtype, device=error.device))


class Tanh:
    def f(self, z):
        return torch.tanh(z)

    def delta(self, error, a, z):
        return (1 - a * a) * error  # delta = (1 - a^2) * error


class Identity:
    def f(self, z):
        return z

    def delta(self, error, a, z):
        return error  # delta = error


class Softmax:
    """Softmax over the last axis. It pairs with cross-entropy only, and MLP.step then
    takes delta straight from the loss as (p - y)/B (losses.CrossEntropy.softmax_delta).
    ``delta`` from an arbitrary upstream error is the softmax Jacobian's product; the
    own-or-inherited diagnosis (MLP.layer_backward) uses it."""

    def f(self, z):
        return torch.softmax(z, dim=-1)

    def delta(self, error, a, z):
        return a * (error - (error * a).sum(-1, keepdim=True))  # delta_j = a_j (error_j - sum_k error_k a_k)


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "relu": ReLU,
    "tanh": Tanh,
    "identity": Identity,
    "softmax": Softmax,
}
