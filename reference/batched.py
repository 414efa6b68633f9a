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
import inspect

import torch
from torch.func import functional_call, grad, vmap

from bpcheck.compare.core.errors import Unbatchable
from bpcheck.compare.engines.kinks import KINKS, align
from bpcheck.compare.engines.manualrun import stack_steps

from .layout import to_manual, to_module
from .side import Reference


class BatchedReference:
    def __init__(self, ref, x, t, stacked_xt=False, tol=None):
        """``stacked_xt``: x and t carry a leading axis that matches the states (one copy each).
        ``tol`` (rtol, atol): align ReLU kinks with the manual's pre-activations given to
        ``__call__``, as Reference.align_kinks does step by step (compare.kinks)."""
        if type(ref) is not Reference:
            raise Unbatchable(f"{type(ref).__name__} is not bpcheck.reference.Reference")
        if ref.named_mode:
            raise Unbatchable("named sites (the user path) step in turn for now")
        if {"step", "update", "load", "state"} & set(vars(ref)):
            raise Unbatchable("this Reference has its own step, update, load or state")
        self.ref, self.x, self.t, self.stacked_xt, self.tol = ref, x, t, stacked_xt, tol
        names = {id(p): n for n, p in ref.module.named_parameters()}
        self.names = [{n: names[id(p)] for n, p in ps.items()} for ps in ref._params]
        layer_ids = {id(p) for ps in ref._params for p in ps.values()}
        self.fixed = {n: p.detach() for n, p in ref.module.named_parameters() if id(p) not in layer_ids}
        self.fixed.update({n: b.clone() for n, b in ref.module.named_buffers()})  # never written back
        x1, t1 = (x[0], t[0]) if stacked_xt else (x, t)
        shapes = []

        def catch(module, args, out):
            if not (args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)):
                raise Unbatchable("a hooked layer takes or returns something other than one tensor")
            shapes.append((args[0].shape, out.shape))

        hooks = [layer.register_forward_hook(catch) for layer in ref.layers]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[x1.device] if x1.device.type == "cuda" else []):
                functional_call(ref.module, self.fixed, (x1,), strict=False)
        except Unbatchable:
            raise
        except Exception as e:  # let the straightforward path meet (and report) it
            raise Unbatchable(f"{type(e).__name__}: {e}") from e
        finally:
            for h in hooks:
                h.remove()
        if len(shapes) != len(ref.layers):
            raise Unbatchable("a hooked layer runs more or less than once per forward")
        kw = dict(dtype=x.dtype, device=x.device)
        self.probes_in = [torch.zeros(a, **kw) for a, _ in shapes]
        self.probes_out = [torch.zeros(b, **kw) for _, b in shapes]
        self.xt_dim = 0 if stacked_xt else None
        self._aligned = (None, None)  # (which layers align kinks, the vmapped grad that does), built on first use
        self._grad = vmap(grad(self._loss, argnums=(0, 1, 2), has_aux=True),
                          in_dims=(0, None, None, self.xt_dim, self.xt_dim))
        self._trial(x1, t1)

    def _trial(self, x1, t1):
        """Evaluate the current weights both ways, batched and with Reference.step:
        anything vmap cannot take, or a different set of quantities, is ``Unbatchable``."""
        buffers = {n: b.clone() for n, b in self.ref.module.named_buffers()}
        with torch.random.fork_rng(devices=[x1.device] if x1.device.type == "cuda" else []):
            try:
                one = self.ref.step(x1, t1)
                params = [{n: w[None] for n, w in ps.items()} for ps in self.ref.params]
                index = torch.zeros(1, dtype=torch.long, device=x1.device)
                many = self(params, index)
            except Unbatchable:
                raise
            except Exception as e:  # an op vmap or torch.func does not support, data-dependent flow, ...
                raise Unbatchable(f"{type(e).__name__}: {e}") from e
            finally:
                with torch.no_grad():  # the trial leaves no trace (e.g. batch-norm statistics)
                    for n, b in self.ref.module.named_buffers():
                        b.copy_(buffers[n])
        shapes = lambda tr: [{k: tuple(v.shape) for k, v in q.items()} for q in tr["layers"]]  # noqa: E731
        if shapes(one) != [{k: s[1:] for k, s in q.items()} for q in shapes(many)]:
            raise Unbatchable("the batched evaluation gives other quantities than Reference.step")

    def _loss(self, params, probes_in, probes_out, x, t, pre=None):
        """The reference's loss at one state; params in the manual layout. ``pre``: the
        manual's pre-activation per layer at this state (None where no kink): a hooked
        layer's output is aligned with it first (compare.kinks.align), and the number of
        straddling elements per layer is returned beside the loss and the output."""
        ref = self.ref
        full = dict(self.fixed)
        for layer, names, ps in zip(ref.layers, self.names, params):
            for n, w in ps.items():
                full[names[n]] = to_module(layer, n, w)
        hooks, kinks = [], {}

        def out_hook(i, p_out):
            def hook(m, args, out):
                if pre is not None and pre[i] is not None and out.shape == pre[i].shape:
                    out, kinks[i] = align(out, pre[i], *self.tol)
                return out + p_out
            return hook

        for i, (layer, p_in, p_out) in enumerate(zip(ref.layers, probes_in, probes_out)):
            hooks.append(layer.register_forward_pre_hook(lambda m, args, p=p_in: (args[0] + p,) + tuple(args[1:])))
            hooks.append(layer.register_forward_hook(out_hook(i, p_out)))
        try:
            y = functional_call(ref.module, full, (x,))
        finally:
            for h in hooks:
                h.remove()
        loss = ref.loss_fn(y, t)
        return loss, (loss, y) if pre is None else (loss, y, kinks)

    def bytes_per_state(self):
        """A rough size of one state's evaluation: its probes and parameters, eight times over."""
        n = sum(p.numel() for p in self.probes_in + self.probes_out)
        n += 3 * sum(p.numel() for ps in self.ref._params for p in ps.values())
        return 8 * n * self.x.element_size()

    def __call__(self, params, index=None, pre=None):
        """params: per layer {name: (T, *manual shape)} -> traces stacked over T, in the
        protocol's form: {"loss": (T,), "output": (T, ...), "layers": [{quantity: (T, ...)}]}.
        ``index`` (with stacked x and t): which copy's x and t each state takes. ``pre``
        (with ``tol``): the manual's pre-activations per layer, (T, ...) or None: kinks
        are aligned per state, and each such layer reports its count as ``_kinks``."""
        x, t = (self.x[index], self.t[index]) if self.stacked_xt else (self.x, self.t)
        if pre is None or self.tol is None or all(p is None for p in pre):
            with torch.enable_grad():
                (g_params, g_in, g_out), (loss, y) = self._grad(params, self.probes_in, self.probes_out, x, t)
            kinks = {}
        else:
            kinked = tuple(p is not None for p in pre)
            if self._aligned[0] != kinked:  # built once per run, not per call
                in_dims = (0, None, None, self.xt_dim, self.xt_dim, [0 if k else None for k in kinked])
                self._aligned = kinked, vmap(grad(self._loss, argnums=(0, 1, 2), has_aux=True), in_dims=in_dims)
            aligned = self._aligned[1]
            with torch.enable_grad():
                (g_params, g_in, g_out), (loss, y, kinks) = aligned(params, self.probes_in, self.probes_out, x, t, pre)
        layers = []
        for i, gp in enumerate(g_params):
            q = {"delta": g_out[i], "error_prev": g_in[i]}
            q.update({f"grad_{n}": g for n, g in gp.items()})
            if i in kinks:
                q[KINKS] = kinks[i]
            layers.append(q)
        return {"loss": loss.detach(), "output": y.detach(), "layers": layers}

    def updated(self, params, trace, copies=1):
        """The reference optimizer's step from ``params`` (per layer {name: (T, ...)}) with
        the trace's gradients: (parameters after, optimizer state or None), stacked.

        torch.optim.SGD without momentum has no state and is elementwise: it is applied
        once to the whole stack. An optimizer with state runs step by step, through the
        reference's own optimizer on its own parameters (exactly what Reference.update
        does, without the autograd call); stacked seeds (``copies`` > 1) need SGD."""
        opt = self.ref.optimizer
        if type(opt) is torch.optim.SGD and all(g["momentum"] == 0 for g in opt.param_groups):
            out = []
            for ps, layer_ps, q in zip(params, self.ref._params, trace["layers"]):
                new = {}
                for n, w in ps.items():
                    w = w.detach().clone()
                    w.grad = q[f"grad_{n}"]
                    torch.optim.SGD([w], **self._hyper(layer_ps[n])).step()  # torch.optim's update, on the stack
                    new[n] = w.detach()
                out.append(new)
            return out, None
        if copies > 1:
            raise Unbatchable(f"stacked seeds need an optimizer without state (SGD without momentum), "
                              f"not {type(opt).__name__}")
        return self._in_turn(params, trace)

    def _hyper(self, p):
        """The settings of p's parameter group that torch.optim.SGD takes."""
        group = next(g for g in self.ref.optimizer.param_groups if any(q is p for q in g["params"]))
        return {k: v for k, v in group.items() if k in SGD_SETTINGS}

    @torch.no_grad()
    def _in_turn(self, params, trace):
        ref, T = self.ref, trace["loss"].shape[0]
        after, state = [], []
        for i in range(T):
            ref.load([{n: w[i] for n, w in ps.items()} for ps in params])
            for layer, ps, q in zip(ref.layers, ref._params, trace["layers"]):
                for n, p in ps.items():
                    p.grad = to_module(layer, n, q[f"grad_{n}"][i])
            ref.update(None)  # Reference.update: the optimizer's step
            after.append([{n: w.clone() for n, w in ps.items()} for ps in ref.params])
            s = ref.state()
            state.append(None if s is None else [{n: w.clone() for n, w in d.items()} for d in s])
        return _stack(after), _stack(state)


class Snapshots:
    """Copies of a Reference's parameters, step after step, taken in the module's layout
    (no per-step layout conversion) and converted once per stack by reference.layout."""

    def __init__(self, ref):
        self.ref = ref
        self.plist = [p for ps in ref._params for p in ps.values()]

    @torch.no_grad()
    def take(self):
        return [p.detach().clone() for p in self.plist]

    def stacked(self, snaps):
        """Per-step snapshots -> [{name: (T, *manual shape)}], like stacked ``ref.params``."""
        # step by step, not vmap: functorch's wrappers form reference cycles that hold each
        # chunk's stack until the garbage collector runs (a wide free run grew 7 MB a step)
        cols = iter(zip(*snaps))
        return [{n: stack_steps([to_manual(layer, n, w) for w in next(cols)]) for n in ps}
                for layer, ps in zip(self.ref.layers, self.ref._params)]


SGD_SETTINGS = set(inspect.signature(torch.optim.SGD).parameters) - {"self", "params"}


def _stack(per_step):
    if per_step[0] is None:
        return None
    return [{n: torch.stack([p[i][n] for p in per_step]) for n in d} for i, d in enumerate(per_step[0])]
