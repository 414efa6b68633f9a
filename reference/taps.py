"""Taps: name an intermediate tensor of your reference's forward so bpcheck compares it.

    h = bpcheck.tap("bnvar", x.var(0, unbiased=True))   # inside forward

Outside a check ``tap`` returns its tensor unchanged and costs one global lookup.
During a reference step (``bpcheck.reference.Reference``) it records the tensor, and
autograd supplies dL/d(tensor): the report's site ``tap:bnvar``, quantities ``value``
(the tensor) and ``delta`` (its gradient). A name tapped several times in one forward
(inside a loop over time) gets time indices 1, 2, ... in call order.
"""
from contextlib import contextmanager

_recorder = None  # the recording callable of the reference step in progress, or None


def tap(name, tensor):
    """``tensor``, recorded under site ``tap:<name>`` when a bpcheck reference step runs."""
    if _recorder is not None:
        _recorder(name, tensor)
    return tensor


@contextmanager
def recording(record):
    """Route every ``tap`` call to ``record(name, tensor)`` for the duration."""
    global _recorder
    outer, _recorder = _recorder, record
    try:
        yield
    finally:
        _recorder = outer
