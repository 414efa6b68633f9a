"""Losses. Each gives its value and its ``error = dL/d(output)``.

``B`` is the batch (the first axis of one output) and ``N`` the number of output
elements. A loss reduces over every axis of one output; with ``lead = 1`` (set by
compare.seeds on a stack of copies, ``--seeds``) the first axis is the copy and each
copy gets its own loss. Functions come from ``xp(y)`` (manual/xp.py).
"""
import math

import torch

from .xp import xp


class Loss:
    lead = 0  # leading stack axes (copies) in front of one output

    def axes(self, y):
        return tuple(range(self.lead, y.ndim))  # the axes of one copy's output

    def numel(self, y):
        return math.prod(y.shape[self.lead:])  # N, the output elements of one copy

    def batch(self, y):
        return y.shape[self.lead]  # B, the batch of one copy


class SSE(Loss):
    """L = sum((y - t)^2)."""

    def value(self, y, t):
        return ((y - t) ** 2).sum(self.axes(y))

    def error(self, y, t):
        return 2 * (y - t)  # dL/dy = 2(y - t)


class HalfSSE(Loss):
    """L = 1/2 sum((y - t)^2): the loss whose gradient the seeds' ``error`` is."""

    def value(self, y, t):
        return 0.5 * ((y - t) ** 2).sum(self.axes(y))

    def error(self, y, t):
        return y - t  # dL/dy = y - t


class MSE(Loss):
    """L = mean((y - t)^2) over all N elements."""

    def value(self, y, t):
        return ((y - t) ** 2).mean(self.axes(y))

    def error(self, y, t):
        return 2 * (y - t) / self.numel(y)  # dL/dy = 2(y - t)/N


class BCE(Loss):
    """Binary cross-entropy, mean over all N elements: L = -mean(t log y + (1-t) log(1-y))."""

    def value(self, y, t):
        return -(t * xp(y).log(y) + (1 - t) * xp(y).log(1 - y)).mean(self.axes(y))

    def error(self, y, t):
        return (y - t) / (y * (1 - y)) / self.numel(y)  # dL/dy = (y - t) / (y(1-y) N)


class CrossEntropyProbs(Loss):
    """The seeds' form: cross-entropy of softmax *probabilities* y (the network ends in
    softmax) against one-hot (or soft) targets t, mean over the batch: L = -sum(t log y) / B.
    A probability that underflows to 0 gives log 0 = -inf, on both sides alike."""

    def value(self, y, t):
        return -(t * xp(y).log(y)).sum(self.axes(y)) / self.batch(y)

    def error(self, y, t):
        return -t / y / self.batch(y)  # dL/dy = -t / (y B)

    def softmax_delta(self, p, t):
        return (p - t) / self.batch(p)  # delta = (p - t)/B, softmax and cross-entropy fused


class CrossEntropy(Loss):
    """torch's ``cross_entropy``: *logits* y (B, C) against class labels t (B,) or
    probabilities t (B, C), mean over the batch, computed stably through log-softmax:
    L = -sum(T log_softmax(y)) / B, with T = one-hot(t) or t."""

    def targets(self, y, t):
        if not isinstance(t, torch.Tensor) or t.is_floating_point():  # numpy twin: float targets only
            return t
        return torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)[t]  # T = one-hot(t), (B, C)

    def value(self, y, t):
        return -(self.targets(y, t) * xp(y).log_softmax(y, dim=-1)).sum(self.axes(y)) / self.batch(y)

    def error(self, y, t):
        return (xp(y).softmax(y, dim=-1) - self.targets(y, t)) / self.batch(y)  # dL/dy = (softmax(y) - T) / B


LOSSES = {
    "sse": SSE,
    "half_sse": HalfSSE,
    "mse": MSE,
    "bce": BCE,
    "cross_entropy": CrossEntropy,
    "cross_entropy_probs": CrossEntropyProbs,
}
