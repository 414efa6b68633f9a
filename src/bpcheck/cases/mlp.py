"""The MLP seed systems: trask (seed 004), relu-sigmoid and sigmoid-bias (seed 000),
and mlp (seed 001's general L-layer network).

Every case takes the user's own data, weights and seed through ``build``'s
keyword arguments; the seeds' values are only the defaults. ``x``, ``t``,
``weights`` and ``biases`` are arrays in the manual layout (W is (in, out)).
"""
import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.manual import MLP, ACTIVATIONS, LOSSES, make_optimizer
from bpcheck.manual.optim import OPTIONS as OPTIMIZERS
from bpcheck.reference import build_mlp

from . import register
from .options import BIASES, FLAG, HIDDEN, LR, POSITIVE, SIZES, T, WEIGHTS, X, Option, one_of, tuple_of
from .common import as_tensor, expect_shape

TRASK_X = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=float)  # seed 004: 4 customers x 3 answers
TRASK_Y = np.array([[1], [1], [0], [0]], dtype=float)


def trask_numpy_loop(steps, seed=1):
    """Seed 004's bare numpy loop as its text writes it: error = y - l2,
    ``syn += l.T @ delta``, no learning rate. The sign-convention test compares the
    trask case's weights with it, and the benchmark times the harness against it."""
    rng = np.random.RandomState(seed)
    syn0 = 2 * rng.random_sample((3, 4)) - 1
    syn1 = 2 * rng.random_sample((4, 1)) - 1
    for _ in range(steps):
        l1 = 1 / (1 + np.exp(-(TRASK_X @ syn0)))  # (4, 3) @ (3, 4) -> (4, 4)
        l2 = 1 / (1 + np.exp(-(l1 @ syn1)))  # (4, 4) @ (4, 1) -> (4, 1)
        l2_delta = (TRASK_Y - l2) * (l2 * (1 - l2))  # the seed's delta = error * l2(1 - l2)
        l1_delta = (l2_delta @ syn1.T) * (l1 * (1 - l1))  # (4, 1) @ (1, 4) -> (4, 4)
        syn1 += l1.T @ l2_delta  # (4, 4) @ (4, 1) -> (4, 1)
        syn0 += TRASK_X.T @ l1_delta  # (3, 4) @ (4, 4) -> (3, 4)
    return syn0, syn1


def uniform_weights(seed, sizes):
    """Weights ``2*U[0,1) - 1`` drawn in layer order from numpy's RandomState(seed),
    the same stream as seed 004's ``np.random.seed(seed); 2*np.random.random(shape) - 1``."""
    rng = np.random.RandomState(seed)
    return [2 * rng.random_sample((a, b)) - 1 for a, b in zip(sizes[:-1], sizes[1:])]


def mlp_setup(x, t, weights, biases, activations, loss, optimizer="sgd", lr=1.0, *, dtype, device, **opt_kw):
    """Both sides of an MLP from one set of arrays. Checks shapes and dtypes first."""
    if len(activations) != len(weights):
        raise UsageError(f"{len(weights)} weight matrices but {len(activations)} activations")
    for a in activations:
        if a not in ACTIVATIONS:
            raise UsageError(f"unknown activation {a!r} (known: {', '.join(ACTIVATIONS)})")
    if loss not in LOSSES:
        raise UsageError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    x, t = as_tensor(x, "x", dtype, device), as_tensor(t, "t", dtype, device)
    Ws = [as_tensor(W, f"weights[{i}]", dtype, device) for i, W in enumerate(weights)]
    bs = None if biases is None else [as_tensor(b, f"biases[{i}]", dtype, device) for i, b in enumerate(biases)]
    if x.ndim != 2 or any(W.ndim != 2 for W in Ws):
        raise UsageError("x and every weight must be 2-D: x (batch, in), W (in, out)")
    n_in = x.shape[1]
    for i, W in enumerate(Ws):
        expect_shape(W, (n_in, W.shape[1]), f"weights[{i}]")
        if bs is not None:
            expect_shape(bs[i], (W.shape[1],), f"biases[{i}]")
        n_in = W.shape[1]
    expect_shape(t, (x.shape[0], n_in), "t")
    try:
        manual = MLP([W.clone() for W in Ws], None if bs is None else [b.clone() for b in bs],
                     activations, loss, make_optimizer(optimizer, lr, **opt_kw))
        reference = build_mlp(Ws, bs, activations, loss, optimizer, lr, **opt_kw)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Setup(manual, reference, x, t)


def trask(dtype, device, seed=None, x=None, t=None, weights=None, hidden=4):
    """Seed 004: X 4x3, y as a column, sigmoid layers without bias, half-SSE, ``syn += l.T @ delta``
    (SGD with lr 1). syn0 (3, hidden) and syn1 (hidden, 1) are ``2*U[0,1)-1`` from numpy seed 1."""
    x = TRASK_X if x is None else x
    t = TRASK_Y if t is None else t
    sizes = [np.shape(x)[1], hidden, np.shape(t)[1]]
    weights = uniform_weights(1 if seed is None else seed, sizes) if weights is None else weights
    return mlp_setup(x, t, weights, None, ["sigmoid", "sigmoid"], "half_sse", "sgd", 1.0, dtype=dtype, device=device)


