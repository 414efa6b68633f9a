"""The one place that converts between the manual layout and torch.nn's.

The manual side computes ``x @ W`` with W of shape (in, out), as the seeds do.
nn.Linear stores (out, in) and computes ``x @ W.T``. Every other parameter is
stored the same way on both sides unless listed here.
"""
from torch import nn

# (module type, parameter name) pairs whose module layout is the transpose of the manual one.
_TRANSPOSED = {
    (nn.Linear, "weight"),
}


def _transposed(module, name):
    return any(isinstance(module, kind) and name == pname for kind, pname in _TRANSPOSED)


def to_manual(module, name, tensor):
    """A tensor shaped like ``module``'s parameter ``name`` -> the manual layout."""
    return tensor.transpose(0, 1) if _transposed(module, name) else tensor


def to_module(module, name, tensor):
    """A manual-layout tensor -> the layout of ``module``'s parameter ``name``."""
    return tensor.transpose(0, 1) if _transposed(module, name) else tensor
