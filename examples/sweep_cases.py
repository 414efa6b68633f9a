"""A case from your own file, for `bpcheck sweep`: a course's network, or your kernel.

examples/sweep.toml names it as `sweep_cases.py:TANH_NET` (relative to the spec's
folder). It is a 3-H-2 tanh network with a linear output and MSE, hand-written on the
manual side (bpcheck.manual.MLP) and as torch.nn on the reference side, both from the
same seeded weights; `hidden` is an option, so a sweep can vary it.
"""
import torch
from torch import nn

from bpcheck.compare import Case, Setup
from bpcheck.manual import MLP, SGD
from bpcheck.reference import LOSS_FNS, Reference


def build(dtype, device, seed=None, hidden=5):
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    W1, W2 = torch.randn(3, hidden, generator=g), torch.randn(hidden, 2, generator=g)  # (in, out) layout
    b1, b2 = torch.zeros(hidden), torch.zeros(2)
    x, t = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    cast = lambda v: v.to(dtype=dtype, device=device)  # noqa: E731
    manual = MLP([cast(W1), cast(W2)], [cast(b1), cast(b2)], ("tanh", "identity"), "mse", SGD(0.1))
    l1, l2 = nn.Linear(3, hidden, dtype=dtype, device=device), nn.Linear(hidden, 2, dtype=dtype, device=device)
    module = nn.Sequential(l1, nn.Tanh(), l2)
    reference = Reference(module, [l1, l2], LOSS_FNS["mse"], torch.optim.SGD(module.parameters(), lr=0.1))
    reference.load([{"weight": cast(W1), "bias": cast(b1)}, {"weight": cast(W2), "bias": cast(b2)}])
    return Setup(manual, reference, cast(x), cast(t))


TANH_NET = Case("tanh-net", "a 3-H-2 tanh network, linear output, MSE, SGD lr 0.1", build, steps=50)
