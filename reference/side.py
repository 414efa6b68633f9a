"""The reference side of a comparison: any nn.Module, with autograd doing the backward.

``layers`` names the modules whose parameters and intermediates are compared,
in order from the input. For each of them, forward hooks catch the tensor that
goes in and the one that comes out; ``torch.autograd.grad`` then gives

    delta      = dL/d(layer output)   (for nn.Linear: dL/d pre-activation)
    error_prev = dL/d(layer input)
    grad_<p>   = dL/d(parameter p)

so that no intermediate is derived by hand here. ``output_error`` (dL/dy) comes the
same way; the own-or-inherited diagnosis (compare.origin) feeds it to the top layer.

``align_kinks(pre, rtol, atol)`` (called by the runner before ``step``) takes the
manual side's pre-activations at kinked layers; ``step`` then moves its own layer
output to the manual's value where the two straddle ReLU's kink within tolerance,
and reports how many as the side quantity ``_kinks`` (see compare.kinks).
"""
import torch

from bpcheck.compare.engines.kinks import KINKS, align

from .layout import to_manual, to_module


class Reference:
    def __init__(self, module, layers, loss_fn, optimizer):
        self.module, self.layers, self.loss_fn, self.optimizer = module, list(layers), loss_fn, optimizer
        self._params = [dict(layer.named_parameters(recurse=False)) for layer in self.layers]
        self._pre = None

    def align_kinks(self, pre, rtol, atol):
        """For the next step only: the manual's pre-activation per layer (None where no kink)."""
        self._pre = (pre, rtol, atol)

    @property
    def params(self):
        """Parameters per layer, in the manual layout (views, not copies)."""
        return [{n: to_manual(layer, n, p.detach()) for n, p in ps.items()} for layer, ps in zip(self.layers, self._params)]

    @torch.no_grad()
    def load(self, params):
        """Copy manual-layout parameters in (lockstep mode does this every step)."""
        for layer, ps, new in zip(self.layers, self._params, params):
            for n, p in ps.items():
                p.copy_(to_module(layer, n, new[n]))

    def step(self, x, t):
        ins, outs = [], []
        (pre, rtol, atol), self._pre = self._pre or (None, None, None), None
        kinks = {}

        def catch(module, args, out):
            i = len(outs)
            if pre is not None and pre[i] is not None and torch.is_tensor(out) and out.shape == pre[i].shape:
                out, kinks[i] = align(out, pre[i], rtol, atol)  # compare.kinks: within tolerance only
            ins.append(args[0])
            outs.append(out)
            return out

        hooks = [layer.register_forward_hook(catch) for layer in self.layers]
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                y = self.module(x)
                loss = self.loss_fn(y, t)
                plist = [p for ps in self._params for p in ps.values()]
                grads = torch.autograd.grad(loss, plist + ins + outs + [y], allow_unused=True)
        finally:
            for h in hooks:
                h.remove()
        n, L = len(plist), len(self.layers)
        pgrads, gin, gout = iter(grads[:n]), grads[n:n + L], grads[n + L:n + 2 * L]
        layers = []
        for i, (layer, ps) in enumerate(zip(self.layers, self._params)):
            q = {"delta": gout[i], "error_prev": gin[i]}
            for name, p in ps.items():
                g = next(pgrads)
                p.grad = g
                q[f"grad_{name}"] = to_manual(layer, name, g)
            if i in kinks:
                q[KINKS] = kinks[i]
            layers.append({k: v for k, v in q.items() if v is not None})
        return {"loss": loss.detach(), "output": y.detach(), "layers": layers, "output_error": grads[-1]}

    def update(self, trace):
        self.optimizer.step()

    def state(self):
        """Optimizer state per layer in the manual layout (RMSprop's square_avg), or None."""
        st = [{n: self.optimizer.state.get(p, {}).get("square_avg") for n, p in ps.items()} for ps in self._params]
        if all(v is None for s in st for v in s.values()):
            return None
        return [{n: to_manual(layer, n, v) for n, v in s.items() if v is not None} for layer, s in zip(self.layers, st)]
