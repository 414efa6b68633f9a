"""Hand-derived backprop: tensor formulas only, no autograd.

Conventions, fixed once for all of bpcheck:

* Weight layout follows the seeds: a layer computes ``z = x @ W + b`` with
  ``W`` of shape (in, out).
* Signs: every quantity is the derivative of the loss, as autograd reports it.
  ``error = dL/d(output)``, ``delta = dL/dz``, ``dW = dL/dW``, and an update
  *subtracts*: ``W -= lr * dW``. The seeds write ``error = target - output`` and
  ``W += lr * X.T @ delta``; that is the same update with ``error`` and ``delta``
  negated. Negation is exact in IEEE arithmetic, so the two forms differ only by
  the rounding of how each computes its products (tests/test_conventions.py: 1e-13
  after 200 trask steps, against the seed's own numpy loop).
"""
from .activations import ACTIVATIONS
from .losses import LOSSES
from .optim import SGD, RMSprop, make_optimizer, from_torch
from .optimizers import FullSGD, Adam, AdamW, FullRMSprop, Adagrad
from .mlp import MLP

__all__ = ["ACTIVATIONS", "LOSSES", "SGD", "RMSprop", "make_optimizer", "from_torch",
           "FullSGD", "Adam", "AdamW", "FullRMSprop", "Adagrad", "MLP"]
