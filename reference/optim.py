"""torch.optim optimizers by the names manual/optim.py uses (sgd, rmsprop)."""
import torch


def torch_optimizer(name, params, lr, **kw):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, **kw)
    raise ValueError(f"unknown optimizer {name!r} (known: sgd, rmsprop)")
