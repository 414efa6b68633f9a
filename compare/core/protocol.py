"""The protocol every case follows: the project's main extension point.

A **manual side** is any object with

``params``
    a list, one entry per layer from the input up, of dicts ``{name: tensor}``
    in the manual layout (``x @ W``, W of shape (in, out)); updated in place.
``step(x, t) -> trace``
    forward and backward, no update. ``trace`` is a dict:
    ``{"loss": scalar, "output": tensor, "layers": [ {quantity: tensor}, ... ]}``
    with, per layer, any of ``delta`` (dL/d pre-activation), ``error_prev``
    (dL/d layer input) and ``grad_<name>`` for each parameter. A quantity key may
    also be ``(quantity, time)`` for per-time-step values of a recurrent layer.
    Return fresh tensors: the runner keeps them.
``update(trace)``
    apply the optimizer to ``params``.
``state()`` (optional)
    optimizer state per layer, ``[{name: tensor}]`` or None.
``trace_line(step, trace, stopped) -> str | None`` (optional, manual side only)
    the line(s) a seed prints for this step, for ``bpcheck run --print-trace``
    (``run(..., on_trace=print)``). The runner calls it after the step's update,
    or, at the step where this side's stop rule fired, with ``stopped=True`` and
    no update. A trace may carry extra keys for it (the runner compares only
    ``loss``, ``output`` and ``layers``); ``update`` may add keys too.
``trace["pre"]`` (optional)
    a list, one entry per layer, of the pre-activation z where the layer's
    activation has a kink at z == 0 (ReLU), else None. Not a report row: the
    runner uses it to tell an element that legitimately straddles the kink
    from a wrong formula (compare.kinks).
``layer_backward(layer, error) -> {quantity: tensor}`` (optional)
    layer ``layer``'s backward (numbered as in the report: 1 is nearest the
    input) from ``error`` = dL/d(the layer's output), on the cache of the last
    ``step``'s forward and the current ``params``: the same ``delta``,
    ``grad_<name>`` and ``error_prev`` that ``step`` reports for the layer when
    given the same error. The runner calls it to tell a layer's own error from
    one inherited from above (compare.origin). Its formulas must be the ones
    ``step`` uses (MLP.step calls it for every layer).

Keys whose quantity starts with ``_`` (e.g. ``_kinks``) are side information,
never compared.

A **reference side** follows the same protocol; ``bpcheck.reference.Reference``
wraps any nn.Module, the modules that count as its layers, a loss and a
torch.optim optimizer, and adds ``load(params)`` for lockstep mode. Optionally,
``align_kinks(pre, rtol, atol)`` (called with the manual's ``pre`` before each
``step``) and ``trace["output_error"]`` (dL/dy, for the top layer's
own-or-inherited rerun).

A **case** is a name, a description and a ``build(dtype, device, seed, **options)``
that returns a ``Setup``: both sides built from the same initial weights and data.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class Setup:
    manual: Any
    reference: Any
    x: torch.Tensor
    t: torch.Tensor
    stop_below: Optional[float] = None  # stop when a side's loss falls below this (seed 003)
    # Stop rule as a predicate on a side's trace, checked after each forward (before the
    # update); it replaces stop_below, e.g. seed 002's |delta_z| < 1e-5 on a signed loss.
    stop_when: Optional[Callable[[dict], bool]] = None
    # Per-step data: batch(step) -> (x, t) for step 1, 2, ... (x and t above are step 1's);
    # raises compare.core.errors.DataExhausted when there is none (the run ends there).
    # The fast engines take fixed data only, so such a run steps in turn.
    batch: Optional[Callable[[int], tuple]] = None
    unmatched: Optional[str] = None  # the case's own run(unmatched=...), where it sets one


@dataclass
class Case:
    name: str
    description: str
    build: Callable[..., Setup]
    steps: int = 100  # default number of steps (the most, where stop_below is set)
    as_written: bool = False  # reproduces a seed's code that departs from backprop: expected to fail
    options: dict = field(default_factory=dict)  # options the CLI may pass to build
