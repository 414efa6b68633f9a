"""bpcheck: cross-check hand-derived backprop against PyTorch autograd.

``bpcheck.manual`` holds the hand formulas, ``bpcheck.reference`` the torch.nn
models, ``bpcheck.compare`` the one runner, and ``bpcheck.cases`` the seed systems.
"""
__version__ = "0.1.0"


def sweep(spec, out, **options):
    """``bpcheck.sweep(SPEC, OUT_DIR, jobs=..., ray=..., resume=...)``: the grid of runs of
    ``bpcheck sweep`` (bpcheck.sweeps.driver.sweep), imported on first use."""
    from bpcheck.sweeps import sweep as run_sweep

    return run_sweep(spec, out, **options)
