"""bpcheck: cross-check hand-derived backprop against PyTorch autograd.

``bpcheck.manual`` holds the hand formulas, ``bpcheck.reference`` the torch.nn
models, ``bpcheck.compare`` the one runner, and ``bpcheck.cases`` the seed systems.

The user path, importable from here (loaded on first use, so ``import bpcheck`` stays cheap):
``assert_backprop_close`` and ``case`` (bpcheck.testing), ``tap`` (bpcheck.reference.taps),
``run`` (bpcheck.compare).
"""
__version__ = "0.1.0"

_LAZY = {"assert_backprop_close": "bpcheck.testing", "case": "bpcheck.testing",
         "tap": "bpcheck.reference.taps", "run": "bpcheck.compare"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bpcheck' has no attribute {name!r}")


def sweep(spec, out, **options):
    """``bpcheck.sweep(SPEC, OUT_DIR, jobs=..., ray=..., resume=...)``: the grid of runs of
    ``bpcheck sweep`` (bpcheck.sweeps.driver.sweep), imported on first use."""
    from bpcheck.sweeps import sweep as run_sweep

    return run_sweep(spec, out, **options)
