"""Optimizers that update manual parameters in place: ``W -= step``.

``params`` and ``grads`` are lists (one entry per layer) of dicts keyed by the
parameter name (``weight``, ``bias``, ...), in the manual layout.
"""
import torch


class SGD:
    """W -= lr * dW. The seeds' ``W += lr * X.T @ delta`` with error = target - output
    is this same update (see bpcheck.manual's module docstring on signs)."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, params, grads):
        for p, g in zip(params, grads):
            for name, w in p.items():
                # W -= lr * dW (in place, on a tensor or a numpy view); 1.0 * dW is dW, bit for
                # bit, so lr = 1 (the seeds' rate) skips the product: one array op less per step
                w -= g[name] if self.lr == 1 else self.lr * g[name]

    def state(self):
        return None


class RMSprop:
    """Seed 003's rule, with eps outside the square root as torch.optim.RMSprop has it:
    s = alpha*s + (1-alpha)*g^2;  W -= lr * g / (sqrt(s) + eps)."""

    def __init__(self, lr, alpha=0.99, eps=1e-8):
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.square_avg = None

    def step(self, params, grads):
        if self.square_avg is None:
            self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
        for p, g, s in zip(params, grads, self.square_avg):
            for name, w in p.items():
                s[name].mul_(self.alpha).addcmul_(g[name], g[name], value=1 - self.alpha)  # s = a*s + (1-a)*g^2
                w.addcdiv_(g[name], s[name].sqrt().add_(self.eps), value=-self.lr)  # W -= lr*g/(sqrt(s)+eps)

    def state(self):
        return self.square_avg


OPTIONS = {"sgd": (), "rmsprop": ("alpha", "eps")}  # keyword options each optimizer takes


def make_optimizer(name, lr, **kw):
    if name not in OPTIONS:
        raise ValueError(f"unknown optimizer {name!r} (known: sgd, rmsprop)")
    for k in kw:
        if k not in OPTIONS[name]:
            raise ValueError(f"optimizer {name!r} has no option {k!r} (its options: {', '.join(OPTIONS[name]) or 'none'})")
    return SGD(lr) if name == "sgd" else RMSprop(lr, **kw)
