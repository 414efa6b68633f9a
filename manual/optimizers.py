"""torch.optim's SGD, Adam, AdamW, RMSprop and Adagrad, written by hand with its options,
defaults, argument checks and state names, so that each pairs with its torch.optim twin
and every state tensor can be compared.

Decisions:

* Formulas follow torch.optim's single-tensor path (``foreach=False``): weight decay is
  added to the gradient first (AdamW instead shrinks the parameter, ``W *= 1 - lr*wd``),
  eps is added outside the square root and, in Adam, after the bias correction of the
  root. Plain tensor ops, one formula a line, in place on the parameter and state
  tensors; they round as torch's fused ops do to within an ulp or two a step.
* ``step(params, grads)``: ``params`` is a list (one entry per layer) of dicts
  ``{param_name: tensor}`` or a dict ``{site_name: {param_name: tensor}}``; ``grads``
  has the same structure and keys. Parameters are updated in place.
* ``state()``: None before the first step (and always for SGD without momentum, whose
  torch state is empty); afterwards the same outer structure with, per parameter, a dict
  ``{state_name: tensor}`` under torch's names. The tensors are the live state (clone to
  keep them), except ``step``: the count is kept as a Python int (a bfloat16 counter
  would stop at 256) and handed out as a fresh 0-d tensor of the parameter's dtype and
  device (torch keeps it in float32 on the CPU).
* Bad hyper-parameters raise UsageError (a ValueError) with torch's own message.
"""
import torch


def usage_error(msg):
    # imported here: bpcheck.compare's package imports bpcheck.manual
    from bpcheck.compare.core.errors import UsageError
    return UsageError(msg)


def check(ok, msg):
    if not ok:
        raise usage_error(msg)


class Optimizer:
    """The walk over sites and parameters that every optimizer below shares; a subclass
    gives ``new_state(w)`` (the per-parameter state before its first step) and
    ``update(w, g, s)`` (one step of one parameter ``w`` with gradient ``g``)."""

    def __init__(self):
        self._state = None  # {site: {param_name: {state_name: tensor or int}}}
        self._sites = None  # the number of layers (params a list) or the site names (params a dict)

    def step(self, params, grads):
        if isinstance(params, dict):
            sites, same = list(params), isinstance(grads, dict) and set(grads) == set(params)
        else:
            sites, same = range(len(params)), not isinstance(grads, dict) and len(grads) == len(params)
        check(same, "grads must have the structure of params (the same list length or the same site names)")
        if self._state is None:
            self._state, self._sites = {}, dict.fromkeys(params) if isinstance(params, dict) else len(params)
        for site in sites:
            for name, w in params[site].items():
                s = self._state.setdefault(site, {}).get(name)
                if s is None:
                    check(not torch.is_complex(w), f"{type(self).__name__}: complex parameters are not supported "
                          "(torch steps their real and imaginary parts as two real tensors)")
                    s = self._state[site][name] = self.new_state(w)
                self.update(w, grads[site][name], s)

    def state(self):
        if self._state is None or not any(s for d in self._state.values() for s in d.values()):
            return None  # no step yet, or SGD without momentum (torch's state is empty)
        out = {site: {name: self._public(s) for name, s in d.items()} for site, d in self._state.items()}
        if isinstance(self._sites, dict):
            return {site: out.get(site, {}) for site in self._sites}
        return [out.get(i, {}) for i in range(self._sites)]

    @staticmethod
    def _public(s):
        like = next(v for v in s.values() if isinstance(v, torch.Tensor))
        return {k: torch.tensor(float(v), dtype=like.dtype, device=like.device) if k == "step" else v
                for k, v in s.items()}


class FullSGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, weight decay, Nesterov. State ``momentum_buffer``
    (momentum > 0 only), set to the first step's gradient without dampening, as torch does."""

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__()
        check(lr >= 0.0, f"Invalid learning rate: {lr}")
        check(momentum >= 0.0, f"Invalid momentum value: {momentum}")
        check(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        check(not nesterov or (momentum > 0 and dampening == 0),
              "Nesterov momentum requires a momentum and zero dampening")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def new_state(self, w):
        return {}  # momentum_buffer appears at the first step

    def update(self, w, g, s):
        lr, mu = self.lr, self.momentum
        if self.weight_decay != 0:
            g = g + self.weight_decay * w  # g = g + wd*W
        if mu != 0:
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = g.clone()  # b = g (first step: no dampening)
            else:
                s["momentum_buffer"].mul_(mu).add_((1 - self.dampening) * g)  # b = mu*b + (1-d)*g
            b = s["momentum_buffer"]
            g = g + mu * b if self.nesterov else b  # g = g + mu*b (Nesterov), else g = b
        w.sub_(lr * g)  # W -= lr*g


class Adam(Optimizer):
    """torch.optim.Adam (``decoupled_weight_decay=False``): state ``step``, ``exp_avg``,
    ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``."""

    decoupled = False  # AdamW: weight decay shrinks W instead of adding to g

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__()
        check(lr >= 0.0, f"Invalid learning rate: {lr}")
        check(eps >= 0.0, f"Invalid epsilon value: {eps}")
        check(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
        check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
        check(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.amsgrad = weight_decay, amsgrad

    def new_state(self, w):
        s = {"step": 0, "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
        if self.amsgrad:
            s["max_exp_avg_sq"] = torch.zeros_like(w)
        return s

    def update(self, w, g, s):
        lr, (b1, b2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        t = s["step"] = s["step"] + 1  # t = t + 1
        if wd != 0 and self.decoupled:
            w.mul_(1 - lr * wd)  # W = W * (1 - lr*wd)
        elif wd != 0:
            g = g + wd * w  # g = g + wd*W
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m.mul_(b1).add_((1 - b1) * g)  # m = b1*m + (1-b1)*g
        v.mul_(b2).add_((1 - b2) * g * g)  # v = b2*v + (1-b2)*g^2
        bc1 = 1 - b1 ** t  # bias correction of m: 1 - b1^t
        bc2 = 1 - b2 ** t  # bias correction of v: 1 - b2^t
        if self.amsgrad:
            torch.maximum(s["max_exp_avg_sq"], v, out=s["max_exp_avg_sq"])  # vmax = max(vmax, v)
            v = s["max_exp_avg_sq"]  # amsgrad divides by the largest v so far
        denom = v.sqrt() / bc2 ** 0.5 + eps  # sqrt(v) / sqrt(bc2) + eps  (eps outside the root)
        w.sub_((lr / bc1) * m / denom)  # W -= (lr/bc1) * m / denom


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 0.01)."""

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


class FullRMSprop(Optimizer):
    """torch.optim.RMSprop: state ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0)
    and ``grad_avg`` (centered), all starting at zero."""

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__()
        check(lr >= 0.0, f"Invalid learning rate: {lr}")
        check(eps >= 0.0, f"Invalid epsilon value: {eps}")
        check(momentum >= 0.0, f"Invalid momentum value: {momentum}")
        check(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        check(alpha >= 0.0, f"Invalid alpha value: {alpha}")
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.weight_decay, self.momentum, self.centered = weight_decay, momentum, centered

    def new_state(self, w):
        s = {"step": 0, "square_avg": torch.zeros_like(w)}
        if self.momentum > 0:
            s["momentum_buffer"] = torch.zeros_like(w)
        if self.centered:
            s["grad_avg"] = torch.zeros_like(w)
        return s

    def update(self, w, g, s):
        lr, a, eps, mu = self.lr, self.alpha, self.eps, self.momentum
        s["step"] += 1  # t = t + 1
        if self.weight_decay != 0:
            g = g + self.weight_decay * w  # g = g + wd*W
        sq = s["square_avg"]
        sq.mul_(a).add_((1 - a) * g * g)  # s = a*s + (1-a)*g^2
        if self.centered:
            s["grad_avg"].mul_(a).add_((1 - a) * g)  # ga = a*ga + (1-a)*g
            denom = (sq - s["grad_avg"] ** 2).sqrt() + eps  # sqrt(s - ga^2) + eps
        else:
            denom = sq.sqrt() + eps  # sqrt(s) + eps
        if mu > 0:
            s["momentum_buffer"].mul_(mu).add_(g / denom)  # b = mu*b + g/denom
            w.sub_(lr * s["momentum_buffer"])  # W -= lr*b
        else:
            w.sub_(lr * g / denom)  # W -= lr*g/denom


class Adagrad(Optimizer):
    """torch.optim.Adagrad: state ``step`` and ``sum`` (starting at initial_accumulator_value)."""

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__()
        check(lr >= 0.0, f"Invalid learning rate: {lr}")
        check(lr_decay >= 0.0, f"Invalid lr_decay value: {lr_decay}")
        check(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
        check(initial_accumulator_value >= 0.0,
              f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        check(eps >= 0.0, f"Invalid epsilon value: {eps}")
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.initial_accumulator_value, self.eps = initial_accumulator_value, eps

    def new_state(self, w):
        return {"step": 0, "sum": torch.full_like(w, self.initial_accumulator_value)}

    def update(self, w, g, s):
        t = s["step"] = s["step"] + 1  # t = t + 1
        if self.weight_decay != 0:
            g = g + self.weight_decay * w  # g = g + wd*W
        clr = self.lr / (1 + (t - 1) * self.lr_decay)  # lr_t = lr / (1 + (t-1)*lr_decay)
        s["sum"].add_(g * g)  # S = S + g^2
        w.sub_(clr * g / (s["sum"].sqrt() + self.eps))  # W -= lr_t * g / (sqrt(S) + eps)
