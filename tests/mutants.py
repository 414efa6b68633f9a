"""The mutation catalogue: plausible wrong manual formulas that bpcheck must catch.

Each mutant is injected the way a user's own code would reach the runner: through
the public protocol, as a subclass of the manual side's classes or a swapped
activation, loss or optimizer object. No file is edited. ``kill(mutant)`` runs
the shipped case with the mutant in place and reads the verdict off the report:
the first failing row (step, layer, quantity) must be where the mutant's formula
sits, and the own-or-inherited diagnosis is recorded beside it.

To add a mutant for another case, write one line:
``Mutant(name, case, patch, layer, quantity, options)``, with ``patch`` a function
of the built Setup.
"""
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from bpcheck.cases import get_case
from bpcheck.cases.mlp import uniform_weights
from bpcheck.compare import run
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual import MLP
from bpcheck.manual.activations import ReLU, Sigmoid, Tanh
from bpcheck.manual.losses import BCE, MSE, SSE, CrossEntropyProbs, HalfSSE
from bpcheck.manual.optim import SGD, RMSprop


@dataclass
class Mutant:
    name: str
    case: str
    patch: Callable  # patch(setup): put the mutant in place through the protocol
    layer: int  # where the first failing row must be
    quantity: str
    options: dict = field(default_factory=dict)  # options of the case's build
    steps: int = 3
    data: str = ""  # a label for crafted data, shown in the kill table


# ---- injection helpers: public attributes of the manual side -----------------------

def acts(cls, layers=None):
    """Swap the activation objects of ``layers`` (1-based; default: every layer of cls's base)."""
    def patch(setup):
        m = setup.manual
        for i, a in enumerate(m.acts, 1):
            if (layers is None and isinstance(a, cls.__mro__[1])) or (layers is not None and i in layers):
                m.acts[i - 1] = cls()
    return patch


def loss(cls):
    def patch(setup):
        setup.manual.loss = cls()
    return patch


def optimizer(cls):
    def patch(setup):
        old = setup.manual.optimizer
        new = cls.__new__(cls)
        new.__dict__.update(old.__dict__)
        setup.manual.optimizer = new
    return patch


def subclass(cls):
    """Make the manual MLP an instance of ``cls``, a subclass a user might write."""
    def patch(setup):
        setup.manual.__class__ = cls
    return patch


# ---- activations ----------------------------------------------------------------

class SigmoidNoDerivative(Sigmoid):
    def delta(self, error, a, z):
        return error  # missing a(1-a)


class SigmoidPrimeOfZ(Sigmoid):
    def delta(self, error, a, z):
        return z * (1 - z) * error  # the output form a(1-a) written with the pre-activation


class SigmoidPrimeOfA(Sigmoid):
    def delta(self, error, a, z):
        s = torch.sigmoid(a)
        return s * (1 - s) * error  # the pre-activation form s(z)(1-s(z)) applied to the output


class SigmoidWrongSign(Sigmoid):
    def delta(self, error, a, z):
        return -a * (1 - a) * error


class SigmoidSignSlip(Sigmoid):
    def f(self, z):
        return 1 / (1 + torch.exp(z))  # exp(z) for exp(-z)


class ReLUMaskInverted(ReLU):
    def delta(self, error, a, z):
        return torch.where(z < 0, error, torch.zeros_like(error))


class ReLUNoDerivative(ReLU):
    def delta(self, error, a, z):
        return error


class ReLUMaskAtZero(ReLU):
    def delta(self, error, a, z):
        return torch.where(z >= 0, error, torch.zeros_like(error))  # derivative 1 at z == 0


class TanhPrimeOfZ(Tanh):
    def delta(self, error, a, z):
        return (1 - z * z) * error


class TanhNotSquared(Tanh):
    def delta(self, error, a, z):
        return (1 - a) * error


# ---- losses -----------------------------------------------------------------------

class HalfSSEFactor2(HalfSSE):
    def error(self, y, t):
        return 2 * (y - t)  # the derivative of the full SSE, for the half SSE


class HalfSSEValueNoHalf(HalfSSE):
    def value(self, y, t):
        return ((y - t) ** 2).sum()


