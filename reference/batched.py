"""The reference side on many weight states at once: one autograd evaluation per batch.

In lockstep mode the reference's gradients at step t depend only on the weights at
step t, so the runner records the manual side's weights and hands them here in
stacks of (T, ...). ``BatchedReference`` evaluates the same module, loss and
hooked layers as ``Reference.step``, for every state of the stack at once:

* ``torch.func.functional_call`` runs the module with the state's parameters
  (converted to the module's layout by reference.layout, inside the function);
* forward hooks add a zero *probe* to each hooked layer's input and output, so
  ``torch.func.grad`` with respect to the probes gives exactly what
  ``Reference.step`` gets from ``torch.autograd.grad`` on the hooked tensors:
  ``delta = dL/d(layer output)`` and ``error_prev = dL/d(layer input)``;
* ``torch.func.vmap`` maps that over the stack.

Every number still comes from autograd; nothing is derived by hand here. The
optimizer's update is applied by torch.optim itself (``updated``).
"""
import torch
from torch.func import functional_call, grad, vmap

from .layout import to_manual, to_module
from .side import Reference


class Unbatchable(Exception):
    """This reference cannot be evaluated in batches; the runner steps it one state at a time."""


class BatchedReference:
    def __init__(self, ref, x, t, stacked_xt=False):
        """``stacked_xt``: x and t carry a leading axis that matches the states (one copy each)."""
        if type(ref) is not Reference:
            raise Unbatchable(f"{type(ref).__name__} is not bpcheck.reference.Reference")
        self.ref, self.x, self.t, self.stacked_xt = ref, x, t, stacked_xt
        names = {id(p): n for n, p in ref.module.named_parameters()}
        self.names = [{n: names[id(p)] for n, p in ps.items()} for ps in ref._params]
        layer_ids = {id(p) for ps in ref._params for p in ps.values()}
        self.fixed = {n: p.detach() for n, p in ref.module.named_parameters() if id(p) not in layer_ids}
        self.fixed.update(dict(ref.module.named_buffers()))
        x1, t1 = (x[0], t[0]) if stacked_xt else (x, t)
        shapes = []

        def catch(module, args, out):
            if not (args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)):
                raise Unbatchable("a hooked layer takes or returns something other than one tensor")
            shapes.append((args[0].shape, out.shape))

        hooks = [layer.register_forward_hook(catch) for layer in ref.layers]
        try:
            with torch.no_grad():
                ref.module(x1)
        finally:
            for h in hooks:
                h.remove()
        if len(shapes) != len(ref.layers):
            raise Unbatchable("a hooked layer runs more or less than once per forward")
        kw = dict(dtype=x.dtype, device=x.device)
        self.probes_in = [torch.zeros(a, **kw) for a, _ in shapes]
        self.probes_out = [torch.zeros(b, **kw) for _, b in shapes]
        xt_dim = 0 if stacked_xt else None
        self._grad = vmap(grad(self._loss, argnums=(0, 1, 2), has_aux=True), in_dims=(0, None, None, xt_dim, xt_dim))

    def _loss(self, params, probes_in, probes_out, x, t):
        """The reference's loss at one state; params in the manual layout."""
        ref = self.ref
        full = dict(self.fixed)
        for layer, names, ps in zip(ref.layers, self.names, params):
            for n, w in ps.items():
                full[names[n]] = to_module(layer, n, w)
        hooks = []
        for layer, p_in, p_out in zip(ref.layers, probes_in, probes_out):
            hooks.append(layer.register_forward_pre_hook(lambda m, args, p=p_in: (args[0] + p,) + tuple(args[1:])))
            hooks.append(layer.register_forward_hook(lambda m, args, out, p=p_out: out + p))
        try:
            y = functional_call(ref.module, full, (x,))
        finally:
            for h in hooks:
                h.remove()
        loss = ref.loss_fn(y, t)
        return loss, (loss, y)

    def __call__(self, params):
        """params: per layer {name: (T, *manual shape)} -> traces stacked over T, in the
        protocol's form: {"loss": (T,), "output": (T, ...), "layers": [{quantity: (T, ...)}]}."""
        with torch.enable_grad():
            (g_params, g_in, g_out), (loss, y) = self._grad(params, self.probes_in, self.probes_out, self.x, self.t)
        layers = []
        for i, gp in enumerate(g_params):
            q = {"delta": g_out[i], "error_prev": g_in[i]}
            q.update({f"grad_{n}": g for n, g in gp.items()})
            layers.append(q)
        return {"loss": loss.detach(), "output": y.detach(), "layers": layers}

    def updated(self, params, trace):
        """The parameters after the reference optimizer's step from ``params`` with the
        trace's gradients, for every state at once: torch.optim.SGD (no momentum: no
        state, elementwise) applied to the stacked tensors. Other optimizers carry state
        from step to step: ``Unbatchable``."""
        opt = self.ref.optimizer
        if type(opt) is not torch.optim.SGD or any(g["momentum"] != 0 for g in opt.param_groups):
            raise Unbatchable(f"{type(opt).__name__} with state")
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        out = []
        for ps, layer_ps, q in zip(params, self.ref._params, trace["layers"]):
            new = {}
            for n, w in ps.items():
                hyper = {k: v for k, v in group_of[id(layer_ps[n])].items() if k != "params"}
                w = w.detach().clone()
                w.grad = q[f"grad_{n}"]
                torch.optim.SGD([w], **hyper).step()  # the update rule of torch.optim, on the stack
                new[n] = w.detach()
            out.append(new)
        return out
