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
import numbers

import numpy as np
import pandas as pd
import torch
from torch import nn

from bpcheck.cases.common import as_tensor
from bpcheck.compare.core.diff import compare_one
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.compare.core.runner import _state, check_sides, observe, resolve_device, resolve_dtype, run
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual.optim import SGD
from bpcheck.reference import LOSS_FNS, Reference

DEFAULT_LOSS = "half_sse"
DEFAULT_LR = 1.0
LISTED = 30  # failing rows of the first failing step named after the headline


class BackpropMismatch(AssertionError):
    """Raised by assert_backprop_close; ``report`` holds the full DataFrame."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def assert_backprop_close(manual, reference, inputs, targets, *, steps=1, mode="lockstep", device=None,
                          dtype=None, rtol=None, atol=None, layers=None, loss=DEFAULT_LOSS, optimizer=None,
                          name=None, csv=None, progress=None):
    """Run ``manual`` beside ``reference`` for ``steps`` steps on (``inputs``, ``targets``) and
    assert that every step, layer and quantity agrees within tolerance (default: the dtype's
    row of bpcheck.compare.core.tolerances). Returns the report DataFrame; raises BackpropMismatch
    (an AssertionError) naming the first failing row. ``csv`` (a path or a ReportWriter) and
    ``progress`` are passed to the runner. See the module docstring for the defaults."""
    dtype, device = _where(manual, dtype, device)
    case, sides = make_case(manual, reference, inputs, targets, layers=layers, loss=loss,
                            optimizer=optimizer, name=name)
    report = run(case, steps=steps, mode=mode, device=device, dtype=dtype, rtol=rtol, atol=atol,
                 csv=csv, progress=progress)
    if report["passed"].astype(bool).all():
        return report
    raise BackpropMismatch(failure_message(report, sides["manual"].seen, sides["reference"].seen), report)


def make_case(manual, reference, inputs, targets, *, layers=None, loss=DEFAULT_LOSS, optimizer=None, name=None):
    """A Case built from the user's objects, and the dict that will hold its two recorded sides."""
    sides = {}

    def build(dtype, device, seed=None):
        loss_fn = _loss(loss)
        x = as_tensor(inputs, "inputs", dtype, device)
        t = torch.as_tensor(targets if isinstance(targets, torch.Tensor) else np.asarray(targets))
        t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        if isinstance(manual, nn.Module) and isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError("with an nn.Module on both sides give optimizer as a learning rate or a "
                             "factory (params -> Optimizer), not one Optimizer instance")
        man, man_update = _side(manual, "manual", layers, loss_fn, optimizer, x, dtype, device)
        ref, _ = _side(reference, "reference", layers, loss_fn, optimizer, x, dtype, device)
        if not hasattr(ref, "load"):
            raise UsageError("the reference side needs load(params) "
                             "(an nn.Module gets it from bpcheck.reference.Reference)")
        check_sides(man, ref)
        ref.load(man.params)  # both sides start from the manual side's weights
        rec = Recorded(man, man_update), Recorded(ref)
        if not sides:  # the run's own build; a later rebuild (the own-or-inherited replay) keeps these
            sides["manual"], sides["reference"] = rec
        return Setup(*rec, x, t)

    label = name or type(manual).__name__
    return Case(label, f"{label} (assert_backprop_close)", build, steps=1), sides


class Recorded:
    """Passes a side's protocol through and keeps what the runner observes at each step
    (the same ``observe``), so that a failing pair can be re-compared in full."""

    def __init__(self, side, update=None):
        self.side, self._update, self.seen = side, update, []

    @property
    def params(self):
        return self.side.params

    def step(self, x, t):
        return self.side.step(x, t)

    def update(self, trace):
        (self._update or self.side.update)(trace)
        self.seen.append(observe(trace, self.side.params, _state(self.side)))

    def __getattr__(self, name):  # load, state: only where the side has them
        return getattr(self.side, name)


def _where(manual, dtype, device):
    """The run's dtype and device: given, or those of the manual side's first parameter."""
    first = None
    if isinstance(manual, nn.Module):
        first = next((p for p in manual.parameters() if p.is_floating_point()), None)
    elif isinstance(getattr(manual, "params", None), (list, tuple)):
        first = next((v for p in manual.params for v in p.values() if isinstance(v, torch.Tensor)), None)
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


