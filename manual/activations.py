"""Activations with their derivatives written next to them.

``delta(error, a, z)`` is formula 1 of seed 000: ``delta = f'(z) * error``.
Where the seeds do so, f' is taken from the output ``a`` (sigmoid: ``a*(1-a)``).
An activation whose class declares ``from_output = True`` needs only ``a``: the
built-in MLP then keeps no ``z`` (one buffer less per layer on wide layers) and
passes ``z=None``. A subclass does not inherit that: it may rewrite ``delta`` to read
``z`` (manual/mlp.py keeps z for it). ReLU keeps z: the trace reports it at the kink.
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
    kink = True  # f' jumps at z == 0: the trace reports z here (compare.kinks)
    from_output = False  # the MLP keeps z: the trace reports it at kinks

    def f(self, z):
        return xp(z).relu(z)

    def delta(self, error, a, z):
        # delta = 1[z > 0] * error; at z == 0 the derivative is taken as 0, as torch does
        return xp(error).where(z > 0, error, 0)


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
    """Softmax over the last axis. It pairs with cross-entropy only, and MLP.step then
    takes delta straight from the loss as (p - y)/B (losses.CrossEntropyProbs.softmax_delta).
    ``delta`` from an arbitrary upstream error is the softmax Jacobian's product; the
    own-or-inherited diagnosis (MLP.layer_backward) uses it."""

    from_output = True

    def f(self, z):
        return xp(z).softmax(z, dim=-1)

    def delta(self, error, a, z):
        return a * (error - (error * a).sum(-1, keepdim=True))  # delta_j = a_j (error_j - sum_k error_k a_k)


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "relu": ReLU,
    "tanh": Tanh,
    "identity": Identity,
    "softmax": Softmax,
}
