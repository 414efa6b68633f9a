"""Seed 001's L-layer network, written as seed 000's three golden formulas.

Forward keeps each layer's input ``xs[i]``, pre-activation ``zs[i]`` and
activation ``As[i]``. Backward runs from the output down:

    delta      = f'(a) * error          (formula 1)
    dW         = X_prev.T @ delta       (formula 3)
    error_prev = delta @ W.T            (formula 2)

It follows bpcheck's protocol (bpcheck.compare.core.protocol): ``params``,
``step(x, t)``, ``update(trace)``, and the optional ``layer_backward(layer, error)``.
``step`` reports ``pre``, the pre-activations of ReLU layers, so that the runner can
tell an element at ReLU's kink from a wrong formula (compare.kinks). The same code runs
on torch tensors, on numpy views of them (tiny CPU runs) and on a stack of copies with
a leading axis (``--seeds``): ``.mT`` transposes the last two axes, the batch is axis
-2 (manual/xp.py).
"""
from .activations import ACTIVATIONS, Softmax
from .losses import LOSSES, CrossEntropyProbs
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
            isinstance(self.acts[-1], Softmax) != isinstance(self.loss, CrossEntropyProbs)
        ):
            raise ValueError("softmax is the output activation paired with cross_entropy_probs, and only with it "
                             "(cross_entropy takes logits: end the network in identity)")

    def forward(self, x):
        self.xs, self.zs, self.As = [], [], []
        a = x
        for p, act in zip(self.params, self.acts):
            # z is dropped only where nothing can read it: this class unsubclassed, and an
            # activation whose own class declares from_output (a user's subclass that
            # rewrites delta, or an MLP subclass that reads self.zs, keeps z)
            lean = type(self) is MLP and vars(type(act)).get("from_output", False)
            self.xs.append(a)
            z = a @ p["weight"]  # (B, in) @ (in, out) -> (B, out)
            if "bias" in p:
                z += p["bias"][..., None, :]  # z = x @ W + b, b one (1, out) row for the batch
            a = act.f(z)
            self.zs.append(None if lean else z)  # f' from a: z not kept
            self.As.append(a)
        return a

    def step(self, x, t, lean=False):
        """Forward and backward at the current weights -> the trace. ``lean``: only what
        ``update`` reads, the layers' gradients (no loss, output, ``pre`` or layer 1's
        ``error_prev``): the replay's trajectory loop steps lean and computes the full
        trace of a chunk of steps afterwards, at once, on the stacked weights
        (compare.replay)."""
        y = self.forward(x)
        layers = [None] * len(self.params)
        error = self.loss.error(y, t)  # dL/dy
        for i in reversed(range(len(self.params))):
            kw = {"error_prev": False} if lean and i == 0 else {}  # dL/dx: no update reads it
            if isinstance(self.acts[i], Softmax):
                delta = self.loss.softmax_delta(self.As[i], t)  # delta = (p - t)/B
                layers[i] = self.backprop(i + 1, delta, **kw)
            else:
                layers[i] = self.layer_backward(i + 1, error, **kw)  # delta = f'(a) * error, ...
            error = layers[i].get("error_prev")  # the error handed to the layer below
        if lean:
            return {"layers": layers}
        pre = [z if getattr(act, "kink", False) else None for z, act in zip(self.zs, self.acts)]
        return {"loss": self.loss.value(y, t), "output": y, "layers": layers, "pre": pre}

    def layer_backward(self, layer, error, error_prev=True):
        """Layer ``layer``'s backward (1 = nearest the input) from ``error`` = dL/d(its
        output), on the cache of the last ``step``'s forward and the current weights.
        ``step`` calls it for every layer; the own-or-inherited diagnosis calls it with
        the reference's error (compare.origin). ``error_prev=False`` skips formula 2."""
        i = layer - 1
        delta = self.acts[i].delta(error, self.As[i], self.zs[i])  # delta = f'(a) * error  (formula 1)
        kw = {} if error_prev else {"error_prev": False}  # a subclass's backprop(layer, delta) takes none
        return self.backprop(layer, delta, **kw)

    def backprop(self, layer, delta, error_prev=True):
        """Formulas 3 and 2 (and the bias gradient) of layer ``layer`` from its delta."""
        i = layer - 1
        W, X_prev = self.params[i]["weight"], self.xs[i]
        q = {"delta": delta}
        q["grad_weight"] = X_prev.mT @ delta  # dW = X_prev.T @ delta: (in, B) @ (B, out) -> (in, out)
        if "bias" in self.params[i]:
            q["grad_bias"] = delta.sum(-2)  # db = delta summed over the batch: (B, out) -> (out,)
        if error_prev:
            q["error_prev"] = delta @ W.mT  # error_prev = delta @ W.T: (B, out) @ (out, in) -> (B, in)
        return q

    def update(self, trace):
        grads = [{n: g[f"grad_{n}"] for n in p} for p, g in zip(self.params, trace["layers"])]
        self.optimizer.step(self.params, grads)

    def state(self):
        return self.optimizer.state()
