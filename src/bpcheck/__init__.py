"""bpcheck: cross-check hand-derived backprop against PyTorch autograd.

``bpcheck.manual`` holds the hand formulas, ``bpcheck.reference`` the torch.nn
models, ``bpcheck.compare`` the one runner, and ``bpcheck.cases`` the seed systems.
"""
__version__ = "0.1.0"