class SSENoFactor2(SSE):
    def error(self, y, t):
        return y - t


class MSESum(MSE):
    def error(self, y, t):
        return 2 * (y - t)  # no /N: the sum's derivative for the mean


class BCEFusedAsError(BCE):
    def error(self, y, t):
        return (y - t) / y.numel()  # sigmoid+BCE's delta used as dL/dy


class BCEMeanOverBatch(BCE):
    def error(self, y, t):
        return (y - t) / (y * (1 - y)) / y.shape[0]  # /B where the mean is over all N


class CEDeltaNoTarget(CrossEntropyProbs):
    def softmax_delta(self, p, t):
        return p / p.shape[0]  # p - t without the t


class CEDeltaSum(CrossEntropyProbs):
    def softmax_delta(self, p, t):
        return p - t  # no /B: the sum's delta for the mean loss


class CEValueSum(CrossEntropyProbs):
    def value(self, y, t):
        return -(t * torch.log(y)).sum()


# ---- optimizers ---------------------------------------------------------------------

class SGDWrongSign(SGD):
    def step(self, params, grads):
        for p, g in zip(params, grads):
            for name, w in p.items():
                w.add_(self.lr * g[name])  # the seeds' += with autograd's sign of dW


class SGDSkipsBias(SGD):
    def step(self, params, grads):
        for p, g in zip(params, grads):
            p["weight"].sub_(self.lr * g["weight"])


class RMSpropEpsInside(RMSprop):
    def step(self, params, grads):
        if self.square_avg is None:
            self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
        for p, g, s in zip(params, grads, self.square_avg):
            for name, w in p.items():
                s[name].mul_(self.alpha).addcmul_(g[name], g[name], value=1 - self.alpha)
                w.addcdiv_(g[name], (s[name] + self.eps).sqrt(), value=-self.lr)  # sqrt(s + eps)


class RMSpropNoSqrt(RMSprop):
    def step(self, params, grads):
        if self.square_avg is None:
            self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
        for p, g, s in zip(params, grads, self.square_avg):
            for name, w in p.items():
                s[name].mul_(self.alpha).addcmul_(g[name], g[name], value=1 - self.alpha)
                w.addcdiv_(g[name], s[name] + self.eps, value=-self.lr)  # s where sqrt(s) is meant


class RMSpropAlphaSwapped(RMSprop):
    def step(self, params, grads):
        if self.square_avg is None:
            self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
        for p, g, s in zip(params, grads, self.square_avg):
            for name, w in p.items():
                s[name].mul_(1 - self.alpha).addcmul_(g[name], g[name], value=self.alpha)
                w.addcdiv_(g[name], s[name].sqrt().add_(self.eps), value=-self.lr)


class RMSpropNotSquared(RMSprop):
    def step(self, params, grads):
        if self.square_avg is None:
            self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
        for p, g, s in zip(params, grads, self.square_avg):
            for name, w in p.items():
                s[name].mul_(self.alpha).add_(g[name].abs(), alpha=1 - self.alpha)  # |g| for g^2
                w.addcdiv_(g[name], s[name].sqrt().add_(self.eps), value=-self.lr)


# ---- the network's own formulas (MLP subclasses) ---------------------------------------

class ErrorPrevSkipsDerivative(MLP):
    def layer_backward(self, layer, error):
        q = super().layer_backward(layer, error)
        q["error_prev"] = error @ self.params[layer - 1]["weight"].T  # error where delta is meant
        return q


