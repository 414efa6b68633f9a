"""Seed 003: the 2-2-1 sigmoid network with plain gradient steps and with RMSprop.

x = (0.35, 0.9), target ya = 0.5; w13=0.1, w23=0.8, w14=0.4, w24=0.6, w35=0.3,
w45=0.9; sigmoid hidden and output neurons, no biases; E = 1/2 (yp - ya)^2.
A run stops at the first forward with E < 1e-7, before that step's backward
and update (the seed's loop), so its last step is a forward only.

- ``sigmoid221-sgd``: ``w -= g`` (lr 1); reference torch.optim.SGD(lr=1).
- ``sigmoid221-rmsprop``: lr 0.1, beta 0.999, eps 0.01 outside the root;
  reference torch.optim.RMSprop(lr=0.1, alpha=0.999, eps=1e-2). Its square
  average is compared per step as quantity ``optimizer_state``.
- ``-as-written``: the seed's ``back()``, which updates w35 and w45 first and
  then computes the hidden-layer gradients with the updated w35, w45. This is
  the code whose printed runs the seed shows (SGD: 111 steps, step 2
  yp = 0.6820312027460466; RMSprop: 11 steps, step 2 yp = 0.6118790538896405);
  true backprop gives 0.6820185832642942 and 0.6111142613827681 at step 2
  (still 111 and 11 steps). The report's first failure is step 1, layer 2,
  ``error_prev``: the hidden layer's error was sent back through W2 after its
  update. To give the printed digits exactly, the -as-written optimizers also
  round in the seed's order (manual/seed003.py); that is an ulp from
  torch.optim's order, not a departure. The correct cases use bpcheck's
  optimizers, which round as torch.optim does, so that they agree with it in
  every dtype.

The seed's PyTorch version sets ``output.weight`` to the 1-D tensor [0.3, 0.9]
where nn.Linear(2, 1) declares (1, 2); F.linear then takes a dot product and
the output is 0-dim instead of (1,), with the same value and the same
gradients. That is harmless, so not a departure; the reference here keeps
nn.Linear's declared shape. Its tensors are float32 (torch's default); the
seed's printed runs are float64 Python floats, which the float64 cases match.
"""
import numpy as np

from bpcheck.compare.core.protocol import Case
from bpcheck.manual.optim import SGD, RMSprop
from bpcheck.manual.seed003 import Net221, Net221AsWritten, SeedRMSprop, SeedSGD

from . import register
from . import options as opt
from .mlp import mlp_setup

X = np.array([[0.35, 0.9]])  # (1, 2): y1, y2
T = np.array([[0.5]])  # ya
W1 = np.array([[0.1, 0.4], [0.8, 0.6]])  # [[w13, w14], [w23, w24]]
W2 = np.array([[0.3], [0.9]])  # [[w35], [w45]]
STOP = 1e-7  # stop at the first forward with E < 1e-7


def net221(net, optimizer, manual_opt, dtype, device, x, t, weights, stop_below, lr, **opt_kw):
    x = X if x is None else x
    t = T if t is None else t
    weights = [W1, W2] if weights is None else weights
    setup = mlp_setup(x, t, weights, None, ["sigmoid", "sigmoid"], "half_sse", optimizer, lr,
                      dtype=dtype, device=device, **opt_kw)
    W = [p["weight"] for p in setup.manual.params]  # checked and converted by mlp_setup
    setup.manual = net(W[0], W[1], manual_opt)
    setup.stop_below = stop_below
    return setup


def sgd(dtype, device, seed=None, x=None, t=None, weights=None, lr=1.0, stop_below=STOP):
    """Seed 003 with ``w -= lr * g`` (lr 1). ``weights`` is [W1 (2, 2), W2 (2, 1)] in the manual layout."""
    return net221(Net221, "sgd", SGD(lr), dtype, device, x, t, weights, stop_below, lr)


def rmsprop(dtype, device, seed=None, x=None, t=None, weights=None, lr=0.1, alpha=0.999, eps=0.01, stop_below=STOP):
    """Seed 003 with RMSprop (lr 0.1, alpha = the seed's beta 0.999, eps 0.01 outside the root)."""
    return net221(Net221, "rmsprop", RMSprop(lr, alpha, eps), dtype, device, x, t, weights, stop_below, lr,
                  alpha=alpha, eps=eps)


def sgd_as_written(dtype, device, seed=None, x=None, t=None, weights=None, lr=1.0, stop_below=STOP):
    """Seed 003's code as written, SGD: w35, w45 are updated before the hidden-layer
    gradients are computed, which then use the updated w35, w45 (true backprop uses
    the old ones). Reproduces the seed's printed SGD run digit for digit."""
    return net221(Net221AsWritten, "sgd", SeedSGD(lr), dtype, device, x, t, weights, stop_below, lr)


def rmsprop_as_written(dtype, device, seed=None, x=None, t=None, weights=None, lr=0.1, alpha=0.999, eps=0.01,
                       stop_below=STOP):
    """Seed 003's code as written, RMSprop: the same departure as sigmoid221-sgd-as-written
    (hidden-layer gradients through the updated w35, w45). Reproduces the seed's printed
    RMSprop run digit for digit."""
    return net221(Net221AsWritten, "rmsprop", SeedRMSprop(lr, alpha, eps), dtype, device, x, t, weights,
                  stop_below, lr, alpha=alpha, eps=eps)


SGD_OPTIONS = {"x": opt.X, "t": opt.T, "weights": opt.WEIGHTS, "lr": opt.LR,
               "stop_below": opt.Option(opt.or_none(opt.NUMBER), "stop at the first forward whose loss is below this")}
RMSPROP_OPTIONS = {**SGD_OPTIONS, "alpha": opt.Option(opt.NUMBER, "the running average's decay (the seed's beta)"),
                   "eps": opt.Option(opt.NUMBER, "added to the root of the running average")}

register(Case("sigmoid221-sgd", "seed 003: 2-2-1 sigmoid net, w -= g, until E < 1e-7 (111 steps)", sgd, steps=1000,
              options=SGD_OPTIONS))
register(Case("sigmoid221-rmsprop", "seed 003: 2-2-1 sigmoid net, RMSprop lr 0.1 beta 0.999 eps 0.01 (11 steps)",
              rmsprop, steps=1000, options=RMSPROP_OPTIONS))
register(Case("sigmoid221-sgd-as-written", "seed 003's back() as printed: hidden gradients use the updated w35, w45",
              sgd_as_written, steps=1000, as_written=True, options=SGD_OPTIONS))
register(Case("sigmoid221-rmsprop-as-written", "seed 003's back() as printed, RMSprop: hidden gradients use the "
              "updated w35, w45", rmsprop_as_written, steps=1000, as_written=True, options=RMSPROP_OPTIONS))
