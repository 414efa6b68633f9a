"""The data a check feeds both sides: one fixed (inputs, targets), or one batch per step.

``Data(inputs, targets, steps)`` takes, in this order of precedence:

- a callable ``inputs``: ``inputs(step) -> (x, t)`` for step 1, 2, ... (``targets`` None);
- an iterable of ``(x, t)`` pairs, e.g. a ``torch.utils.data.DataLoader`` or a generator
  (``targets`` None): one pair per step, taken in turn;
- a list of ``(x, t)`` pairs (``targets`` None), or two lists of tensors or arrays,
  ``inputs[k]`` and ``targets[k]``: the batch of step k+1;
- anything else: one (inputs, targets), the same at every step.

Floating-point data is cast to the run's dtype and device; integer data (token ids,
class labels) is only moved, so embeddings and ``cross_entropy`` take it as torch does.
Booleans and complex numbers are refused. ``steps`` defaults to 1 for fixed data and to
the number of batches for sized per-step data; an iterator without a length needs it.
When per-step data runs out before ``steps``, the run ends there (``attrs["halted"]``).
"""

import numpy as np
import torch

from bpcheck.compare.core.errors import DataExhausted, UsageError


def as_data(a, name, dtype, device):
    """A tensor or array-like -> a tensor on ``device``: floating data in ``dtype``,
    integer data as it is (int64 for Python ints)."""
    if isinstance(a, torch.Tensor):
        t = a
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{name} cannot be read as an array ({e})") from None
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise UsageError(f"{name} holds {arr.dtype} values; bpcheck needs numbers")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_complex():
        raise UsageError(f"{name} has dtype {t.dtype}; bpcheck takes floating-point or integer data")
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype).clone()
    return t.to(device=device).clone()


def _tensorish(v):
    return isinstance(v, (torch.Tensor, np.ndarray))


class Data:
    def __init__(self, inputs, targets=None, steps=None):
        self.inputs, self.targets = inputs, targets
        self.pairs = isinstance(inputs, (list, tuple)) and len(inputs) > 0 and targets is None and all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_tensorish, v)) for v in inputs)
        self.per_step = callable(inputs) and not _tensorish(inputs) or self._iterable(inputs) or self.pairs or (
            isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(_tensorish(v) for v in inputs)
            and isinstance(targets, (list, tuple)))
        if self.per_step and (callable(inputs) or self._iterable(inputs)) and targets is not None:
            raise UsageError("with per-step data (a callable or an iterable of (x, t) batches) leave targets out")
        if not self.per_step and targets is None:
            raise UsageError("give targets, or inputs as per-step data: a callable step -> (x, t), "
                             "or an iterable of (x, t) batches such as a DataLoader")
        if isinstance(inputs, (list, tuple)) and self.per_step and not self.pairs and len(inputs) != len(targets):
            raise UsageError(f"inputs has {len(inputs)} batches, targets {len(targets)}")
        if steps is None:
            if not self.per_step or callable(inputs):
                steps = 1
            elif hasattr(inputs, "__len__"):
                steps = len(inputs)
            else:
                raise UsageError("give steps= for an iterator of batches without a length")
        self.steps = steps
        self._first = None

    @staticmethod
    def _iterable(v):
        return hasattr(v, "__iter__") and not isinstance(v, (list, tuple, str, bytes, dict)) and not _tensorish(v)

    def start(self, dtype, device):
        """Step 1's (x, t), converted; per-step data restarts here (an iterable is iterated anew)."""
        self.dtype, self.device = dtype, device
        if not self.per_step:
            self._fixed = (as_data(self.inputs, "inputs", dtype, device), as_data(self.targets, "targets", dtype, device))
            return self._fixed
        self._iter = None if callable(self.inputs) or isinstance(self.inputs, (list, tuple)) else iter(self.inputs)
        self._next_step = 1
        self._first = self._fetch(1)
        return self._first

    def _fetch(self, step):
        if callable(self.inputs) and not self._iterable(self.inputs):
            got = self.inputs(step)
        elif isinstance(self.inputs, (list, tuple)):
            if step > len(self.inputs):
                raise DataExhausted
            got = self.inputs[step - 1] if self.pairs else (self.inputs[step - 1], self.targets[step - 1])
        else:
            got = next(self._iter, None)
            if got is None:
                raise DataExhausted
        if not (isinstance(got, (list, tuple)) and len(got) == 2):
            raise UsageError(f"the batch for step {step} must be a pair (x, t), got {type(got).__name__}")
        return (as_data(got[0], f"inputs at step {step}", self.dtype, self.device),
                as_data(got[1], f"targets at step {step}", self.dtype, self.device))

    @property
    def batch(self):
        """``batch(step) -> (x, t)`` for the runner (Setup.batch), or None for fixed data."""
        if not self.per_step:
            return None

        def batch(step):
            if step == 1:
                return self._first
            return self._fetch(step)

        return batch


__all__ = ["Data", "as_data"]
