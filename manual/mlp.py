"""Seed 001's L-layer network, written as seed 000's three golden formulas.

Forward keeps each layer's input ``xs[i]``, pre-activation ``zs[i]`` and
activation ``As[i]``. Backward runs from the output down:

    delta      = f'(a) * error          (formula 1)
    dW         = X_prev.T @ delta       (formula 3)
    error_prev = delta @ W.T            (formula 2)

It follows bpcheck's protocol (bpcheck.compare.protocol): ``params``,
``step(x, t)`` and ``update(trace)``. The same code runs on torch tensors, on numpy
views of them (tiny CPU runs) and on a stack of copies with a leading axis
(``--seeds``): ``.mT`` transposes the last two axes, the batch is axis -2
(manual/xp.py).
"""
from .activations import ACTIVATIONS, Softmax
from .losses import LOSSES, CrossEntropy
from .optim import SGD


class MLP:
    def __init__(self, weights, biases=None, activations=("sigmoid",), loss="half_sse", optimizer=None):
        """weights: list of (in, out) tensors; biases: list of (out,) tensors or None."""
        biases = biases if biases is not None else [None] * len(weights)
        self.params = [{"weight": W} if b is None else {"weight": W, "bias": b} for W, b in zip(weights, biases)]
        self.acts = [ACTIVATIONS[a]() for a in activations]
        self.loss = LOSSES[loss]()
        self.optimizer = optimizer if optimizer is not None else SGD(1.0)
        if any(isinstance(a, Softmax) for a in self.acts[:-1]) or (
            isinstance(self.acts[-1], Softmax) != isinstance(self.loss, CrossEntropy)
        ):
            raise ValueError("softmax is the output activation paired with cross_entropy, and only with it")

    def forward(self, x):
        self.xs, self.zs, self.As = [], [], []
        a = x
        for p, act in zip(self.params, self.acts):
            self.xs.append(a)
            z = a @ p["weight"]  # (B, in) @ (in, out) -> (B, out)
            if "bias" in p:
                z += p["bias"][..., None, :]  # z = x @ W + b, b one (1, out) row for the batch
            a = act.f(z)
            self.zs.append(None if getattr(act, "from_output", False) else z)  # f' from a: z not kept
            self.As.append(a)
        return a

    def step(self, x, t):
        y = self.forward(x)
        layers = [None] * len(self.params)
        error = self.loss.error(y, t)  # dL/dy
        for i in reversed(range(len(self.params))):
            W, X_prev, a, z = self.params[i]["weight"], self.xs[i], self.As[i], self.zs[i]
            if isinstance(self.acts[i], Softmax):
                delta = self.loss.softmax_delta(a, t)  # delta = (p - t)/B
            else:
                delta = self.acts[i].delta(error, a, z)  # delta = f'(a) * error
            dW = X_prev.mT @ delta  # (in, B) @ (B, out) -> (in, out)
            error_prev = delta @ W.mT  # (B, out) @ (out, in) -> (B, in)
            layers[i] = {"delta": delta, "error_prev": error_prev, "grad_weight": dW}
            if "bias" in self.params[i]:
                layers[i]["grad_bias"] = delta.sum(-2)  # db = sum of delta over the batch
            error = error_prev
        return {"loss": self.loss.value(y, t), "output": y, "layers": layers}

    def update(self, trace):
        grads = [{n: g[f"grad_{n}"] for n in p} for p, g in zip(self.params, trace["layers"])]
        self.optimizer.step(self.params, grads)

    def state(self):
        return self.optimizer.state()
