"""The convolution cases: ``conv`` (seed 000's conv figure) and ``cnn`` (a small CNN).

Arrays are in the manual layout: x (B, C, *S), kernel (O, C, *k) -- torch's own
conv layout --, the readout W (F, out).
"""
import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.manual import ACTIVATIONS, make_optimizer
from bpcheck.manual.conv import ConvNet, Probe
from bpcheck.reference.conv import build_convnet

from . import register
from .options import (ARRAY, LR, PER_AXIS, POSITIVE, POSITIVE_PER_AXIS, Option, one_of, or_none)
from bpcheck.manual.optim import OPTIONS as OPTIMIZERS
from .common import as_tensor, expect_shape

# Seed 000's figure: 3 input neurons, 2 conv neurons sharing one kernel of 2 weights.
# The seed gives only the deltas; the input, kernel and bias are bpcheck's choice.
FIGURE_X = np.array([[[1.0, 2.0, 3.0]]])  # (B=1, C=1, L=3): x0, x1, x2
FIGURE_K = np.array([[[0.5, -0.3]]])  # (O=1, C=1, k=2): w0, w1 (w0 != w1, so a missing flip shows)
FIGURE_B = np.array([0.2])
FIGURE_DELTA = np.array([[[-0.1, 0.2]]])  # the seed's delta_y0, delta_y1


def _positive(name, v, least=1):
    vs = v if isinstance(v, (tuple, list)) else (v,)
    if not vs or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < least for a in vs):
        raise UsageError(f"{name} must be {'a positive' if least else 'a non-negative'} integer (or a tuple of them), got {v!r}")
    return v


def _check_pool(pool):
    """None (no pooling) or one positive window size for every axis."""
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1):
        raise UsageError(f"pool must be a positive integer (the window size on every axis) or None, got {pool!r}")


