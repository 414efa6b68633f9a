"""Check your own backward against autograd: ``assert_backprop_close``.

It builds a one-off Case from your objects and runs it through the one runner
(``bpcheck.compare.run``), so the rows, tolerances and verdicts are exactly those
of ``bpcheck run``. It returns the report when every row passes and raises
``AssertionError`` otherwise, with a message in torch.testing.assert_close's style.

Decisions, documented once here (and in the README's "Check your own backward"):

- ``manual`` follows the protocol (``bpcheck.compare.core.protocol``): ``params``,
  ``step(x, t)`` and ``update(trace)``. ``update`` may be left out: bpcheck then
  applies plain SGD (``W -= lr * dW``, bpcheck.manual.SGD) with the learning rate of
  ``optimizer``. ``manual`` may also be an ``nn.Module`` whose backward is yours
  (a custom ``torch.autograd.Function``): it is wrapped like the reference, and
  autograd calls your backward.
- ``reference`` is any ``nn.Module`` (or an object that already follows the
  reference protocol, e.g. ``bpcheck.reference.Reference``). Its **layers** are
  ``layers=`` (module names from ``named_modules()``, or the modules themselves),
  listed from the input up; by default, every submodule that owns parameters
  directly (for an ``nn.Sequential``: its Linear/Conv/... entries). Either way one
  probe forward pass (no grad) checks that each layer runs exactly once per forward
  and in the listed order; the default takes the order in which forward calls them.
- ``loss``: a name from ``bpcheck.reference.LOSS_FNS`` or a callable
  ``loss(output, targets) -> scalar``. Default ``"half_sse"``, ``1/2 sum((y - t)^2)``:
  the loss whose gradient is the seeds' ``error = output - target``.
- ``optimizer`` (reference side): a learning rate (plain ``torch.optim.SGD``), a
  factory ``params -> torch.optim.Optimizer``, or an Optimizer already built on the
  reference's parameters. Default: SGD with lr 1.0 (seed 004's ``syn += l.T @ delta``).
- ``dtype``/``device``: default to those of the manual side's first parameter.
  Modules are moved there with ``Module.to`` (in place); a protocol object must
  already live there (bpcheck cannot move its tensors), else UsageError. Inputs and
  floating-point targets are cast; integer targets (class labels) only moved.
- Before step 1 the reference is loaded with the manual side's weights, so both
  start from the same point whatever their initialisation. Both sides are then
  trained for ``steps`` steps: your objects are changed, as by any training run.
- For the message, each side's values at every step are kept (the failing pair is
  then re-compared in full, ``compare.diff.compare_one``); for runs of many
  thousands of steps on big layers call ``bpcheck.compare.run`` directly.
"""
import copy
import numbers

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from bpcheck.compare.core.diff import compare_one
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.compare.core.runner import check_sides, resolve_device, resolve_dtype, run
from bpcheck.compare.core.sites import ManualSide
from bpcheck.compare.diagnosis.summary import first_failure, unaligned_kinks
from bpcheck.data import Data
from bpcheck.manual.optim import SGD, from_torch
from bpcheck.reference import LOSS_FNS, Reference
from bpcheck.reference.side import probing

# Modules whose training-mode forward draws random numbers (check_deterministic).
RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

DEFAULT_LOSS = "half_sse"
DEFAULT_LR = 1.0
LISTED = 30  # failing rows of the first failing step named after the headline