class DWFromOwnOutput(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        a = self.As[layer - 1]
        if a.shape == self.xs[layer - 1].shape:  # only where the shapes let it through
            q["grad_weight"] = a.T @ delta  # the layer's output for its input
        return q


class ErrorPrevTransposed(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        q["error_prev"] = self.params[layer - 1]["weight"] @ delta.T  # (in, B): operands in the wrong order
        return q


class DWFromPreActivation(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if layer > 1:
            q["grad_weight"] = self.zs[layer - 2].T @ delta  # z of the layer below for its a
        return q


class BiasSummedOverUnits(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if "grad_bias" in q:
            q["grad_bias"] = delta.sum(1)  # over the units, not over the batch
        return q


class BiasMeanOverBatch(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if "grad_bias" in q:
            q["grad_bias"] = delta.mean(0)
        return q


class BiasMissingInForward(MLP):
    def forward(self, x):
        saved = [p.pop("bias", None) for p in self.params]
        try:
            return super().forward(x)
        finally:
            for p, b in zip(self.params, saved):
                if b is not None:
                    p["bias"] = b


class MissingTransposeErrorPrev(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        W = self.params[layer - 1]["weight"]
        if W.shape[0] == W.shape[1]:  # only a square layer lets the slip through the shapes
            q["error_prev"] = delta @ W
        return q


class MissingTransposeDW(MLP):
    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        W = self.params[layer - 1]["weight"]
        if W.shape[0] == W.shape[1]:
            q["grad_weight"] = delta.T @ self.xs[layer - 1]
        return q


class UpdatedWeightInBackward(MLP):
    """Updates each layer as soon as its dW is known, then propagates with the new W."""

    def backprop(self, layer, delta):
        i, lr = layer - 1, self.optimizer.lr
        W = self.params[i]["weight"]
        q = {"delta": delta, "grad_weight": self.xs[i].T @ delta}
        W.sub_(lr * q["grad_weight"])
        q["error_prev"] = delta @ W.T  # the already-updated W
        return q

    def update(self, trace):
        pass  # done in the backward pass


class StaleWeightInBackward(MLP):
    """Propagates with the weights of the previous step (a cached copy not refreshed in time)."""

    def forward(self, x):
        cur = [p["weight"].clone() for p in self.params]
        self.W_stale = getattr(self, "W_now", cur)
        self.W_now = cur
        return super().forward(x)

    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        q["error_prev"] = delta @ self.W_stale[layer - 1].T
        return q


class HandsDownDelta(MLP):
    """Hands delta, not error_prev, to the layer below."""

    def step(self, x, t):
        y = self.forward(x)
        layers = [None] * len(self.params)
        error = self.loss.error(y, t)
        for i in reversed(range(len(self.params))):
            layers[i] = self.layer_backward(i + 1, error)
            error = layers[i]["delta"]  # should be layers[i]["error_prev"]
        return {"loss": self.loss.value(y, t), "output": y, "layers": layers}


# ---- crafted data: a hidden pre-activation exactly at ReLU's kink ----------------------

def relu_zero_weights():
    """relu-sigmoid's weights with hidden unit 0's column (0.5, 0.25, -0.5): on x = (1, 0, 1)
    its pre-activation is 0.5 - 0.5 = 0 exactly, in every dtype and summation order."""
    w1, w2 = uniform_weights(0, [3, 4, 1])
    w1[:, 0] = [0.5, 0.25, -0.5]
    return [w1, w2]


ZERO = dict(weights=relu_zero_weights())
SQUARE = dict(sizes=(4, 8, 8, 3))  # layer 2 is 8x8: a missing transpose keeps the shapes
BIAS_SQUARE = dict(sizes=(3, 4, 4), activations=("tanh", "softmax"), batch=4)  # batch == units: shapes agree
RMS = dict(optimizer="rmsprop", lr=0.01)
MSE_NET = dict(sizes=(4, 8, 2), activations=("tanh", "identity"), loss="mse")
SSE_NET = dict(sizes=(4, 8, 2), activations=("tanh", "identity"), loss="sse")
BCE_NET = dict(sizes=(4, 8, 3), activations=("tanh", "sigmoid"), loss="bce")

CATALOGUE = [
    # activation derivatives
    Mutant("sigmoid' missing", "trask", acts(SigmoidNoDerivative), 2, "delta"),
    Mutant("sigmoid' a(1-a) taken from z", "trask", acts(SigmoidPrimeOfZ), 2, "delta"),
    Mutant("sigmoid' s(z)(1-s(z)) taken from a", "trask", acts(SigmoidPrimeOfA), 2, "delta"),
    Mutant("delta wrong sign (layer 1)", "trask", acts(SigmoidWrongSign, layers=[1]), 1, "delta"),
    Mutant("sigmoid forward exp sign slip", "trask", acts(SigmoidSignSlip), 0, "output"),
    Mutant("relu mask inverted", "relu-sigmoid", acts(ReLUMaskInverted), 1, "delta"),
    Mutant("relu' missing", "relu-sigmoid", acts(ReLUNoDerivative), 1, "delta"),
    Mutant("relu mask 1 at z == 0", "relu-sigmoid", acts(ReLUMaskAtZero), 1, "delta", ZERO, data="z == 0"),
    Mutant("tanh' 1-z^2 taken from z", "mlp", acts(TanhPrimeOfZ), 1, "delta"),
    Mutant("tanh' 1-a, not squared", "mlp", acts(TanhNotSquared), 1, "delta"),
    # losses
    Mutant("half-SSE error factor 2", "trask", loss(HalfSSEFactor2), 2, "delta"),
    Mutant("half-SSE value without 1/2", "trask", loss(HalfSSEValueNoHalf), 0, "loss"),
    Mutant("SSE error without factor 2", "mlp", loss(SSENoFactor2), 2, "delta", SSE_NET),
    Mutant("MSE error sum for mean", "mlp", loss(MSESum), 2, "delta", MSE_NET),
    Mutant("BCE error is sigmoid+BCE delta", "mlp", loss(BCEFusedAsError), 2, "delta", BCE_NET),
    Mutant("BCE mean over batch, not all", "mlp", loss(BCEMeanOverBatch), 2, "delta", BCE_NET),
    Mutant("softmax/CE delta off by target", "mlp", loss(CEDeltaNoTarget), 3, "delta"),
    Mutant("softmax/CE delta sum for mean", "mlp", loss(CEDeltaSum), 3, "delta"),
    Mutant("CE value sum for mean", "mlp", loss(CEValueSum), 0, "loss"),
    # the three formulas and the bias
    Mutant("error_prev skips f' (error @ W.T)", "trask", subclass(ErrorPrevSkipsDerivative), 2, "error_prev"),
    Mutant("error_prev missing transpose", "mlp", subclass(MissingTransposeErrorPrev), 2, "error_prev", SQUARE),
    Mutant("dW missing transpose", "mlp", subclass(MissingTransposeDW), 2, "grad_weight", SQUARE),
    Mutant("dW from the layer's own output", "mlp", subclass(DWFromOwnOutput), 2, "grad_weight", SQUARE),
    Mutant("dW from z below, not a", "mlp", subclass(DWFromPreActivation), 3, "grad_weight"),
    Mutant("error_prev as W @ delta.T", "trask", subclass(ErrorPrevTransposed), 2, "error_prev"),
    Mutant("bias grad summed over units", "mlp", subclass(BiasSummedOverUnits), 2, "grad_bias", BIAS_SQUARE),
    Mutant("bias grad mean for sum", "sigmoid-bias", subclass(BiasMeanOverBatch), 2, "grad_bias"),
    Mutant("bias missing in forward", "sigmoid-bias", subclass(BiasMissingInForward), 0, "output"),
    Mutant("delta handed down for error_prev", "trask", subclass(HandsDownDelta), 1, "delta"),
    Mutant("already-updated W in backward", "trask", subclass(UpdatedWeightInBackward), 2, "error_prev"),
    Mutant("stale W (previous step) in backward", "trask", subclass(StaleWeightInBackward), 2, "error_prev"),
    # optimizers
    Mutant("SGD update wrong sign", "trask", optimizer(SGDWrongSign), 1, "weight"),
    Mutant("SGD skips the bias", "sigmoid-bias", optimizer(SGDSkipsBias), 1, "bias"),
    Mutant("RMSprop eps inside sqrt", "mlp", optimizer(RMSpropEpsInside), 1, "weight", RMS),
    Mutant("RMSprop without sqrt", "mlp", optimizer(RMSpropNoSqrt), 1, "weight", RMS),
    Mutant("RMSprop alpha and 1-alpha swapped", "mlp", optimizer(RMSpropAlphaSwapped), 1, "optimizer_state", RMS),
    Mutant("RMSprop |g| for g^2", "mlp", optimizer(RMSpropNotSquared), 1, "optimizer_state", RMS),
    # convolution and recurrence
    Mutant("conv without the kernel flip", "conv", lambda s: setattr(s.manual.conv, "flip", lambda K: K), 1, "error_prev"),
    Mutant("strided conv without the dilated delta", "cnn", lambda s: forget_dilation(s.manual), 1, "grad_weight"),
    Mutant("BPTT without the carry h_{t-1}", "rnn", lambda s: setattr(s.manual, "carry", torch.zeros_like), 1, "delta"),
]


def forget_dilation(m):
    """A strided conv's backward that uses delta as it comes, zero-padded at the end to the
    dilated size so that the shapes still fit (the stride's zeros between entries are missing)."""
    from bpcheck.manual.conv import pad

    c = m.conv

    def dilate(delta):
        Sd = [(n - 1) * s + 1 for n, s in zip(delta.shape[2:], c.s)]
        return pad(delta, [0] * len(Sd), [a - n for a, n in zip(Sd, delta.shape[2:])])

    c.dilate = dilate



def patched_case(case, patch):
    """``case`` with ``patch(setup)`` applied inside ``build`` (so replays get it too)."""
    base = get_case(case)

    def build(**kw):
        setup = base.build(**kw)
        if patch is not None:
            patch(setup)
        return setup

    return replace(base, build=build)


def build_with(mutant):
    """The mutant's case, with its patch in place."""
    return patched_case(mutant.case, mutant.patch)


def raises_on_call(f, at, exc=KeyboardInterrupt):
    """``f``, but its ``at``-th call raises ``exc`` instead (an interrupt or a fault
    injected at a chosen step, on whichever side or process calls it)."""
    calls = [0]

    def wrapped(*args, **kw):
        calls[0] += 1
        if calls[0] == at:
            raise exc
        return f(*args, **kw)

    return wrapped


def run_with(case, manual_patch, steps=3, **kw):
    """Run ``case`` with ``manual_patch(manual side)`` applied: a one-off mutant of a test."""
    return run(patched_case(case, lambda setup: manual_patch(setup.manual)), steps=steps, **kw)


def kill(mutant, dtype="float64"):
    """Run the mutant; return its row of the kill table."""
    df = run(build_with(mutant), steps=mutant.steps, dtype=dtype, **mutant.options)
    bad = first_failure(df)
    origin = {e["layer"]: e["verdict"] for e in (df.attrs["origin"][mutant.case] or [])}
    row = {"mutant": mutant.name, "case": mutant.case + (f" ({mutant.data})" if mutant.data else ""),
           "step": None, "layer": None, "quantity": None, "expected": f"{mutant.layer} {mutant.quantity}",
           "origin": "", "verdict": "SURVIVED"}
    if bad is not None:
        row.update(step=int(bad["step"]), layer=int(bad["layer"]), quantity=bad["quantity"],
                   origin=origin.get(int(bad["layer"]), "" if int(bad["layer"]) else "forward"))
        located = (row["layer"], row["quantity"]) == (mutant.layer, mutant.quantity)
        row["verdict"] = "killed" if located else "killed, mislocated"
    return row, df


KILLS = []  # rows of the kill table, filled by tests/test_mutation.py, printed by conftest


def format_kill_table(rows):
    head = ("mutant", "case", "step", "layer", "quantity", "verdict", "own or inherited")
    table = [head] + [(r["mutant"], r["case"], str(r["step"] or "-"), str("-" if r["layer"] is None else r["layer"]),
                       r["quantity"] or "-", r["verdict"], r["origin"]) for r in rows]
    w = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * x for x in w))
    killed = sum(r["verdict"] == "killed" for r in rows)
    lines.append(f"killed and located: {killed}/{len(rows)} ({100 * killed / max(len(rows), 1):.0f}%)")
    return "\n".join(lines)


# A case file whose trask forgets the output sigmoid's derivative (bpcheck run FILE.py:broken).
BROKEN_TRASK_FILE = """
from dataclasses import replace
from bpcheck.cases import get_case
from bpcheck.manual.activations import Sigmoid


class NoDerivative(Sigmoid):
    def delta(self, error, a, z):
        return error


def build(**kw):
    setup = get_case("trask").build(**kw)
    setup.manual.acts[1] = NoDerivative()
    return setup


broken = replace(get_case("trask"), name="broken", build=build)
"""
