"""The reference side: any nn.Module, autograd doing the backward, values read at sites.

A **site** is a place in the forward where values are read. It is one of

- a module, named by its ``named_modules()`` path (``"fc2"``, ``"encoder.0.attn"``);
  the module itself, where it owns parameters, is ``"(root)"``;
- a tap, ``bpcheck.tap("name", tensor)`` inside forward: site ``"tap:name"``.

A site called several times in one forward (an ``nn.LSTMCell`` stepped over time, a
tap in a loop) reports each call under ``(quantity, time)`` with time 1, 2, ... in
call order. Per site and call, all from ``torch.autograd.grad`` (nothing derived here):

    delta        dL/d(site output); "delta.k" for the k-th tensor of a tuple output
    error_prev   dL/d(site input), through this site only; "error_prev.k" likewise
    value        the site's output ("value.k"), named mode only
    grad_<p>     dL/dp for each parameter, summed over calls as autograd sums it

and, read by the runner after the update: each parameter ``<p>``, its optimizer state
``<p>.<state>`` under torch's names (``exp_avg``, ``momentum_buffer``, ...), and each
buffer (``running_mean``, ``num_batches_tracked``, ...).

Two ways to build one:

- ``Reference(module, layers, loss_fn, optimizer)``: the seed cases' form. ``layers``
  (modules, from the input up) are the sites, numbered 1..; parameters of other
  modules stay fixed. Optimizer state is reported in the seeds' form (RMSprop's
  ``square_avg`` as ``optimizer_state``) unless ``seed_state=False``; buffers are not read.
- ``Reference.named(module, loss_fn, optimizer, maps=None, x=None)``: every module
  and tap is a site, numbered in the order forward first reaches it; every parameter,
  state tensor and buffer is reported. This is the user path (bpcheck.testing).

Parameters are shown to the manual side through **views** (``reference.layout``): the
default per module type (nn.Linear's transpose, ...), or the user's ``maps``:
``{"site.manual_name": (ref_param_name, view)}`` where ``view(tensor)`` returns a view
of the reference tensor (a slice, a transpose), e.g. four gate matrices into a packed
``weight_ih``. Every element of a mapped parameter must be covered exactly once.
The same view is applied to the parameter's gradient and state, so rows compare in
the manual's layout. ``load`` writes the manual's values through the views.
"""
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.engines.kinks import KINKS, align

from . import taps
from .layout import default_view, to_manual

ROOT = "(root)"


def suffixed(name, k, n):
    """``name`` for a site's only tensor, ``name.k`` for the k-th of n."""
    return name if n == 1 else f"{name}.{k}"