class BackpropMismatch(AssertionError):
    """Raised by assert_backprop_close; ``report`` holds the full DataFrame."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def assert_backprop_close(manual, reference, inputs, targets=None, *, steps=None, mode="lockstep", device=None,
                          dtype=None, rtol=None, atol=None, layers=None, loss=DEFAULT_LOSS, optimizer=None,
                          maps=None, unmatched="error", name=None, csv=None, progress=None, tolerance=None):
    """Run ``manual`` beside ``reference`` for ``steps`` steps and assert that every step, site
    and quantity agrees within tolerance (default: the dtype's row of
    bpcheck.compare.core.tolerances). Returns the report DataFrame; raises BackpropMismatch
    (an AssertionError) naming the first failing row. ``tolerance``: the rule by name,
    ``"yardstick"`` (the default) or ``"torch"`` (torch.testing's table); ``rtol`` and
    ``atol`` (both) make it ``"user"``. ``csv`` (a path or a ReportWriter) and
    ``progress`` are passed to the runner. See the module docstring for the rest.

    Under pytest a failure shows the caller's line and bpcheck's message, not bpcheck's
    own frames: this frame is hidden (``__tracebackhide__``), and a UsageError raised
    deeper (the runner, the checks) is raised again from here with its traceback cut."""
    __tracebackhide__ = True
    try:
        dtype, device = _where(manual, dtype, device)
        data = Data(inputs, targets, steps)
        case, sides = make_case(manual, reference, data, layers=layers, loss=loss, optimizer=optimizer,
                                maps=maps, name=name)
        report = run(case, steps=data.steps, mode=mode, device=device, dtype=dtype, rtol=rtol, atol=atol,
                     tolerance=tolerance, csv=csv, progress=progress, unmatched=unmatched)
    except UsageError as e:
        raise e.with_traceback(None) from None  # the message says it all; the frames are bpcheck's
    if report["passed"].astype(bool).all():
        return report
    raise BackpropMismatch(failure_message(report), report)


def case(name, build, steps=1, description=None):
    """A Case for ``bpcheck run FILE.py:NAME`` (and ``bpcheck.compare.run``) from your objects.

    ``build(dtype, device)`` returns a dict of assert_backprop_close's arguments:
    ``manual``, ``reference``, ``inputs``, ``targets`` and, optionally, ``loss``,
    ``optimizer``, ``layers``, ``maps``, ``unmatched``. It is called for every run (and
    again for the own-or-inherited replay), so build fresh objects inside it. ``steps``
    is the default number of steps; per-step data that runs out ends the run earlier."""
    def build_case(dtype, device, seed=None):
        kw = build(dtype, device)
        if not isinstance(kw, dict) or not {"manual", "reference", "inputs"} <= set(kw):
            raise UsageError(f"case {name}: build(dtype, device) must return a dict with manual, reference, "
                             f"inputs (and targets, loss, optimizer, ...); got {type(kw).__name__}")
        known = {"manual", "reference", "inputs", "targets", "loss", "optimizer", "layers", "maps", "unmatched"}
        extra = sorted(set(kw) - known)
        if extra:
            raise UsageError(f"case {name}: build returned unknown keys {', '.join(extra)} (known: {', '.join(sorted(known))})")
        data = Data(kw["inputs"], kw.get("targets"), steps)
        one, _ = make_case(kw["manual"], kw["reference"], data, layers=kw.get("layers"), loss=kw.get("loss", DEFAULT_LOSS),
                           optimizer=kw.get("optimizer"), maps=kw.get("maps"), name=name)
        setup = one.build(dtype, device)
        setup.unmatched = kw.get("unmatched")
        return setup

    return Case(name, description or f"{name} (your own backward)", build_case, steps=steps)


def make_case(manual, reference, data, *, layers=None, loss=DEFAULT_LOSS, optimizer=None, maps=None, name=None):
    """A Case built from the user's objects (``data``: a ``Data``), and a dict that will hold
    its two sides. The first build takes the objects themselves (the run trains them, as
    any training run would) and keeps a deep copy of them as they were; a rebuild (the
    diagnosis replaying a step) takes a fresh copy of that, so it never touches yours."""
    sides, first = {}, {}

    def build(dtype, device, seed=None):
        if not first:
            try:
                first["objects"] = copy.deepcopy((manual, reference, optimizer))
            except Exception as e:  # noqa: BLE001 (an object that cannot be copied: no replay, the run stands)
                first["objects"] = e
            return build_from(manual, reference, optimizer, dtype, device)
        if isinstance(first["objects"], Exception):
            raise UsageError(f"cannot replay the run: its objects cannot be copied ({first['objects']})")
        return build_from(*copy.deepcopy(first["objects"]), dtype, device)

    def build_from(manual, reference, optimizer, dtype, device):
        loss_fn = _loss(loss)
        x, t = data.start(dtype, device)
        if isinstance(manual, nn.Module) and isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError("with an nn.Module on both sides give optimizer as a learning rate or a "
                             "factory (params -> Optimizer), not one Optimizer instance")
        named = _named(manual)
        ref = _reference(reference, "reference", layers, loss_fn, optimizer, x, t, dtype, device, named, maps)
        man = _manual(manual, ref, layers, loss_fn, optimizer, x, t, dtype, device, maps)
        if named:
            check_site_params(man, ref)
        check_sides(man, ref)
        ref.load(man.params, *([man.buffers] if getattr(man, "buffers", None) else []))
        sides["manual"], sides["reference"] = man, ref
        return Setup(man, ref, x, t, batch=data.batch)

    label = name or type(manual).__name__
    return Case(label, f"{label} (assert_backprop_close)", build, steps=1), sides


def check_site_params(man, ref):
    """A manual side named by site: each site's parameter names and shapes against the
    reference's (as its views show them), in messages that name the site and say how to map."""
    for site, mine, theirs, module in zip(ref.sites, man.params, ref.params, ref.site_modules):
        if set(mine) != set(theirs):
            extra, lacking = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
            raise UsageError(f"{site}: the manual side's parameters {', '.join(extra) or '(none)'} are not the "
                             f"reference's {', '.join(lacking)}; name them as {type(module).__name__} does, or "
                             f"declare each with maps={{'{site}.<manual name>': ('<reference name>', view)}}")
        for n in mine:
            if tuple(mine[n].shape) != tuple(theirs[n].shape):
                layout = (f" ({type(module).__name__}.{n} is shown transposed by default; keep torch's layout "
                          f"with maps={{'{site}.{n}': ('{n}', lambda w: w)}})"
                          if len(theirs[n].shape) == 2 and tuple(mine[n].shape) == tuple(theirs[n].shape)[::-1] else "")
                raise UsageError(f"{site}.{n}: manual shape {tuple(mine[n].shape)} != reference shape "
                                 f"{tuple(theirs[n].shape)} as the manual sees it{layout}")


def _named(manual):
    return not isinstance(manual, nn.Module) and isinstance(getattr(manual, "params", None), dict)


def _where(manual, dtype, device):
    """The run's dtype and device: given, or those of the manual side's first parameter."""
    first = None
    if isinstance(manual, nn.Module):
        first = next((p for p in manual.parameters() if p.is_floating_point()), None)
    else:
        ps = getattr(manual, "params", None)
        ps = list(ps.values()) if isinstance(ps, dict) else ps
        if isinstance(ps, (list, tuple)):
            first = next((v for p in ps if isinstance(p, dict) for v in p.values()
                          if isinstance(v, (torch.Tensor, np.ndarray))), None)
            if isinstance(first, np.ndarray):
                first = torch.from_numpy(first[:0] if first.ndim else first.reshape(1)[:0])
    dtype = resolve_dtype(dtype if dtype is not None else (first.dtype if first is not None else torch.float64))
    device = resolve_device(device if device is not None else (first.device if first is not None else "cpu"))
    return dtype, device


def _loss(loss):
    if isinstance(loss, str):
        if loss not in LOSS_FNS:
            raise UsageError(f"unknown loss {loss!r} (known: {', '.join(LOSS_FNS)}, or a callable)")
        return LOSS_FNS[loss]
    if not callable(loss):
        raise UsageError(f"loss must be a name or a callable loss(output, targets), got {loss!r}")
    return loss


def _reference(obj, role, layers, loss_fn, optimizer, x, t, dtype, device, named, maps, like=None):
    """The reference side: an nn.Module wrapped as bpcheck.reference.Reference, or a protocol object."""
    if not isinstance(obj, nn.Module):
        if not hasattr(obj, "load"):
            raise UsageError(f"the {role} side needs load(params) (an nn.Module gets it from "
                             "bpcheck.reference.Reference)")
        return obj
    obj.to(device=device, dtype=dtype)
    check_deterministic(obj, x, role)
    if named:  # every module and tap is a site
        ref = Reference.named(obj, loss_fn, None, maps=maps, x=x, t=t)
    elif like is not None:  # a manual nn.Module: the reference's sites, in the reference's form
        ref = Reference.named(obj, loss_fn, None, x=x, t=t).restricted(like.sites) if like.named_mode else None
        if ref is None:
            ref = Reference(obj, find_layers(obj, layers, x, role), loss_fn, None)
            ref.sites = like.sites
    else:
        found = find_layers(obj, layers, x, role)
        names = {id(m): n or "(root)" for n, m in obj.named_modules()}
        ref = Reference(obj, found, loss_fn, None)
        ref.sites = [names[id(m)] for m in found]
        if maps or needs_named(ref, optimizer):
            ref = Reference.named(obj, loss_fn, None, maps=maps, x=x, t=t).restricted(ref.sites)
    params = [p for ps in ref._params for p in ps.values()]
    ref.optimizer = _optimizer(optimizer, list(dict.fromkeys(params)), role)
    return ref


def needs_named(ref, optimizer):
    """Whether the seeds' form of a reference would leave something uncompared: buffers at
    its sites, or an optimizer with state other than plain SGD and RMSprop's square_avg."""
    if any(next(m.buffers(recurse=False), None) is not None for m in ref.layers):
        return True
    if optimizer is None or _is_number(optimizer):
        return False
    return True  # a factory or an Optimizer: its state is compared under torch's names


def check_deterministic(module, x, role):
    """Refuse a module whose forward draws random numbers in training mode (dropout): the
    two sides cannot draw the same mask, so their values cannot be compared element by
    element. Dropout modules are named; any other randomness shows as two probe forwards,
    under two RNG seeds, that disagree."""
    random = [n for n, m in module.named_modules() if m.training and isinstance(m, RANDOM) and m.p > 0]
    if random:
        raise UsageError(f"the {role} module has {', '.join(f'{n} ({type(module.get_submodule(n)).__name__})' for n in random)} "
                         "in training mode: its mask is random, so the two sides cannot be compared element by "
                         "element; call .eval() on it (or set p=0) for the check")
    outs = []
    for seed in (0, 1):
        try:
            with probing(module, x):
                torch.manual_seed(seed)
                outs.append(tree_flatten(module(x))[0])
        except Exception as e:  # noqa: BLE001 (the user's module on the user's data: one line)
            raise UsageError(f"the {role}'s forward pass fails on step 1's inputs: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if any(torch.is_tensor(a) and not torch.equal(a, b) for a, b in zip(*outs)):
        raise UsageError(f"the {role} module's forward draws random numbers (two forward passes under two seeds "
                         "disagree), so the two sides cannot be compared element by element; make it "
                         "deterministic for the check (.eval(), p=0)")


def _manual(obj, ref, layers, loss_fn, optimizer, x, t, dtype, device, maps):
    """The manual side in the runner's numbered form (compare.core.sites.ManualSide)."""
    if isinstance(obj, nn.Module):
        side = _reference(obj, "manual", layers, loss_fn, optimizer, x, t, dtype, device, False, None, like=ref)
        if len(side.params) != len(ref.params):
            raise UsageError(f"manual side has {len(side.params)} layers, reference side has {len(ref.params)}")
        return side
    for attr in ("params", "step"):
        if not hasattr(obj, attr):
            raise UsageError(f"the manual side has no {attr}: give an nn.Module or an object with "
                             "params, step(x, t) and update(trace) (bpcheck.compare.core.protocol)")
    p = obj.params
    if not (isinstance(p, dict) and all(isinstance(v, dict) for v in p.values())
            or isinstance(p, (list, tuple)) and all(isinstance(v, dict) for v in p)):
        raise UsageError("the manual side's params must be a list of dicts {name: tensor}, one per layer, "
                         "or a dict {site: {name: tensor}}")
    update = None
    if not hasattr(obj, "update"):
        update = default_update(optimizer, ref)
    return ManualSide(obj, ref.sites, dtype, device, update)


def default_update(optimizer, ref):
    """The update bpcheck applies for a manual side without update(): the manual twin of the
    reference's optimizer (bpcheck.manual.optim). A gradient whose shape differs from its
    parameter's leaves that parameter as it is: its grad_ row fails with a shape note."""
    if optimizer is None or _is_number(optimizer):
        opt = SGD(DEFAULT_LR if optimizer is None else float(optimizer))
    else:
        opt = from_torch(ref.optimizer)  # UsageError for an optimizer without a manual twin

    def update(params, trace):
        grads = []
        for i, (p, q) in enumerate(zip(params, trace["layers"])):
            missing = [n for n in p if f"grad_{n}" not in q]
            if missing:
                raise UsageError(f"the manual side has no update() and its trace lacks grad_{missing[0]} at "
                                 f"{ref.sites[i]}, which bpcheck's update needs")
            grads.append({n: q[f"grad_{n}"] for n in p if q[f"grad_{n}"].shape == p[n].shape})
        opt.step([{n: v for n, v in p.items() if n in g} for p, g in zip(params, grads)], grads)

    update.optimizer = opt
    return update


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _optimizer(optimizer, params, role):
    if optimizer is None or _is_number(optimizer):
        lr = DEFAULT_LR if optimizer is None else float(optimizer)
        return torch.optim.SGD(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not all(id(p) in held for p in params):
            raise UsageError(f"the optimizer does not hold the {role} module's parameters")
        return optimizer
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise UsageError(f"optimizer(params) returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
    raise UsageError("optimizer must be a learning rate, a factory params -> Optimizer, or an Optimizer; "
                     f"got {optimizer!r}")


def find_layers(module, layers, x, role="reference"):
    """The modules of ``module`` that count as layers, from the input up.

    ``layers``: names from ``module.named_modules()`` or modules; None picks every
    submodule that owns parameters directly. One probe forward (no grad) checks
    that each runs exactly once; the default is sorted into the order forward runs them,
    an explicit list must already be in that order."""
    named = dict(module.named_modules())
    names = {id(m): n or "(the module itself)" for n, m in named.items()}
    if layers is None:
        found = [m for m in named.values() if next(m.parameters(recurse=False), None) is not None]
        if not found:
            raise UsageError(f"the {role} module owns no parameters")
    else:
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        found = []
        for item in layers:
            if isinstance(item, str):
                if item not in named:
                    known = ", ".join(n for n in named if n) or "none"
                    raise UsageError(f"the {role} module has no submodule {item!r} (its submodules: {known})")
                found.append(named[item])
            elif isinstance(item, nn.Module) and id(item) in names:
                found.append(item)
            else:
                raise UsageError(f"layers must name submodules of the {role} module, got {item!r}")
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append(id(mod))) for m in found]
    try:
        with probing(module, x):
            module(x)
    finally:
        for h in hooks:
            h.remove()
    for m in found:
        n = calls.count(id(m))
        if n != 1:
            raise UsageError(f"{role} layer {names[id(m)]} runs {n} times in one forward pass; "
                             "each layer must run exactly once (name the layers with layers=[...])")
    order = [m for i in calls for m in found if id(m) == i]
    if layers is None:
        return order
    if order != found:
        raise UsageError(f"{role} layers are listed as {', '.join(names[id(m)] for m in found)} but forward "
                         f"runs them as {', '.join(names[id(m)] for m in order)}: list them from the input up")
    return found


def error_origin(report, pos):
    """Whether the failing row at position ``pos`` of ``report`` is the layer's own error.

    Returns None (own) or the report row it is inherited from. A simple rule, kept in
    this one function so that a finer test (issue 5: rerun the layer's backward on the
    reference's upstream delta) can replace it:

    - free mode: any failure at an earlier step (the trajectories had already parted);
    - a backward row (delta, error_prev, grad_*, and delta.k, error_prev.k of a tuple): a
      failure earlier in the same step at another layer, i.e. in the forward pass or in a
      layer above, or at another call of the same site (a later time step, whose error
      flows back into this one; a grad_ row sums every call);
    - an updated parameter or optimizer state: a failure of its own gradient, same step.
    """
    row = report.iloc[pos]
    bad = ~report["passed"].astype(bool).to_numpy()
    before = bad & (report["case"] == row["case"]).to_numpy() & (np.arange(len(report)) < pos)
    step = report["step"].to_numpy()
    if row["mode"] == "free" and (before & (step < row["step"])).any():
        return report.iloc[int(np.flatnonzero(before & (step < row["step"]))[0])]
    here = before & (step == row["step"])
    q, layer = row["quantity"], report["layer"].to_numpy()
    if row["layer"] == 0 or q.split(".")[0] in ("delta", "error_prev") or q.startswith("grad_"):
        # another site, or another call of this one (a later time, or the calls its grad_ sums)
        time = report["time"].fillna(-1).to_numpy()
        row_time = -1 if pd.isna(row["time"]) else row["time"]
        src = here & ((layer != row["layer"]) | (time != row_time))
    else:
        pname = "weight" if q == "optimizer_state" else q.removeprefix("optimizer_state_")
        src = here & (layer == row["layer"]) & (report["quantity"] == f"grad_{pname}").to_numpy()
    return report.iloc[int(np.flatnonzero(src)[0])] if src.any() else None


def _at(index):
    return f" at index {index}" if index else ""


def site_label(row):
    """``fc2.grad_weight``, ``tap:bnvar.delta[3]`` (time 3), ``0.delta`` (an nn.Sequential's
    first entry), ``layer2.delta`` (a seed case), ``loss``."""
    site, layer = row.get("site", ""), int(row["layer"])
    t = "" if pd.isna(row["time"]) else f"[{int(row['time'])}]"
    return f"{row['quantity']}{t}" if not site or layer == 0 else f"{site}.{row['quantity']}{t}"


def _where_label(row):
    return f"step {int(row['step'])}, {site_label(row)}"


def _origin_text(src):
    if src is None:
        return "own"
    return f"inherited from step {int(src['step'])} {site_label(src)}"


def failure_message(report):
    """torch.testing.assert_close-style text for the first failing row of ``report``; the two
    tensors of that row come from ``report.attrs["failure"]`` (the runner keeps them)."""
    bad = first_failure(report)
    pos = int(np.flatnonzero(~report["passed"].astype(bool).to_numpy())[0])
    step = int(bad["step"])
    held = report.attrs.get("failure") or {}
    shaped = "manual" in held and held["manual"].shape == held["reference"].shape
    src = error_origin(report, pos)
    own = ("the layer's own error: nothing computed before it in this step failed" if src is None
           else _origin_text(src))
    lines = ["Backprop is not close to autograd!", "",
             f"Case {bad['case']} ({bad['mode']}, {bad['device']}, {bad['dtype']}), {_where_label(bad)} ({own})."]
    if shaped:
        d = compare_one(held["manual"], held["reference"], float(bad["rtol"]), float(bad["atol"]))
        lines += [
            f"Mismatched elements: {d['mismatched']} / {d['total']} ({100 * d['mismatched'] / max(d['total'], 1):.1f}%)",
            f"Greatest absolute difference: {d['max_abs_diff']:.6g}{_at(d['abs_index'])} "
            f"(up to {float(bad['atol']):g} allowed)",
            f"Greatest relative difference: {d['max_rel_diff']:.6g}{_at(d['rel_index'])} "
            f"(up to {float(bad['rtol']):g} allowed)",
            "An element passes when |manual - reference| <= atol + rtol * |reference|."]
    if bad["note"]:
        lines.append(f"Note: {bad['note']}")
    unaligned = (report.attrs.get("kinks_unreported") or {}).get(bad["case"])
    if unaligned:
        lines.append(unaligned_kinks(unaligned)[0].upper() + unaligned_kinks(unaligned)[1:] + ".")
    fails = np.flatnonzero(~report["passed"].astype(bool).to_numpy())[1:]
    first = [int(i) for i in fails if report["step"].iat[i] == step]
    later = [int(i) for i in fails if report["step"].iat[i] != step]
    if first:
        lines.append(f"Also failing at step {step}:")
        for i in first[:LISTED]:
            row = report.iloc[i]
            lines.append(f"  {_where_label(row)}: max |m - r| {row['max_abs_diff']:.3g} "
                         f"({_origin_text(error_origin(report, i))})")
        if len(first) > LISTED:
            lines.append(f"  ... and {len(first) - LISTED} more")
    if later:
        lo, hi = int(report["step"].iloc[later].min()), int(report["step"].iloc[later].max())
        lines.append(f"And {len(later)} failing rows at step{f's {lo} to {hi}' if hi > lo else f' {lo}'}, "
                     f"of {len(report)} rows in all.")
    lines.append("The full report is this exception's .report attribute.")
    return "\n".join(lines)
