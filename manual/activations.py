"""Activations with their derivatives written next to them.

``delta(error, a, z)`` is formula 1 of seed 000: ``delta = f'(z) * error``.
Where the seeds do so, f' is taken from the output ``a`` (sigmoid: ``a*(1-a)``).
An activation with ``from_output = True`` needs only ``a``: the MLP then keeps no
``z`` (one buffer less per layer on wide layers) and passes ``z=None``.
Functions come from ``xp(z)`` (torch, or numpy for tiny CPU runs: manual/xp.py).
"""
from .xp import xp


class Sigmoid:
    from_output = True

    def f(self, z):
        return xp(z).sigmoid(z)

    def delta(self, error, a, z):
        delta = 1 - a  # delta = a(1-a) * error, built in one buffer (wide layers: no temporaries)
        delta *= a
        delta *= error
        return delta


class ReLU:
    from_output = True

    def f(self, z):
        return xp(z).relu(z)

    def delta(self, error, a, z):
        # delta = 1[z > 0] * error, read as 1[a > 0] (a = relu(z) > 0 exactly when z > 0);
        # at z == 0 the derivative is taken as 0, as torch does
        return xp(error).where(a > 0, error, 0)


class Tanh:
    from_output = True

    def f(self, z):
        return xp(z).tanh(z)

    def delta(self, error, a, z):
        delta = 1 - a * a  # delta = (1 - a^2) * error
        delta *= error
        return delta


class Identity:
    from_output = True

    def f(self, z):
        return z

    def delta(self, error, a, z):
        return error  # delta = error


class Softmax:
    """Softmax over the last axis. It pairs with cross-entropy only: the loss then
    gives delta directly as (p - y)/B (see losses.CrossEntropy.softmax_delta)."""

    from_output = True

    def f(self, z):
        return xp(z).softmax(z, dim=-1)

    def delta(self, error, a, z):
        raise ValueError("softmax pairs with cross_entropy only")


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "relu": ReLU,
    "tanh": Tanh,
    "identity": Identity,
    "softmax": Softmax,
}