def relu_sigmoid(dtype, device, seed=None, x=None, t=None, weights=None, hidden=4, lr=0.5):
    """Seed 000, example 1: ``hz = relu(x @ w1)``, ``oz = sigmoid(hz @ w2)``, no bias.

    The seed's text calls the loss SSE, ``L = sum((t - oz)^2)``, but its code's
    ``error = t - oz`` is the gradient of *half* that sum: the text and code
    disagree by a factor 2. This case uses the loss the code differentiates,
    half-SSE. The data are seed 004's X with an XOR-like target (the seed gives
    none); weights ``2*U-1`` from numpy seed 0, lr 0.5 (the seed leaves it unset).
    """
    x = TRASK_X if x is None else x
    t = np.array([[0.0], [1.0], [1.0], [0.0]]) if t is None else t
    sizes = [np.shape(x)[1], hidden, np.shape(t)[1]]
    weights = uniform_weights(0 if seed is None else seed, sizes) if weights is None else weights
    return mlp_setup(x, t, weights, None, ["relu", "sigmoid"], "half_sse", "sgd", lr, dtype=dtype, device=device)


def sigmoid_bias(dtype, device, seed=None, x=None, t=None, weights=None, biases=None, hidden=4):
    """Seed 000, example 2: sigmoid hidden and output layers with biases, lr 0.1,
    ``error = y - output`` (half-SSE). Biases get delta summed over the batch, per unit.
    Data as relu-sigmoid; weights ``2*U-1`` and zero biases from numpy seed 0."""
    x = TRASK_X if x is None else x
    t = np.array([[0.0], [1.0], [1.0], [0.0]]) if t is None else t
    sizes = [np.shape(x)[1], hidden, np.shape(t)[1]]
    weights = uniform_weights(0 if seed is None else seed, sizes) if weights is None else weights
    biases = [np.zeros(n) for n in sizes[1:]] if biases is None else biases
    return mlp_setup(x, t, weights, biases, ["sigmoid", "sigmoid"], "half_sse", "sgd", 0.1, dtype=dtype, device=device)


def targets_for(loss, last_activation, rng, batch, n_out):
    """Targets that suit the loss: one-hot for cross-entropy, {0,1} for BCE, else in [0, 1)."""
    if loss == "cross_entropy_probs":
        return np.eye(n_out)[rng.randint(n_out, size=batch)]
    if loss == "bce":
        return rng.randint(2, size=(batch, n_out)).astype(float)
    return rng.random_sample((batch, n_out))


MLP_DEFAULT_ACTIVATIONS = ("tanh", "relu", "softmax")


def mlp(dtype, device, seed=None, sizes=(4, 16, 8, 3), activations=MLP_DEFAULT_ACTIVATIONS,
        loss="cross_entropy_probs", optimizer="sgd", lr=0.1, batch=8, bias=True, x=None, t=None,
        weights=None, biases=None, **opt_kw):
    """Seed 001's general L-layer network. Every argument is an option. Weights are
    ``U(-1, 1)/sqrt(fan_in)``, biases ``U(-0.1, 0.1)``, inputs N(0, 1), all from
    numpy's RandomState(seed) (default 0)."""
    rng = np.random.RandomState(0 if seed is None else seed)
    sizes = list(sizes)
    if weights is None and len(activations) != len(sizes) - 1:
        said = "the default " if tuple(activations) == MLP_DEFAULT_ACTIVATIONS else ""
        example = tuple(["relu"] * (len(sizes) - 2) + ["softmax"])
        raise UsageError(f"case mlp: sizes {tuple(sizes)} make {len(sizes) - 1} layers but {said}activations "
                         f"{tuple(activations)} name {len(activations)}; give one per layer, "
                         f"e.g. activations={example} (-o \"activations={example}\")")
    if weights is None:
        weights = [(2 * rng.random_sample((a, b)) - 1) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    if biases is None and bias:
        biases = [0.2 * rng.random_sample(b) - 0.1 for b in sizes[1:]]
    x = rng.standard_normal((batch, sizes[0])) if x is None else x
    t = targets_for(loss, activations[-1], rng, batch, sizes[-1]) if t is None else t
    return mlp_setup(x, t, weights, biases, list(activations), loss, optimizer, lr, dtype=dtype, device=device, **opt_kw)


SMALL = {"x": X, "t": T, "weights": WEIGHTS, "hidden": HIDDEN}  # trask's options; relu-sigmoid's add lr
MLP_OPTIONS = {
    "sizes": Option(SIZES, "units per layer, input first"),
    "activations": Option(tuple_of(*ACTIVATIONS), "one activation per layer (len(sizes) - 1 of them)"),
    "loss": Option(one_of(*LOSSES), "the loss"),
    "optimizer": Option(one_of(*OPTIMIZERS), "the optimizer; its own options are options too (-o momentum=0.9)"),
    "lr": LR, "batch": Option(POSITIVE, "samples per batch"), "bias": Option(FLAG, "give every layer a bias"),
    "x": X, "t": T, "weights": WEIGHTS, "biases": BIASES,
}

register(Case("trask", "seed 004: Trask's 3-layer sigmoid network, syn += l.T @ delta, 60,000 steps", trask,
              steps=60000, options=SMALL))
register(Case("relu-sigmoid", "seed 000 ex. 1: ReLU hidden, sigmoid output, the half-SSE its code differentiates",
              relu_sigmoid, steps=500, options={**SMALL, "lr": LR}))
register(Case("sigmoid-bias", "seed 000 ex. 2: sigmoid hidden and output layers with biases, lr 0.1", sigmoid_bias,
              steps=500, options={**SMALL, "biases": BIASES}))
register(Case("mlp", "seed 001: general L-layer network; sizes, activations, loss, optimizer, batch are options", mlp,
              steps=200, options=MLP_OPTIONS))
