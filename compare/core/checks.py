"""Checks of a run's input, shared by the Python API and the CLI so that both give the
same one-line message for the same bad input, before anything is built or written.

``check_run_options`` checks what every run takes (steps, mode, device, dtype,
tolerances, seed, chunk, csv/force); ``check_case_options`` checks the options a
case's ``build`` takes (the same rule and message as main's runner.check_options,
which it can replace or be replaced by). Both raise UsageError.
"""
import inspect
import os
import warnings

import torch

from bpcheck.compare.core.errors import UsageError

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
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
    if dt not in DTYPES:  # float8 and the like: no kernel builds or steps a case in them
        raise UsageError(f"dtype {str(dt).replace('torch.', '')} is not supported "
                         f"({', '.join(str(d).replace('torch.', '') for d in DTYPES)})")
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


MEMORY = ("can't allocate memory", "not enough memory", "out of memory", "Unable to allocate")


def checked_build(build, case, dtype, device, seed, options):
    """``build(case, dtype, device, seed, options)`` (runner.build), with whatever goes
    wrong there a UsageError naming the case: an exception of the case's build (an
    option it cannot take: ``hidden=0``, ``x=[]``, an empty activations tuple), an
    allocation that does not fit (``hidden=2000000000``: numpy's or torch's own
    estimate of the bytes, refused before they are touched), or a build that returns
    something other than a Setup (``check_setup``). KeyboardInterrupt and SystemExit
    pass through."""
    with_options = " with these options" if options else ""
    import_dynamo_without_cache_dir()
    try:
        with warnings.catch_warnings(record=True) as said:  # said again only if the setup is good
            warnings.simplefilter("always")
            setup = build(case, dtype, device, seed, options)
    except UsageError:
        raise
    except MemoryError as e:
        raise UsageError(f"case {case.name}: building it{with_options} needs more memory than there is "
                         f"({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 (a case's build is input: its failure is bad input)
        if any(m in str(e) for m in MEMORY):
            raise UsageError(f"case {case.name}: building it{with_options} needs more memory than there is "
                             f"({_first_line(e)})") from None
        why = f"{type(e).__name__}: {_first_line(e)}"
        raise UsageError(f"case {case.name}: its build failed{with_options} ({why})") from None
    check_setup(case, setup)
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return setup


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_setup(case, setup):
    """Refuse a build's result that no run can take: not a Setup, a side without
    parameters, an empty parameter, or reference parameters that autograd
    cannot differentiate (frozen: ``requires_grad=False``)."""
    from bpcheck.compare.core.protocol import Setup

    if not isinstance(setup, Setup):
        raise UsageError(f"case {case.name}: its build returned {type(setup).__name__}, not a Setup")
    for side in ("manual", "reference"):
        obj = getattr(setup, side)
        try:
            params = obj.params
        except Exception as e:  # noqa: BLE001 (a side that cannot say its parameters)
            raise UsageError(f"case {case.name}: the {side} side has no params ({type(e).__name__}: {e})") from None
        if not isinstance(params, (list, tuple)) or not params:
            raise UsageError(f"case {case.name}: the {side} side's params must be a non-empty list of "
                             f"{{name: tensor}} per layer, got {type(params).__name__}")
        for i, p in enumerate(params, 1):
            if not isinstance(p, dict):
                raise UsageError(f"case {case.name}: {side} layer {i}'s params are {type(p).__name__}, not a dict")
            for n, w in p.items():
                if not torch.is_tensor(w):
                    raise UsageError(f"case {case.name}: {side} layer {i} {n} is {type(w).__name__}, not a tensor")
                if w.numel() == 0:
                    raise UsageError(f"case {case.name}: {side} layer {i} {n} is empty (shape {tuple(w.shape)})")
    for i, ps in enumerate(getattr(setup.reference, "_params", None) or (), 1):
        for n, p in ps.items():
            if not p.requires_grad:
                raise UsageError(f"case {case.name}: reference layer {i} {n} is frozen (requires_grad=False): "
                                 f"autograd gives it no gradient")


def import_dynamo_without_cache_dir():
    """Import torch._dynamo without the empty ``torchinductor_<user>`` folder it makes.

    Every torch.optim optimizer imports torch._dynamo (torch._compile), and that import
    creates torch's compile cache folder in the temporary directory at module level
    (torch._dynamo.package: ``DiskDynamoCache(os.path.join(cache_dir(), "dynamo"))``,
    where ``cache_dir()`` calls ``os.makedirs``). bpcheck compiles nothing, so it imports
    torch._dynamo once with that one ``makedirs`` skipped (the folder is named, not
    made); a later compile by the caller makes it then, at the same path."""
    import sys

    if "torch._dynamo" in sys.modules:
        return
    made = os.makedirs

    def named_only(name, *args, **kw):
        if os.path.basename(os.path.normpath(os.fspath(name))).startswith("torchinductor_"):
            return None
        return made(name, *args, **kw)

    os.makedirs = named_only
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 (optional: the optimizer imports it again, as torch does)
        pass
    finally:
        os.makedirs = made
