"""Convolution written as seed 000's three formulas, 1-D and 2-D, with stride,
padding and several channels; max-pooling and flatten; and ``ConvNet``, the
protocol object for seed 000's conv figure and for a small CNN.

A convolution layer computes what torch's Conv1d/Conv2d compute, a
cross-correlation:

    z[b, o, i] = sum_c sum_j xp[b, c, i*s + j] * K[o, c, j] + bias[o]

with ``xp`` the input zero-padded by p on every side, ``K`` of shape
(C_out, C_in, *k) -- torch's own layout, so reference/layout.py leaves conv
kernels as they are -- and ``i``, ``j`` running over every spatial axis. Backward:

    delta      = f'(z) * error                         (formula 1, done by the caller)
    db         = delta summed over batch and positions
    dK         = xp correlated with D                  (formula 3: input with delta)
    error_prev = D, zero-padded by k-1, correlated with K flipped   (formula 2: full
                 correlation with the flipped kernel)

where ``D`` is delta *dilated* by the stride: s-1 zeros between neighbouring
deltas, which puts each delta at the input position its window started from.
Everything is torch tensor ops, no autograd, so it runs on CPU and CUDA.
"""
import torch
import torch.nn.functional as F

from .activations import ACTIVATIONS, Softmax
from .losses import LOSSES
from .optim import SGD


def _tuple(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def pad(x, before, after):
    """Zero-pad the spatial axes of x (B, C, *S): before[d] zeros in front of axis d, after[d] behind."""
    widths = []
    for a, b in zip(reversed(before), reversed(after)):  # F.pad lists the last axis first
        widths += [a, b]
    return F.pad(x, widths)


def crop(x, start, size):
    """x[:, :, start[0]:start[0]+size[0], ...] over the spatial axes."""
    return x[(slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(start, size))]


def correlate(x, K, stride=1):
    """Valid cross-correlation: x (B, C, *S), K (O, C, *k) -> (B, O, *So), So = (S - k)//stride + 1.

    Each output position is one patch of x times the kernel: im2col, then one matmul."""
    nd = K.dim() - 2
    stride = _tuple(stride, nd)
    cols = x
    for d in range(nd):
        cols = cols.unfold(2 + d, K.shape[2 + d], stride[d])  # (B, C, *So, *k) once every axis is unfolded
    So = cols.shape[2:2 + nd]
    cols = cols.movedim(1, 1 + nd).reshape(x.shape[0], *So, -1)  # (B, *So, C*prod(k))
    z = cols @ K.reshape(K.shape[0], -1).T  # (B, *So, C*prod(k)) @ (C*prod(k), O) -> (B, *So, O)
    return z.movedim(-1, 1)  # (B, O, *So)


class Conv:
    """One convolution layer (1-D or 2-D from the kernel's rank); forward keeps what backward needs.

    ``flip`` and ``dilate`` are methods so that a test can swap them on one object
    and watch the harness name the formula it broke."""

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, K, b):
        nd = K.dim() - 2
        self.s, self.p, self.k = _tuple(self.stride, nd), _tuple(self.padding, nd), tuple(K.shape[2:])
        self.S, self.K = tuple(x.shape[2:]), K
        self.xp = pad(x, self.p, self.p)  # (B, C, *Sp), Sp = S + 2p
        z = correlate(self.xp, K, self.s)  # z = corr(xp, K): (B, C, *Sp), (O, C, *k) -> (B, O, *So)
        return z + b.reshape(-1, *([1] * nd))  # + bias[o] at every position

    def dilate(self, delta):
        """s-1 zeros between neighbouring deltas: (B, O, *So) -> (B, O, *Sd), Sd = (So - 1)*s + 1."""
        Sd = [(n - 1) * s + 1 for n, s in zip(delta.shape[2:], self.s)]
        D = delta.new_zeros(*delta.shape[:2], *Sd)
        D[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.s)] = delta
        return D

    def flip(self, K):
        return K.flip(tuple(range(2, K.dim())))  # K[o, c, k-1-j]: every spatial axis reversed

    def backward(self, delta):
        """delta = dL/dz (B, O, *So) -> error_prev = dL/dx (B, C, *S), dK (O, C, *k), db (O,)."""
        nd = delta.dim() - 2
        D = self.dilate(delta)  # (B, O, *Sd): each delta where its window starts in xp
        db = delta.sum((0,) + tuple(range(2, 2 + nd)))  # db = sum of delta over batch and positions
        # dK = corr(xp, D), batch contracted: (C, B, *Sp), (O, B, *Sd) -> (C, O, *(Sp - Sd + 1))
        dK = correlate(self.xp.transpose(0, 1), D.transpose(0, 1))
        dK = crop(dK, [0] * nd, self.k).transpose(0, 1)  # (O, C, *k); offsets past k are no kernel weights
        # error_prev = corr(D padded by k-1, flip(K)), channels swapped (the full correlation):
        # (B, O, *(Sd + 2k - 2)), (C, O, *k) -> (B, C, *(Sd + k - 1))
        full = correlate(pad(D, [k - 1 for k in self.k], [k - 1 for k in self.k]), self.flip(self.K).transpose(0, 1))
        Sp = self.xp.shape[2:]
        full = pad(full, [0] * nd, [a - n for a, n in zip(Sp, full.shape[2:])])  # inputs no window reached: 0
        error_prev = crop(full, self.p, self.S)  # drop the padding: (B, C, *S)
        return error_prev, dK, db


