"""The ``rnn`` case: an Elman RNN with a linear readout, trained through time.

Task: at every time step, predict the sign of the running sum of the inputs so
far (+1 or -1), which needs the memory the recurrence carries.
"""
import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.manual import make_optimizer
from bpcheck.manual.rnn import Elman
from bpcheck.reference.rnn import build_elman

from . import register
from .options import X, LR, POSITIVE, Option, one_of
from bpcheck.manual.optim import OPTIONS as OPTIMIZERS
from .common import as_tensor, expect_shape


def running_sum_sign(rng, batch, length):
    """x (B, T, 1) ~ N(0, 1); t (B, T, 1) = +1 where sum(x_1..x_t) > 0, else -1."""
    x = rng.standard_normal((batch, length, 1))
    return x, np.where(np.cumsum(x, axis=1) > 0, 1.0, -1.0)


def rnn(dtype, device, seed=None, batch=16, length=8, hidden=8, optimizer="sgd", lr=0.03, x=None, t=None,
        **opt_kw):
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_ih + b_hh), y_t = h_t W_hy + b_y, MSE over every
    (sample, time) against the running sum's sign; SGD lr 0.03. Weights U(-1, 1)/sqrt(hidden)
    (nn.RNN's own init rule), data and weights from numpy's RandomState(seed) (default 0).
    x (B, T, in) and t (B, T, out) may be given."""
    for name, v in (("batch", batch), ("length", length), ("hidden", hidden)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.RandomState(0 if seed is None else seed)
    if x is None:
        x, t_made = running_sum_sign(rng, batch, length)
        t = t_made if t is None else t
    elif t is None:
        raise UsageError("give t (B, T, out) with x")
    x, t = as_tensor(x, "x", dtype, device), as_tensor(t, "t", dtype, device)
    if x.dim() != 3 or t.dim() != 3:
        raise UsageError(f"x {tuple(x.shape)} and t {tuple(t.shape)} must be 3-D: (batch, time, features)")
    expect_shape(t, (x.shape[0], x.shape[1], t.shape[2]), "t")
    n_in, n_out = x.shape[2], t.shape[2]
    u = lambda *shape: (2 * rng.random_sample(shape) - 1) / np.sqrt(hidden)  # noqa: E731
    W_xh, W_hh, b_ih, b_hh = u(n_in, hidden), u(hidden, hidden), u(hidden), u(hidden)
    W_hy, b_y = u(hidden, n_out), u(n_out)
    ws = [as_tensor(a, n, dtype, device) for a, n in
          ((W_xh, "W_xh"), (W_hh, "W_hh"), (b_ih, "b_ih"), (b_hh, "b_hh"), (W_hy, "W_hy"), (b_y, "b_y"))]
    try:
        manual = Elman(*[w.clone() for w in ws], loss="mse", optimizer=make_optimizer(optimizer, lr, **opt_kw))
        reference = build_elman(*ws, loss="mse", optimizer=optimizer, lr=lr, **opt_kw)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    return Setup(manual, reference, x, t)


register(Case("rnn", "Elman RNN (tanh) + linear readout, BPTT per time step, on the running sum's sign", rnn,
              steps=300, options={
                  "batch": Option(POSITIVE, "sequences per batch"), "length": Option(POSITIVE, "time steps"),
                  "hidden": Option(POSITIVE, "hidden units"),
                  "optimizer": Option(one_of(*OPTIMIZERS), "the optimizer; its own options are options too"),
                  "lr": LR, "x": Option(X.kind, "inputs (batch, time, in); None: the running-sum task's"),
                  "t": Option(X.kind, "targets (batch, time, out); give them with x")}))
