"""Checks of a run's input, shared by the Python API and the CLI so that both give the
same one-line message for the same bad input, before anything is built or written.

``check_run_options`` checks what every run takes (steps, mode, device, dtype,
tolerances, seed, chunk, csv/force); ``check_case_options`` checks the options a
case's ``build`` takes (the same rule and message as main's runner.check_options,
which it can replace or be replaced by). Both raise UsageError.
"""
import inspect

import torch

from bpcheck.compare.core.errors import UsageError

RESERVED = ("dtype", "device", "seed")  # build's own arguments, set by run, never case options


def check_run_options(steps, mode, device, dtype, rtol, atol, csv=None, force=False, seed=None, chunk=1):
    """-> (steps, mode, torch.device, torch.dtype, rtol, atol), or UsageError. ``steps``
    may be None (the case's default)."""
    from bpcheck.compare.core.runner import MODES, check_steps, resolve_device, resolve_dtype
    from bpcheck.compare.core.tolerances import tolerance

    if steps is not None:
        check_steps(steps)
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA GPU(s)")
    rtol, atol = tolerance(dt, rtol, atol)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise UsageError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise UsageError(f"chunk must be a positive integer, got {chunk!r}")
    if force and csv is None:
        raise UsageError("force (--force) overwrites a CSV: it needs csv (--csv)")
    return steps, mode, dev, dt, rtol, atol


def case_option_names(case):
    """The options ``case.build`` takes, or None when it takes any (a **kwargs build)."""
    params = inspect.signature(case.build).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in RESERVED]


def check_case_options(case, options):
    """Refuse an option that ``case.build`` does not take."""
    for k in options:
        if k in RESERVED:
            raise UsageError(f"{k!r} is not a case option but an argument of its own (--{k} on the command line)")
    known = case_option_names(case)
    if known is None:
        return
    for k in options:
        if k not in known:
            raise UsageError(f"case {case.name} has no option {k!r} (its options: {', '.join(known) or 'none'})")
