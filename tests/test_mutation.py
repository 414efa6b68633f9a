"""A checker that can't fail is worse than none: break a formula, see it named.

Mutants are injected through the public protocol (a subclass or a swapped
activation), never by editing files."""
import pytest
import torch

from bpcheck.compare import run
from bpcheck.compare.summary import first_failure
from bpcheck.manual import MLP
from bpcheck.manual.activations import Sigmoid


def run_with(manual_patch, case="trask", steps=5, **kw):
    from bpcheck.cases import get_case

    base = get_case(case)

    def build(**opts):
        setup = base.build(**opts)
        manual_patch(setup.manual)
        return setup

    from dataclasses import replace

    return run(replace(base, build=build), steps=steps, **kw)


class NoDerivative(Sigmoid):
    def delta(self, error, a, z):
        return error  # missing a(1-a)




@pytest.mark.mutation
def test_missing_derivative_factor_named():
    df = run_with(lambda m: m.acts.__setitem__(1, NoDerivative()))
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 2, "delta")


@pytest.mark.mutation
def test_wrong_sign_named():
    class Flip(Sigmoid):
        def delta(self, error, a, z):
            return -a * (1 - a) * error

    df = run_with(lambda m: m.acts.__setitem__(0, Flip()))
    bad = first_failure(df)
    assert (bad["layer"], bad["quantity"]) == (1, "delta")
    assert not df[(df.layer == 2) & (df.step == 1)]["passed"].eq(False).any()


@pytest.mark.mutation
def test_missing_transpose_named():
    def patch(m):
        orig = m.step

        def step(x, t):
            tr = orig(x, t)
            L = tr["layers"][1]
            W = m.params[1]["weight"]  # (4, 1)
            L["error_prev"] = L["delta"] * W.reshape(1, -1).flip(1)  # delta @ W.T with W's rows reversed
            return tr

        m.step = step

    df = run_with(patch)
    bad = first_failure(df)
    assert (bad["layer"], bad["quantity"]) == (2, "error_prev")
