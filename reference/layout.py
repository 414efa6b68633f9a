"""The one place that converts between the manual layout and torch.nn's.

The manual side computes ``x @ W`` with W of shape (in, out), as the seeds do.
nn.Linear stores (out, in) and computes ``x @ W.T``. Every other parameter is
stored the same way on both sides unless listed here.

- nn.RNN: the manual Elman RNN computes ``x_t @ W_xh + h_{t-1} @ W_hh`` with W_xh
  (in, H) and W_hh (H, H); nn.RNN stores ``weight_ih_l0`` (H, in) and
  ``weight_hh_l0`` (H, H) and multiplies by their transposes: both transposed here.
  Its two biases are kept as two on the manual side (manual/rnn.py).
- nn.Conv1d/nn.Conv2d: the manual kernel is torch's own layout (C_out, C_in, *k),
  a cross-correlation kernel (not flipped), so nothing is converted.
"""
from torch import nn

# (module type, parameter name) pairs whose module layout is the transpose of the manual one.
_TRANSPOSED = {
    (nn.Linear, "weight"),
    (nn.RNN, "weight_ih_l0"),
    (nn.RNN, "weight_hh_l0"),
}


def _transposed(module, name):
    return any(isinstance(module, kind) and name == pname for kind, pname in _TRANSPOSED)


def to_manual(module, name, tensor):
    """A tensor shaped like ``module``'s parameter ``name`` -> the manual layout."""
    return tensor.transpose(0, 1) if _transposed(module, name) else tensor


def to_module(module, name, tensor):
    """A manual-layout tensor -> the layout of ``module``'s parameter ``name``."""
    return tensor.transpose(0, 1) if _transposed(module, name) else tensor


def _transpose(tensor):
    return tensor.transpose(0, 1)


def _same(tensor):
    return tensor


def default_view(module, name):
    """The view that shows ``module``'s parameter ``name`` in the manual layout (and, being
    a view, lets bpcheck write the manual's values through it): transpose or identity."""
    return _transpose if _transposed(module, name) else _same
