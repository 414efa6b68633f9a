"""The array namespace the manual formulas call: ``xp(a)`` is torch for a tensor and a
small numpy twin for a numpy array.

The formulas of this package are written once, with operators (``@``, ``*``, ``.mT``,
``-=``) and the few functions below. The runner normally gives them torch tensors;
for tiny CPU cases it gives them numpy views of the very same tensors
(``bpcheck.compare.engines.replay``), because on 4x3 arrays torch's per-operation dispatch
costs 2-3 times numpy's and the manual loop is then the whole cost of a run
(benchmarks/README.md measures it). The numpy twin defines only the primitives numpy
lacks or names differently; it holds no formula.

The formulas are also written for a leading stack axis (``--seeds N`` stacks N
copies): the batch is axis -2, ``.mT`` transposes the last two axes, and a loss
reduces over the last two axes.
"""
import numpy as np
import torch


class NumpyTwin:
    """torch's names for the numpy functions the manual formulas use."""

    where, exp, tanh, log, sqrt, numel = np.where, np.exp, np.tanh, np.log, np.sqrt, np.size

    @staticmethod
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))  # exp overflows to inf for z < -709: 1/inf = 0, as torch gives

    @staticmethod
    def relu(z):
        return np.maximum(z, 0)

    @staticmethod
    def log_softmax(z, dim=-1):
        s = z - z.max(axis=dim, keepdims=True)  # shifted: exp never overflows
        return s - np.log(np.exp(s).sum(axis=dim, keepdims=True))

    @staticmethod
    def softmax(z, dim=-1):
        e = np.exp(z - z.max(axis=dim, keepdims=True))
        return e / e.sum(axis=dim, keepdims=True)


def xp(a):
    """The namespace for ``a``: ``torch``, or ``NumpyTwin`` for a numpy array."""
    return NumpyTwin if isinstance(a, np.ndarray) else torch
