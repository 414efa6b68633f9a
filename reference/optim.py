"""torch.optim optimizers by the names manual/optim.py uses (sgd, adam, adamw, rmsprop, adagrad).

``seed_form(name, kw)`` says whether the manual side gets the seeds' optimizer
(bpcheck.manual.optim.make_optimizer's rule), whose state is reported in the seeds'
form (``optimizer_state``); the reference then reports its state the same way.
"""
import torch

from bpcheck.manual.optim import FULL, SEED

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
         "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}


def seed_form(name, kw):
    return name in SEED and set(kw) <= set(SEED[name][1])


def torch_optimizer(name, params, lr, **kw):
    if name not in TORCH:
        raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(TORCH)})")
    unknown = set(kw) - set(FULL[name][1])
    if unknown:
        raise ValueError(f"optimizer {name!r} has no option {sorted(unknown)[0]!r}")
    return TORCH[name](params, lr=lr, foreach=False, **kw)