def _side(obj, role, layers, loss_fn, optimizer, x, dtype, device):
    """A protocol side for ``obj`` and, for a manual object without update(), the update bpcheck applies."""
    if isinstance(obj, nn.Module):
        obj.to(device=device, dtype=dtype)
        found = find_layers(obj, layers, x, role)
        params = [p for m in found for p in m.parameters(recurse=False)]
        return Reference(obj, found, loss_fn, _optimizer(optimizer, params, role)), None
    for attr in ("params", "step"):
        if not hasattr(obj, attr):
            raise UsageError(f"the {role} side has no {attr}: give an nn.Module or an object with "
                             "params, step(x, t) and update(trace) (bpcheck.compare.core.protocol)")
    if not isinstance(obj.params, (list, tuple)) or not all(isinstance(p, dict) for p in obj.params):
        raise UsageError(f"the {role} side's params must be a list of dicts {{name: tensor}}, one per layer")
    for i, p in enumerate(obj.params, 1):
        for n, v in p.items():
            if not isinstance(v, torch.Tensor) or v.dtype != dtype or v.device.type != device.type:
                got = f"{v.dtype} on {v.device}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise UsageError(f"the {role} side's layer {i} {n} is {got}, but the run is "
                                 f"{str(dtype).replace('torch.', '')} on {device}: build it there")
    if hasattr(obj, "update"):
        return obj, None
    if optimizer is not None and not _is_number(optimizer):
        raise UsageError(f"the {role} side has no update(); bpcheck can only apply plain SGD for it, "
                         "so give optimizer as a learning rate, or write update(trace)")
    sgd = SGD(DEFAULT_LR if optimizer is None else float(optimizer))

    def update(trace):
        try:
            grads = [{n: q[f"grad_{n}"] for n in p} for p, q in zip(obj.params, trace["layers"])]
        except KeyError as e:
            raise UsageError(f"the {role} side has no update() and its trace lacks {e.args[0]}, "
                             "which bpcheck's SGD needs") from None
        sgd.step(obj.params, grads)  # W -= lr * dW

    return obj, update


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _optimizer(optimizer, params, role):
    if optimizer is None or _is_number(optimizer):
        lr = DEFAULT_LR if optimizer is None else float(optimizer)
        return torch.optim.SGD(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not all(id(p) in held for p in params):
            raise UsageError(f"the optimizer does not hold the {role} module's layer parameters")
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
        with torch.no_grad():
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
    - a backward row (delta, error_prev, grad_*): a failure earlier in the same step at
      another layer, i.e. in the forward pass or in a layer above;
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
    if row["layer"] == 0 or q in ("delta", "error_prev") or q.startswith("grad_"):
        src = here & (layer != row["layer"])
    else:
        pname = "weight" if q == "optimizer_state" else q.removeprefix("optimizer_state_")
        src = here & (layer == row["layer"]) & (report["quantity"] == f"grad_{pname}").to_numpy()
    return report.iloc[int(np.flatnonzero(src)[0])] if src.any() else None


def _at(index):
    return f" at index {index}" if index else ""


def _where_label(row):
    t = "" if pd.isna(row["time"]) else f", time {int(row['time'])}"
    return f"step {int(row['step'])}, layer {int(row['layer'])}{t}, quantity {row['quantity']}"


def _origin_text(src):
    if src is None:
        return "own"
    t = "" if pd.isna(src["time"]) else f" time {int(src['time'])}"
    return f"inherited from step {int(src['step'])} layer {int(src['layer'])}{t} {src['quantity']}"


def failure_message(report, manual_seen, reference_seen):
    """torch.testing.assert_close-style text for the first failing row of ``report``."""
    bad = first_failure(report)
    pos = int(np.flatnonzero(~report["passed"].astype(bool).to_numpy())[0])
    key = (int(bad["layer"]), None if pd.isna(bad["time"]) else int(bad["time"]), bad["quantity"])
    step = int(bad["step"])
    m, r = manual_seen[step - 1][key], reference_seen[step - 1][key]
    d = compare_one(m, r, float(bad["rtol"]), float(bad["atol"]))
    src = error_origin(report, pos)
    own = ("the layer's own error: nothing computed before it in this step failed" if src is None
           else _origin_text(src))
    lines = [
        "Backprop is not close to autograd!",
        "",
        f"Case {bad['case']} ({bad['mode']}, {bad['device']}, {bad['dtype']}), {_where_label(bad)} ({own}).",
        f"Mismatched elements: {d['mismatched']} / {d['total']} ({100 * d['mismatched'] / max(d['total'], 1):.1f}%)",
        f"Greatest absolute difference: {d['max_abs_diff']:.6g}{_at(d['abs_index'])} "
        f"(up to {float(bad['atol']):g} allowed)",
        f"Greatest relative difference: {d['max_rel_diff']:.6g}{_at(d['rel_index'])} "
        f"(up to {float(bad['rtol']):g} allowed)",
        "An element passes when |manual - reference| <= atol + rtol * |reference|.",
    ]
    if bad["note"]:
        lines.append(f"Note: {bad['note']}")
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