class Reference:
    def __init__(self, module, layers, loss_fn, optimizer, seed_state=True):
        self.module, self.layers, self.loss_fn, self.optimizer = module, list(layers), loss_fn, optimizer
        self.named_mode, self.seed_state = False, seed_state
        self.sites = [f"layer{i}" for i in range(1, len(self.layers) + 1)]  # the seeds' numbering
        self.site_modules = list(self.layers)
        self._params = [dict(layer.named_parameters(recurse=False)) for layer in self.layers]
        self._views = [{n: default_view(layer, n) for n in ps} for layer, ps in zip(self.layers, self._params)]
        self._pre = None

    @classmethod
    def named(cls, module, loss_fn, optimizer, maps=None, x=None, t=None):
        """Every module (and, given a probe input ``x`` and targets ``t``, every tap in the
        forward and the loss) is a site; see the module docstring."""
        ref = cls.__new__(cls)
        ref.module, ref.loss_fn, ref.optimizer, ref._pre = module, loss_fn, optimizer, None
        ref.named_mode, ref.seed_state = True, False
        order = probe_order(module, x, t, loss_fn) if x is not None else []
        mods = dict(module.named_modules())
        listed = [n for n in order if n in mods or n.startswith("tap:")]
        listed += [n for n in mods if n not in listed]  # modules forward never reached, last
        sites, site_modules = [], []
        for n in listed:
            if n == "" and next(module.parameters(recurse=False), None) is None and not list(module.buffers(recurse=False)):
                continue  # the root: its output is the run's "output"
            sites.append(ROOT if n == "" else n)
            site_modules.append(None if n.startswith("tap:") else mods[n])
        ref.sites, ref.site_modules = sites, site_modules
        ref.layers = [m for m in site_modules if m is not None]
        ref._params, ref._views = site_params(sites, site_modules, maps or {})
        return ref

    def restricted(self, names):
        """This named reference with only the module sites ``names`` (in their forward order)
        and every tap: the list form of the user path, where the layers are the sites."""
        keep = [i for i, s in enumerate(self.sites) if s in names or s.startswith("tap:")]
        self.sites = [self.sites[i] for i in keep]
        self.site_modules = [self.site_modules[i] for i in keep]
        self._params = [self._params[i] for i in keep]
        self._views = [self._views[i] for i in keep]
        self.layers = [m for m in self.site_modules if m is not None]
        return self

    def align_kinks(self, pre, rtol, atol):
        """For the next step only: the manual's pre-activation per layer (None where no kink)."""
        self._pre = (pre, rtol, atol)

    @property
    def params(self):
        """Parameters per site, in the manual layout (views, not copies)."""
        return [{n: views[n](p.detach()) for n, p in ps.items()} for ps, views in zip(self._params, self._views)]

    @property
    def buffers(self):
        """Buffers per site (named mode), as the module holds them; [] in the seeds' form."""
        if not self.named_mode:
            return []
        return [{} if m is None else dict(m.named_buffers(recurse=False)) for m in self.site_modules]

    @torch.no_grad()
    def load(self, params, buffers=None):
        """Copy manual-layout parameters (and buffers) in (lockstep mode does this every step)."""
        for ps, views, new in zip(self._params, self._views, params):
            for n, p in ps.items():
                views[n](p.detach()).copy_(new[n])
        for mine, new in zip(self.buffers, buffers or []):
            for n, b in mine.items():
                if n in new:
                    b.copy_(torch.as_tensor(new[n]).to(b.dtype))

    def step(self, x, t):
        (pre, rtol, atol), self._pre = self._pre or (None, None, None), None
        calls = [[] for _ in self.sites]  # per site, per call: (input leaves, output leaves)
        index = {s: i for i, s in enumerate(self.sites)}
        kinks, seen = {}, []

        def before(i):
            def hook(module, args, kwargs):
                leaves, spec = tree_flatten((args, kwargs))
                leaves = [a.view_as(a) if torch.is_tensor(a) and a.requires_grad else a for a in leaves]
                calls[i].append(([a for a in leaves if torch.is_tensor(a)], None))
                return tree_unflatten(leaves, spec)
            return hook

        def after(i):
            def hook(module, args, out):
                if pre is not None and pre[i] is not None and torch.is_tensor(out) and out.shape == pre[i].shape \
                        and not calls[i][:-1]:  # a site's first call only (pre has no time axis)
                    out, kinks[i] = align(out, pre[i], rtol, atol)  # compare.kinks: within tolerance only
                ins, _ = calls[i][-1]
                outs = [o for o in tree_flatten(out)[0] if torch.is_tensor(o)]
                calls[i][-1] = (ins, outs)
                seen.extend((o, o._version) for o in ins + outs)
                return out
            return hook

        def tapped(name, tensor):
            i = index.get(f"tap:{name}")
            if i is None:
                raise UsageError(f"bpcheck.tap({name!r}) was not called in the probe forward pass; "
                                 "taps must be reached on every step")
            calls[i].append(([], [tensor]))
            seen.append((tensor, tensor._version))

        hooks = []
        for i, m in enumerate(self.site_modules):
            if m is not None:
                hooks.append(m.register_forward_pre_hook(before(i), with_kwargs=True))
                hooks.append(m.register_forward_hook(after(i)))
        try:
            with torch.enable_grad(), taps.recording(tapped):
                x = x.detach().requires_grad_(True) if x.is_floating_point() else x
                y = self.module(x)
                loss = self.loss_fn(y, t)
                if not (torch.is_tensor(loss) and loss.numel() == 1):
                    raise UsageError(f"the loss must return a scalar (one number), got "
                                     f"{'shape ' + str(tuple(loss.shape)) if torch.is_tensor(loss) else type(loss).__name__}")
                for tensor, version in seen:
                    if tensor._version != version:
                        raise UsageError("a module changed a tensor that a site reads in place (inplace=True?); "
                                         "bpcheck cannot read dL/d of an overwritten tensor: run it out of place")
                plist = [p for ps in self._params for p in ps.values()]
                wrt = [a for c in calls for ins, outs in c for a in ins if a.requires_grad]
                wrt += [o for c in calls for ins, outs in c for o in outs if o.requires_grad]
                grads = torch.autograd.grad(loss, plist + wrt + [y], allow_unused=True, materialize_grads=True)
        finally:
            for h in hooks:
                h.remove()
        got = dict(zip(map(id, plist + wrt), grads))
        layers = []
        for i, ps in enumerate(self._params):
            q = {}
            many = len(calls[i]) > 1
            # suffixes per site, not per call: an LSTMCell called first without (h, c) still
            # names its input error_prev.0 at time 1, as at every later time
            n_in, n_out = (max((len(c[j]) for c in calls[i]), default=0) for j in (0, 1))
            for c, (ins, outs) in enumerate(calls[i], 1):
                key = (lambda name: (name, c)) if many else (lambda name: name)
                for k, o in enumerate(outs):
                    if id(o) in got:
                        q[key(suffixed("delta", k, n_out))] = got[id(o)]
                    if self.named_mode:
                        q[key(suffixed("value", k, n_out))] = o.detach()
                for k, a in enumerate(ins):
                    if id(a) in got:
                        q[key(suffixed("error_prev", k, n_in))] = got[id(a)]
            for name, p in ps.items():
                g = got[id(p)]
                p.grad = g
                q[f"grad_{name}"] = self._views[i][name](g)
            if i in kinks:
                q[KINKS] = kinks[i]
            layers.append(q)
        return {"loss": loss.detach(), "output": y.detach(), "layers": layers, "output_error": grads[-1]}

    def update(self, trace):
        self.optimizer.step()

    def state(self):
        """Optimizer state per site: {param: {state name: tensor}} (views of the manual layout
        where a state has the parameter's shape; scalars such as ``step`` in the parameter's
        dtype), or None before any. With ``seed_state`` (the seeds' optimizers, SGD and
        RMSprop with alpha and eps only): RMSprop's square_avg per parameter, or None."""
        if self.seed_state:
            st = [{n: self.optimizer.state.get(p, {}).get("square_avg") for n, p in ps.items()} for ps in self._params]
            if all(v is None for s in st for v in s.values()):
                return None
            return [{n: to_manual(layer, n, v) for n, v in s.items() if v is not None}
                    for layer, s in zip(self.layers, st)]
        out = []
        for ps, views in zip(self._params, self._views):
            site = {}
            for n, p in ps.items():
                st = self.optimizer.state.get(p, {})
                site[n] = {k: views[n](v.detach()) if v.shape == p.shape else v.detach().to(p.dtype)
                           for k, v in st.items() if torch.is_tensor(v)}
                if not site[n]:
                    del site[n]
            out.append(site)
        return out if any(out) else None


