"""Losses. Each gives its value and its ``error = dL/d(output)``.

``B`` is the batch and ``N`` the number of output elements. The batch is axis -2 and a
loss reduces over the last two axes, so that a stack of copies (``--seeds``) gets one
loss per copy; functions come from ``xp(y)`` (manual/xp.py).
"""
from .xp import xp

ALL = (-2, -1)  # the axes of one copy's (B, out) output


def numel(y):
    return y.shape[-2] * y.shape[-1]  # N, the output elements of one copy


class SSE:
    """L = sum((y - t)^2)."""

    def value(self, y, t):
        return ((y - t) ** 2).sum(ALL)

    def error(self, y, t):
        return 2 * (y - t)  # dL/dy = 2(y - t)


class HalfSSE:
    """L = 1/2 sum((y - t)^2): the loss whose gradient the seeds' ``error`` is."""

    def value(self, y, t):
        return 0.5 * ((y - t) ** 2).sum(ALL)

    def error(self, y, t):
        return y - t  # dL/dy = y - t


class MSE:
    """L = mean((y - t)^2) over all N elements."""

    def value(self, y, t):
        return ((y - t) ** 2).mean(ALL)

    def error(self, y, t):
        return 2 * (y - t) / numel(y)  # dL/dy = 2(y - t)/N


class BCE:
    """Binary cross-entropy, mean over all N elements: L = -mean(t log y + (1-t) log(1-y))."""

    def value(self, y, t):
        return -(t * xp(y).log(y) + (1 - t) * xp(y).log(1 - y)).mean(ALL)

    def error(self, y, t):
        return (y - t) / (y * (1 - y)) / numel(y)  # dL/dy = (y - t) / (y(1-y) N)


class CrossEntropy:
    """Cross-entropy of softmax probabilities y against one-hot (or soft) targets t,
    mean over the batch: L = -sum(t log y) / B."""

    def value(self, y, t):
        return -(t * xp(y).log(y)).sum(ALL) / y.shape[-2]

    def error(self, y, t):
        return -t / y / y.shape[-2]  # dL/dy = -t / (y B)

    def softmax_delta(self, p, t):
        return (p - t) / p.shape[-2]  # delta = (p - t)/B, softmax and cross-entropy fused


LOSSES = {
    "sse": SSE,
    "half_sse": HalfSSE,
    "mse": MSE,
    "bce": BCE,
    "cross_entropy": CrossEntropy,
}
