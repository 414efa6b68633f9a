"""Seed 003: the 2-2-1 sigmoid network, no biases, E = 1/2 (yp - ya)^2.

Inputs 1, 2 -> hidden neurons 3, 4 -> output neuron 5. In the manual layout
(``x @ W``, W of shape (in, out)):

    W1 = [[w13, w14],       W2 = [[w35],
          [w23, w24]]             [w45]]

``Net221`` is true backprop: every gradient of a step comes from the same
weights. ``Net221AsWritten`` is the seed's ``back()``: it updates w35 and w45
as soon as their gradients are known, and the hidden-layer gradients then use
the *updated* w35, w45. The seed's printed runs (111 SGD steps, 11 RMSprop
steps) are those of the as-written code, digit for digit.

The as-written side computes in the seed's order of operations, so that float64
on the CPU reproduces the seed's Python floats bit for bit: its optimizers
(``SeedSGD``, ``SeedRMSprop``) round as the seed's ``update`` does, and
torch.sigmoid on a tensor this small is ``1/(1 + exp(-z))`` with the C
library's exp, as Python's math.exp. The optimizers also give the update
without applying it (``updated``), which the as-written backward needs.
"""
import torch

from .mlp import MLP
from .optim import SGD


class SeedSGD(SGD):
    """The seed's ``w -= g`` (lr 1): W -= lr * dW."""

    def updated(self, i, p, g):
        """Layer i's parameters after one update, without applying it."""
        return {n: w - self.lr * g[n] for n, w in p.items()}  # W - lr * dW


class SeedRMSprop:
    """The seed's RMSprop ("momentum" in its text), eps outside the root as torch has it:

        s = beta*s + (1 - beta)*g^2;   w -= lr/(sqrt(s) + eps) * g

    in the seed's order of rounding. torch.optim.RMSprop computes the same rule as
    ``s*alpha + ((1-alpha)*g)*g`` and ``w + (-lr*g)/(sqrt(s)+eps)``: an ulp apart."""

    def __init__(self, lr=0.1, beta=0.999, eps=0.01):
        self.lr, self.beta, self.eps = lr, beta, eps
        self.square_avg = {}  # layer index -> {name: s}

    def _next(self, i, p, g):
        """Layer i's (parameters, s) after one update, without applying it."""
        s_old = self.square_avg.get(i) or {n: torch.zeros_like(w) for n, w in p.items()}
        s = {n: self.beta * s_old[n] + (1 - self.beta) * (g[n] * g[n]) for n in p}  # s = beta*s + (1-beta)*g^2
        # lr/(sqrt(s)+eps) as a tensor division: a Python number over a tensor would round twice
        new = {n: w - torch.full_like(w, self.lr) / (s[n].sqrt() + self.eps) * g[n] for n, w in p.items()}
        return new, s

    def updated(self, i, p, g):
        """Layer i's parameters after one update, without applying it."""
        return self._next(i, p, g)[0]

    def step(self, params, grads):
        for i, (p, g) in enumerate(zip(params, grads)):
            new, self.square_avg[i] = self._next(i, p, g)
            for n, w in p.items():
                w.copy_(new[n])  # w -= lr/(sqrt(s)+eps) * g

    def state(self):
        return [self.square_avg[i] for i in sorted(self.square_avg)] or None


class Net221(MLP):
    """Seed 003's network, true backprop (MLP's three formulas)."""

    def __init__(self, W1, W2, optimizer):
        super().__init__([W1, W2], None, ("sigmoid", "sigmoid"), "half_sse", optimizer)

    def trace_line(self, step, trace, stopped):
        """The seed's line: ``step = N: yp = <repr>, Error = <repr>``."""
        return f"step = {step}: yp = {float(trace['output'])}, Error = {float(trace['loss'])}"


class Net221AsWritten(Net221):
    """Seed 003's back() as written: the hidden layer's error uses w35, w45 AFTER their update."""

    def layer_backward(self, layer, error):
        """The same departure for the own-or-inherited rerun: layer 2 hands down its error
        through the updated W2 (the step below keeps the seed's order of rounding)."""
        q = super().layer_backward(layer, error)
        if layer == 2:
            W2_new = self.optimizer.updated(1, self.params[1], {"weight": q["grad_weight"]})["weight"]
            q["error_prev"] = q["delta"] @ W2_new.T  # (1, 1) @ (1, 2) -> (1, 2), W2 after its update
        return q

    def step(self, x, t):
        yp = self.forward(x)
        h, W1 = self.As[0], self.params[0]["weight"]
        error = self.loss.error(yp, t)  # dE/dyp = yp - ya
        delta = yp * (1 - yp) * error  # delta5 = yp(1-yp) * error
        dW2 = h.T @ delta  # (2, 1) @ (1, 1) -> (2, 1): dE/dw35, dE/dw45
        W2_new = self.optimizer.updated(1, self.params[1], {"weight": dW2})["weight"]  # the seed updates w35, w45 here
        error_prev = delta @ W2_new.T  # (1, 1) @ (1, 2) -> (1, 2): THE DEPARTURE, backprop uses W2, not W2_new
        delta_h = h * (1 - h) * error_prev  # delta3, delta4 = h(1-h) * error_prev
        dW1 = x.T @ delta_h  # (2, 1) @ (1, 2) -> (2, 2): dE/dw13 .. dE/dw24
        error_in = delta_h @ W1.T  # (1, 2) @ (2, 2) -> (1, 2)
        layers = [{"delta": delta_h, "error_prev": error_in, "grad_weight": dW1},
                  {"delta": delta, "error_prev": error_prev, "grad_weight": dW2}]
        return {"loss": self.loss.value(yp, t), "output": yp, "layers": layers}