def probe_order(module, x, t=None, loss_fn=None):
    """Module paths and ``tap:<name>`` in the order one forward (and the loss, given ``t``
    and ``loss_fn``) first reaches them. The probe runs without grad and leaves buffers
    and the RNG state as it found them."""
    order = []
    names = {id(m): n for n, m in module.named_modules()}

    def hook(m, args):
        n = names[id(m)]
        if n not in order:
            order.append(n)

    def tapped(name, tensor):
        if f"tap:{name}" not in order:
            order.append(f"tap:{name}")

    hooks = [m.register_forward_pre_hook(hook) for m in module.modules()]
    try:
        with probing(module, x), taps.recording(tapped):
            y = module(x)
            if loss_fn is not None:
                loss_fn(y, t)
    finally:
        for h in hooks:
            h.remove()
    return order


@contextmanager
def probing(module, x):
    """A forward pass that changes nothing: no grad, the RNG state forked, and the
    module's buffers (BatchNorm's running statistics) put back as they were."""
    saved = {n: b.clone() for n, b in module.named_buffers()}
    devices = [x.device] if torch.is_tensor(x) and x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for n, b in module.named_buffers():
                b.copy_(saved[n])


def site_params(sites, site_modules, maps):
    """Per site ``{manual name: parameter}`` and ``{manual name: view}``: the defaults of
    reference.layout, replaced for the parameters that ``maps`` names; each mapped parameter's
    elements covered exactly once (else UsageError)."""
    bad = [k for k in maps if k.rpartition(".")[0] not in sites]
    if bad:
        raise UsageError(f"maps names {', '.join(sorted(bad))}, but the reference has no such site "
                         f"(sites: {', '.join(s for s in sites if not s.startswith('tap:'))})")
    params, views = [], []
    for site, m in zip(sites, site_modules):
        own = dict(m.named_parameters(recurse=False)) if m is not None else {}
        mine = {k.rpartition(".")[2]: v for k, v in maps.items() if k.rpartition(".")[0] == site}
        ps, vs, mapped = {}, {}, set()
        for name, spec in mine.items():
            ref_name, view = spec if isinstance(spec, tuple) else (spec, lambda w: w)
            if ref_name not in own:
                raise UsageError(f"maps: {site}.{name} -> {ref_name}, but {site} has no parameter {ref_name} "
                                 f"(its parameters: {', '.join(own) or 'none'})")
            ps[name], vs[name] = own[ref_name], view
            mapped.add(ref_name)
        for ref_name in mapped:
            cover(site, ref_name, own[ref_name], {n: vs[n] for n in mine if ps[n] is own[ref_name]})
        for ref_name, p in own.items():
            if ref_name not in mapped:
                ps[ref_name], vs[ref_name] = p, default_view(m, ref_name)
        params.append(ps)
        views.append(vs)
    return params, views


def cover(site, name, p, views):
    """Each element of parameter ``p`` must sit in exactly one of ``views`` ({manual name:
    view}), each a view."""
    count = torch.zeros(p.shape, dtype=torch.int32)
    for manual, view in views.items():
        v = view(count)
        if not (torch.is_tensor(v) and v._base is count or v.data_ptr() == count.data_ptr() and v.shape == count.shape):
            raise UsageError(f"maps: the view for {site}.{manual} (onto {name}) must return a view of the tensor "
                             "(a slice, a transpose), not a copy, so that bpcheck can write through it")
        v += 1
    if not bool((count == 1).all()):
        what = "not covered" if bool((count == 0).any()) else "covered twice"
        raise UsageError(f"maps: elements of {site}.{name} {tuple(p.shape)} are {what} by the manual tensors mapped "
                         f"to it ({', '.join(views)}; a lambda in a loop needs its slice bound as a default argument)")