def out_size(S, k, stride, padding):
    """Output sizes of a conv over sizes S: (S + 2p - k)//s + 1 per axis."""
    nd = len(S)
    s = stride if isinstance(stride, (tuple, list)) else (stride,) * nd
    p = padding if isinstance(padding, (tuple, list)) else (padding,) * nd
    if len(s) != nd or len(p) != nd:
        raise UsageError(f"stride {stride!r} and padding {padding!r} need one value per spatial axis ({nd})")
    So = tuple((n + 2 * q - kk) // ss + 1 for n, kk, ss, q in zip(S, k, s, p))
    if any(n < 1 for n in So):
        raise UsageError(f"a kernel of size {tuple(k)} does not fit input size {tuple(S)} with padding {padding}")
    return So


def conv_setup(x, K, b, t, W=None, c=None, stride=1, padding=0, pool=None, act="relu", loss="cross_entropy_probs",
               optimizer="sgd", lr=0.1, *, dtype, device, **opt_kw):
    """Both sides of a ConvNet from one set of arrays. Checks ranks and shapes first."""
    _positive("stride", stride)
    _positive("padding", padding, least=0)
    _check_pool(pool)
    x, K, b, t = (as_tensor(a, n, dtype, device) for a, n in ((x, "x"), (K, "weight"), (b, "bias"), (t, "t")))
    if K.dim() not in (3, 4) or x.dim() != K.dim():
        raise UsageError(f"x {tuple(x.shape)} and weight {tuple(K.shape)} must both be 3-D (conv1d) or 4-D (conv2d): "
                         "x (B, C, *S), weight (C_out, C_in, *k)")
    if K.shape[1] != x.shape[1]:
        raise UsageError(f"weight has {K.shape[1]} input channels, x has {x.shape[1]}")
    expect_shape(b, (K.shape[0],), "bias")
    So = out_size(x.shape[2:], K.shape[2:], stride, padding)
    if pool:
        So = tuple(n // pool for n in So)
        if any(n < 1 for n in So):
            raise UsageError(f"pool {pool} is larger than the conv output")
    if W is not None:
        W, c = as_tensor(W, "readout weight", dtype, device), as_tensor(c, "readout bias", dtype, device)
        n_feat = K.shape[0] * int(np.prod(So))
        expect_shape(W, (n_feat, W.shape[1]), "readout weight")
        expect_shape(c, (W.shape[1],), "readout bias")
        expect_shape(t, (x.shape[0], W.shape[1]), "t")
    else:
        expect_shape(t, (x.shape[0], K.shape[0], *So), "t")
    try:
        manual = ConvNet(K.clone(), b.clone(), None if W is None else W.clone(), None if c is None else c.clone(),
                         stride, padding, pool, act, Probe() if loss == "probe" else loss,
                         make_optimizer(optimizer, lr, **opt_kw))
        reference = build_convnet(K, b, W, c, stride, padding, pool, act, loss, optimizer, lr, **opt_kw)
    except (ValueError, KeyError) as e:
        raise UsageError(str(e)) from None
    return Setup(manual, reference, x, t)


def conv(dtype, device, seed=None, x=None, weight=None, bias=None, g=None, stride=1, padding=0, lr=0.1):
    """Seed 000's conv figure: x (1, 1, 3) through a kernel of 2 shared weights gives y (1, 1, 2);
    the loss L = sum(g * y) with g = (-0.1, 0.2) makes delta_y exactly the seed's given deltas,
    so the runner checks the derived delta_x (error_prev), dK and db against autograd. SGD, lr 0.1.
    Any x, weight, bias, g, stride and padding may be given (conv1d or conv2d by rank); the
    figure's numbers have no randomness, so ``seed`` is not used."""
    x = FIGURE_X if x is None else x
    weight = FIGURE_K if weight is None else weight
    bias = FIGURE_B if bias is None else bias
    g = FIGURE_DELTA if g is None else g
    return conv_setup(x, weight, bias, g, stride=stride, padding=padding, act="identity", loss="probe",
                      lr=lr, dtype=dtype, device=device)


# Oriented bars on a size x size grid; class c draws pattern c.
def _bar(c, size, off):
    img = np.zeros((size, size))
    i = np.arange(size)
    if c == 0:
        img[off % size, :] = 1  # horizontal
    elif c == 1:
        img[:, off % size] = 1  # vertical
    elif c == 2:
        img[i, (i + off) % size] = 1  # diagonal
    else:
        img[i, (off - i) % size] = 1  # anti-diagonal
    return img


def bar_images(rng, batch, classes, in_channels, size, noise=0.2):
    """A small synthetic image set: each image is one oriented bar (its class) at a random
    offset, scaled by a random gain per channel, plus Gaussian noise. -> x (B, C, size, size),
    one-hot t (B, classes)."""
    if not 2 <= classes <= 4:
        raise UsageError(f"classes must be 2, 3 or 4 (one per bar orientation), got {classes!r}")
    labels = rng.randint(classes, size=batch)
    x = np.stack([
        np.stack([rng.uniform(0.5, 1.5) * _bar(c, size, rng.randint(size)) for _ in range(in_channels)])
        for c in labels
    ])
    x += noise * rng.standard_normal(x.shape)
    return x, np.eye(classes)[labels]


def cnn(dtype, device, seed=None, size=9, in_channels=2, channels=4, kernel=3, stride=2, padding=1, pool=2,
        classes=3, batch=12, optimizer="sgd", lr=0.5, act="relu", x=None, t=None, **opt_kw):
    """conv2d -> relu -> max-pool -> flatten -> linear -> softmax + cross-entropy on bar images.

    Defaults: 12 images of 2 x 9 x 9, a 3 x 3 kernel to 4 channels with stride 2 and padding 1
    (5 x 5 maps), 2 x 2 max-pooling (2 x 2, the last row and column dropped as torch does),
    16 features, 3 classes; SGD lr 0.5. Kernels U(-1, 1)/sqrt(fan_in), biases U(-0.1, 0.1),
    images and weights from numpy's RandomState(seed) (default 0)."""
    for name, v in (("size", size), ("in_channels", in_channels), ("channels", channels), ("kernel", kernel),
                    ("batch", batch)):
        _positive(name, v)
    _check_pool(pool)
    rng = np.random.RandomState(0 if seed is None else seed)
    if x is None:
        x, t_made = bar_images(rng, batch, classes, in_channels, size)
        t = t_made if t is None else t
    elif t is None:
        raise UsageError("give t (one-hot, (B, classes)) with x")
    x = np.asarray(x) if not hasattr(x, "shape") else x
    if x.ndim not in (3, 4):
        raise UsageError(f"x has shape {tuple(x.shape)}; the cnn needs (B, C, L) or (B, C, H, W)")
    k = (kernel,) * (x.ndim - 2) if np.isscalar(kernel) else tuple(kernel)
    C = x.shape[1]
    K = (2 * rng.random_sample((channels, C, *k)) - 1) / np.sqrt(C * np.prod(k))
    b = 0.2 * rng.random_sample(channels) - 0.1
    So = out_size(x.shape[2:], k, stride, padding)
    n_feat = channels * int(np.prod([n // pool for n in So] if pool else So))
    n_out = np.shape(t)[1]
    W = (2 * rng.random_sample((n_feat, n_out)) - 1) / np.sqrt(max(n_feat, 1))
    c = 0.2 * rng.random_sample(n_out) - 0.1
    return conv_setup(x, K, b, t, W, c, stride, padding, pool, act, "cross_entropy_probs", optimizer, lr,
                      dtype=dtype, device=device, **opt_kw)


STRIDE = Option(POSITIVE_PER_AXIS, "the conv's stride")
PADDING = Option(PER_AXIS, "zeros added on each side of every spatial axis")
register(Case("conv", "seed 000 ex. 3: a kernel of 2 shared weights over 3 inputs; given delta_y = (-0.1, 0.2), "
                      "derive delta_x0..2, dK and db", conv, steps=1, options={
                          "x": Option(ARRAY, "input (B, C, L) or (B, C, H, W); None: the figure's x0, x1, x2 = 1, 2, 3"),
                          "weight": Option(ARRAY, "kernel (C_out, C_in, *k); None: the figure's w0, w1 = 0.5, -0.3"),
                          "bias": Option(ARRAY, "bias (C_out,); None: 0.2"),
                          "g": Option(ARRAY, "dL/dy, the given deltas; None: the seed's (-0.1, 0.2)"),
                          "stride": STRIDE, "padding": PADDING, "lr": LR}))
register(Case("cnn", "conv2d (stride 2, padding 1, 2 -> 4 channels) -> relu -> max-pool -> linear -> softmax "
                     "+ cross-entropy on synthetic bar images", cnn, steps=100, options={
                         "size": Option(POSITIVE, "image side"), "in_channels": Option(POSITIVE, "input channels"),
                         "channels": Option(POSITIVE, "conv output channels"),
                         "kernel": Option(POSITIVE_PER_AXIS, "kernel side"), "stride": STRIDE, "padding": PADDING,
                         "pool": Option(or_none(POSITIVE), "max-pool window on every axis; None: no pooling"),
                         "classes": Option(POSITIVE, "classes, 2 to 4 (one per bar orientation)"),
                         "batch": Option(POSITIVE, "images per batch"),
                         "optimizer": Option(one_of(*OPTIMIZERS), "the optimizer; its own options are options too"),
                         "lr": LR, "act": Option(one_of(*ACTIVATIONS), "the conv's activation"),
                         "x": Option(ARRAY, "images (B, C, H, W) or (B, C, L); None: bar images"),
                         "t": Option(ARRAY, "one-hot targets (B, classes); give them with x")}))
