"""Hand-derived backprop: tensor formulas only, no autograd.

Conventions, fixed once for all of bpcheck:

* Weight layout follows the seeds: a layer computes ``z = x @ W + b`` with
  ``W`` of shape (in, out).
* Signs: every quantity is the derivative of the loss, as autograd reports it.
  ``error = dL/d(output)``, ``delta = dL/dz``, ``dW = dL/dW``, and an update
  *subtracts*: ``W -= lr * dW``. The seeds write ``error = target - output`` and
  ``W += lr * X.T @ delta``; that is the same update with ``error`` and ``delta``
  negated, and negation is exact in IEEE arithmetic, so both forms give
  bit-identical weights (tests/test_conventions.py proves it on trask).
"""
from .activations import ACTIVATIONS
from .losses import LOSSES
from .optim import SGD, RMSprop, make_optimizer
from .mlp import MLP

__all__ = ["ACTIVATIONS", "LOSSES", "SGD", "RMSprop", "make_optimizer", "MLP"]
