"""An MLP as nn.Sequential of nn.Linear and activation modules, with torch's losses.

Where torch has no module of the exact loss, a documented expression of torch ops is used.
"""
import torch
from torch import nn

from .optim import seed_form, torch_optimizer
from .side import Reference

ACT_MODULES = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
    "softmax": lambda: nn.Softmax(dim=-1),
}

LOSS_FNS = {
    # torch has no SSE module: MSELoss with reduction="sum" is exactly sum((y - t)^2).
    "sse": lambda y, t: nn.functional.mse_loss(y, t, reduction="sum"),
    "half_sse": lambda y, t: 0.5 * nn.functional.mse_loss(y, t, reduction="sum"),
    "mse": lambda y, t: nn.functional.mse_loss(y, t),
    "bce": lambda y, t: nn.functional.binary_cross_entropy(y, t),
    # torch's own: logits and class labels (or probabilities), mean over the batch, via log-softmax.
    "cross_entropy": lambda y, t: nn.functional.cross_entropy(y, t),
    # The seeds' form: the model ends in nn.Softmax, so cross-entropy is the NLL of
    # log-probabilities, written for soft (one-hot) targets: -sum(t * log p) / B.
    "cross_entropy_probs": lambda p, t: -(t * torch.log(p)).sum() / p.shape[0],
}


def build_mlp(weights, biases, activations, loss, optimizer="sgd", lr=1.0, **opt_kw):
    """weights/biases in the manual layout; the one layout conversion happens in Reference.load."""
    mods, linears = [], []
    for W, b, act in zip(weights, biases or [None] * len(weights), activations):
        lin = nn.Linear(W.shape[0], W.shape[1], bias=b is not None, dtype=W.dtype, device=W.device)
        mods += [lin, ACT_MODULES[act]()]
        linears.append(lin)
    module = nn.Sequential(*mods)
    params = list(module.parameters())
    opt = torch_optimizer(optimizer, params, lr, **opt_kw)
    ref = Reference(module, linears, LOSS_FNS[loss], opt, seed_state=seed_form(optimizer, opt_kw))
    ref.load([{"weight": W} if b is None else {"weight": W, "bias": b} for W, b in zip(weights, biases or [None] * len(weights))])
    return ref