class MaxPool:
    """Non-overlapping max-pooling (window = stride = k) over 1 or 2 spatial axes, as
    nn.MaxPool1d/2d(k): trailing rows that fill no window are dropped; ties go to the
    first maximum in the window, as torch picks them."""

    def __init__(self, k):
        self.k = k

    def forward(self, a):
        nd = a.dim() - 2
        self.shape = a.shape
        win = a
        for d in range(nd):
            win = win.unfold(2 + d, self.k, self.k)  # (B, C, *Sq, k, ..., k)
        self.Sq = win.shape[2:2 + nd]
        win = win.reshape(*a.shape[:2], *self.Sq, -1)  # (B, C, *Sq, k^nd)
        self.arg = win.argmax(-1)  # first maximum
        return win.gather(-1, self.arg.unsqueeze(-1)).squeeze(-1)  # (B, C, *Sq)

    def backward(self, error):
        """error = dL/d(pooled) (B, C, *Sq) -> dL/d(input): each error goes to its window's maximum, 0 elsewhere."""
        nd = error.dim() - 2
        win = F.one_hot(self.arg, self.k ** nd).to(error.dtype) * error.unsqueeze(-1)  # (B, C, *Sq, k^nd)
        win = win.reshape(*error.shape, *([self.k] * nd))  # (B, C, *Sq, k, ..., k)
        perm = [0, 1] + [i for d in range(nd) for i in (2 + d, 2 + nd + d)]  # interleave (Sq_d, k_d)
        e = win.permute(perm).reshape(*error.shape[:2], *[n * self.k for n in self.Sq])
        return pad(e, [0] * nd, [n - q * self.k for n, q in zip(self.shape[2:], self.Sq)])


class Probe:
    """L = sum(g * y) for a fixed g: its error dL/dy is exactly g, so a given delta
    (seed 000's figure: delta_y = (-0.1, 0.2)) can be fed through the runner."""

    def value(self, y, g):
        return (g * y).sum()

    def error(self, y, g):
        return g.clone()  # dL/dy = g


