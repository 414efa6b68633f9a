"""Optimizers that update manual parameters in place: ``W -= step``.

Two families (docs/optimizers.md):

* ``SGD(lr)`` and ``RMSprop(lr, alpha, eps)``, the seeds' optimizers, kept as they were:
  ``params`` and ``grads`` are lists (one entry per layer) of dicts keyed by the
  parameter name (``weight``, ``bias``, ...), in the manual layout, or dicts of such
  dicts keyed by site name; SGD keeps no state (it also updates numpy views), RMSprop's
  ``state()`` is ``[{param_name: square_avg}]`` (or ``{site: {...}}``), the rows
  ``optimizer_state[_<param>]`` of a report.
* ``FullSGD``, ``Adam``, ``AdamW``, ``FullRMSprop``, ``Adagrad`` (bpcheck.manual.optimizers):
  torch.optim's options, defaults and state names; ``state()`` gives every state
  tensor per parameter, ``{param_name: {state_name: tensor}}``.

``make_optimizer(name, lr, **options)`` picks the seed optimizer when only its options
are given (sgd: none; rmsprop: alpha, eps) and the full one as soon as any other option
is given, even at its default (``momentum=0`` asks for FullRMSprop's full state).
``from_torch(optimizer)`` returns the full twin of a built torch.optim optimizer.
"""
import torch

from .optimizers import Adagrad, Adam, AdamW, FullRMSprop, FullSGD, check, usage_error


class SGD:
    """W -= lr * dW. The seeds' ``W += lr * X.T @ delta`` with error = target - output
    is this same update (see bpcheck.manual's module docstring on signs)."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, params, grads):
        if isinstance(params, dict):  # sites by name, {site: {param_name: tensor}}: the same update
            params, grads = params.values(), [grads[k] for k in params]
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
        if isinstance(params, dict):  # sites by name: square_avg is then {site: {param_name: tensor}}
            if self.square_avg is None:
                self.square_avg = {k: {n: torch.zeros_like(w) for n, w in p.items()} for k, p in params.items()}
            params, grads, avgs = params.values(), [grads[k] for k in params], [self.square_avg[k] for k in params]
        else:
            if self.square_avg is None:
                self.square_avg = [{n: torch.zeros_like(w) for n, w in p.items()} for p in params]
            avgs = self.square_avg
        for p, g, s in zip(params, grads, avgs):
            for name, w in p.items():
                s[name].mul_(self.alpha).addcmul_(g[name], g[name], value=1 - self.alpha)  # s = a*s + (1-a)*g^2
                w.addcdiv_(g[name], s[name].sqrt().add_(self.eps), value=-self.lr)  # W -= lr*g/(sqrt(s)+eps)

    def state(self):
        return self.square_avg


SEED = {"sgd": (SGD, ()), "rmsprop": (RMSprop, ("alpha", "eps"))}  # the seeds' optimizers and options
FULL = {  # the full optimizers and their options, in torch's order
    "sgd": (FullSGD, ("momentum", "dampening", "weight_decay", "nesterov")),
    "adam": (Adam, ("betas", "eps", "weight_decay", "amsgrad")),
    "adamw": (AdamW, ("betas", "eps", "weight_decay", "amsgrad")),
    "rmsprop": (FullRMSprop, ("alpha", "eps", "weight_decay", "momentum", "centered")),
    "adagrad": (Adagrad, ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")),
}
OPTIONS = {name: opts for name, (_, opts) in FULL.items()}  # keyword options each optimizer takes


def make_optimizer(name, lr, **kw):
    """The optimizer ``name`` with learning rate ``lr``: the seed's SGD or RMSprop when
    ``kw`` holds only the seed's options, else the full torch.optim twin."""
    if name not in FULL:
        raise usage_error(f"unknown optimizer {name!r} (known: {', '.join(FULL)})")
    for k in kw:
        if k not in OPTIONS[name]:
            raise usage_error(f"optimizer {name!r} has no option {k!r} (its options: {', '.join(OPTIONS[name])})")
    seed = name in SEED and set(kw) <= set(SEED[name][1])
    return (SEED if seed else FULL)[name][0](lr, **kw)


TORCH = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop", "Adagrad": "adagrad"}
# options of torch.optim that change the formulas or where they run; the twins follow the default
UNSUPPORTED = ("foreach", "fused", "capturable", "maximize", "differentiable", "decoupled_weight_decay")


def from_torch(optimizer):
    """The full manual twin of a fresh torch.optim optimizer (SGD, Adam, AdamW, RMSprop or
    Adagrad), with its hyper-parameters. Several param groups must share them (the twin
    holds one setting for every parameter); ``foreach=False`` is accepted, any other
    non-default value of the options in UNSUPPORTED is refused."""
    kind = type(optimizer).__name__
    check(isinstance(optimizer, torch.optim.Optimizer) and type(optimizer) is getattr(torch.optim, kind, None)
          and kind in TORCH, f"from_torch: no manual twin for {kind} (known: {', '.join(TORCH)})")
    cls, opts = FULL[TORCH[kind]]
    hyper = None
    for group in optimizer.param_groups:
        for k in UNSUPPORTED:
            v = group.get(k)
            default = kind == "AdamW" if k == "decoupled_weight_decay" else None
            why = ("use torch.optim.AdamW" if k == "decoupled_weight_decay"
                   else f"the manual {cls.__name__} follows torch's single-tensor path")
            check(v in (None, False, default), f"from_torch: {kind} with {k}={v!r} is not supported ({why})")
        h = {k: _scalar(group[k]) for k in ("lr",) + opts}
        hyper = hyper or h
        for k in h:
            check(h[k] == hyper[k], f"from_torch: {kind}'s param groups differ in {k} "
                  f"({hyper[k]!r} and {h[k]!r}); a manual optimizer takes one setting for all")
    stepped = any(float(s.get("step", 0)) > 0 or "momentum_buffer" in s for s in optimizer.state.values())
    check(not stepped, f"from_torch: this {kind} has already taken steps; pass a fresh one")
    return cls(**hyper)


def _scalar(v):
    """A hyper-parameter as a Python number (torch accepts 1-element tensors for lr and betas)."""
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, tuple):
        return tuple(_scalar(x) for x in v)
    return v
