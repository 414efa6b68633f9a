"""Seed 000's two code examples as written: each departs from backprop in its own way.

- ``relu-sigmoid-as-written`` (example 1) carries both of its code's departures:
  the loss it prints is SSE but its ``error = t - oz`` differentiates half of
  it (every delta and gradient is half of autograd's: first failure step 1,
  layer 2, delta, max_rel_diff 0.5); and its ReLU mask ``delta_h[h < 0] = 0``
  keeps delta_h where the pre-activation is exactly 0. The second shows only
  where a pre-activation is exactly 0, so the default weights are
  relu-sigmoid's with w1[2, 0] = 0: the input (0, 0, 1) then gives hidden unit
  0 a zero pre-activation. It hides behind the factor 2 unless
  ``-o loss=half_sse`` removes that: the first failure is then step 1, layer 1,
  delta at index (2,0).
- ``sigmoid-bias-as-written`` (example 2): ``b1 += d_hidn.sum() * lr`` adds the
  hidden delta summed over the batch AND the units to every hidden bias; the
  first failure is step 1, layer 1, grad_bias. Its other differences from
  bpcheck (the sigmoid as ``1/(1 + exp(-z))``, ``+=`` with ``error = y - output``)
  are rounding or sign conventions, not departures, and are left out.

The correct cases are ``relu-sigmoid`` and ``sigmoid-bias`` (cases/mlp.py); these
take the same options and defaults, except as said.
"""
import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case
from bpcheck.manual.seed000 import Example1AsWritten, SummedBiasMLP

from . import register
from .mlp import SMALL
from .options import BIASES, LR, Option, one_of
from .mlp import TRASK_X, mlp_setup, uniform_weights

XOR_T = np.array([[0.0], [1.0], [1.0], [0.0]])  # relu-sigmoid's and sigmoid-bias's default target


def relu_sigmoid_as_written(dtype, device, seed=None, x=None, t=None, weights=None, hidden=4, lr=0.5, loss="sse"):
    """Example 1's code as written: SSE printed but half of it differentiated, and a ReLU
    mask that keeps pre-activations equal to 0. ``loss``: "sse" (the printed L, default)
    or "half_sse" (the one the code differentiates; only the mask departure is left)."""
    if loss not in ("sse", "half_sse"):
        raise UsageError(f"relu-sigmoid-as-written: loss must be 'sse' or 'half_sse', got {loss!r}")
    x = TRASK_X if x is None else x
    t = XOR_T if t is None else t
    if weights is None:
        weights = uniform_weights(0 if seed is None else seed, [np.shape(x)[1], hidden, np.shape(t)[1]])
        weights[0][2, 0] = 0.0  # input (0, 0, 1) -> hidden unit 0 has pre-activation exactly 0
    setup = mlp_setup(x, t, weights, None, ["relu", "sigmoid"], loss, "sgd", lr, dtype=dtype, device=device)
    w1, w2 = (p["weight"] for p in setup.manual.params)
    setup.manual = Example1AsWritten(w1, w2, lr, loss)
    return setup


def sigmoid_bias_as_written(dtype, device, seed=None, x=None, t=None, weights=None, biases=None, hidden=4):
    """Example 2's code as written: every bias gets its layer's delta summed over the batch
    and the units (one number per layer), instead of per unit over the batch."""
    x = TRASK_X if x is None else x
    t = XOR_T if t is None else t
    sizes = [np.shape(x)[1], hidden, np.shape(t)[1]]
    weights = uniform_weights(0 if seed is None else seed, sizes) if weights is None else weights
    biases = [np.zeros(n) for n in sizes[1:]] if biases is None else biases
    setup = mlp_setup(x, t, weights, biases, ["sigmoid", "sigmoid"], "half_sse", "sgd", 0.1, dtype=dtype, device=device)
    m = setup.manual
    setup.manual = SummedBiasMLP([p["weight"] for p in m.params], [p["bias"] for p in m.params],
                                 ("sigmoid", "sigmoid"), "half_sse", m.optimizer)
    return setup


register(Case("relu-sigmoid-as-written", "seed 000 ex. 1 as written: prints SSE, differentiates half of it; ReLU "
              "mask keeps z == 0", relu_sigmoid_as_written, steps=500, as_written=True,
              options={**SMALL, "lr": LR, "loss": Option(one_of("sse", "half_sse"), "sse (the printed L) or half_sse "
                                                          "(the one the code differentiates)")}))
register(Case("sigmoid-bias-as-written", "seed 000 ex. 2 as written: b1 += d_hidn.sum() * lr, one sum over batch "
              "and units", sigmoid_bias_as_written, steps=500, as_written=True,
              options={**SMALL, "biases": BIASES}))