class ConvNet:
    """conv -> act -> [max-pool] -> flatten -> [linear -> softmax + cross-entropy].

    Without a readout (``W`` None) the net is the conv layer and its activation
    under ``loss`` (a name from manual.losses or an object such as Probe).
    Parameters: layer 1 ``{"weight": K (O, C, *k), "bias": (O,)}``, layer 2
    ``{"weight": W (F, out), "bias": (out,)}`` in the seeds' ``x @ W`` layout.
    It follows bpcheck's protocol: ``params``, ``step(x, t)``, ``update(trace)``.
    """

    def __init__(self, K, b, W=None, c=None, stride=1, padding=0, pool=None, act="relu",
                 loss="cross_entropy_probs", optimizer=None):
        self.params = [{"weight": K, "bias": b}] + ([] if W is None else [{"weight": W, "bias": c}])
        self.conv, self.act = Conv(stride, padding), ACTIVATIONS[act]()
        self.pool = MaxPool(pool) if pool else None
        self.loss = LOSSES[loss]() if isinstance(loss, str) else loss
        self.optimizer = optimizer if optimizer is not None else SGD(1.0)
        if W is not None and not hasattr(self.loss, "softmax_delta"):
            raise ValueError("the readout is linear -> softmax and pairs with cross_entropy_probs only")

    def forward(self, x):
        conv = self.params[0]
        self.z = self.conv.forward(x, conv["weight"], conv["bias"])  # (B, O, *So)
        self.a = self.act.f(self.z)
        m = self.pool.forward(self.a) if self.pool else self.a  # (B, O, *Sq)
        if len(self.params) == 1:
            return m
        self.m_shape = m.shape
        self.f = m.reshape(m.shape[0], -1)  # flatten: (B, F), row-major as nn.Flatten
        lin = self.params[1]
        self.y = torch.softmax(self.f @ lin["weight"] + lin["bias"], dim=-1)  # (B, F) @ (F, out) -> (B, out)
        return self.y

    def step(self, x, t):
        y = self.forward(x)
        layers = []
        if len(self.params) == 2:
            layers.append(self.readout_backward(self.loss.softmax_delta(y, t)))  # delta = (p - t)/B
            error = layers[0]["error_prev"]  # dL/d(flattened pooled activation)
        else:
            error = self.loss.error(y, t)  # dL/dy
        layers.insert(0, self.layer_backward(1, error))
        return {"loss": self.loss.value(y, t), "output": y, "layers": layers}

    def layer_backward(self, layer, error):
        """Layer ``layer``'s backward from ``error`` = dL/d(its output), on the cache of
        the last ``step``'s forward: ``step`` calls it for the conv layer, the
        own-or-inherited diagnosis (compare.origin) for either layer with the
        reference's error. Layer 2, the readout, takes dL/dy through the softmax
        Jacobian; layer 1 takes dL/d(its output as the readout reads it, flattened)."""
        if layer == 2:
            return self.readout_backward(Softmax().delta(error, self.y, None))  # delta = p (error - sum(error p))
        if len(self.params) == 2:
            error = error.reshape(self.m_shape)  # un-flatten: (B, F) -> (B, O, *Sq)
            error = self.pool.backward(error) if self.pool else error  # (B, O, *So)
        delta = self.act.delta(error, self.a, self.z)  # delta = f'(z) * error
        error_prev, dK, db = self.conv.backward(delta)
        return {"delta": delta, "error_prev": error_prev, "grad_weight": dK, "grad_bias": db}

    def readout_backward(self, delta):
        """The readout's formulas 3 and 2 (and its bias gradient) from its delta."""
        W = self.params[1]["weight"]
        dW = self.f.T @ delta  # (F, B) @ (B, out) -> (F, out)
        error_prev = delta @ W.T  # (B, out) @ (out, F) -> (B, F)
        db = delta.sum(0)  # db = sum of delta over the batch
        return {"delta": delta, "error_prev": error_prev, "grad_weight": dW, "grad_bias": db}

    def update(self, trace):
        grads = [{n: g[f"grad_{n}"] for n in p} for p, g in zip(self.params, trace["layers"])]
        self.optimizer.step(self.params, grads)

    def state(self):
        return self.optimizer.state()
