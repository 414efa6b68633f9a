"""ReLU's kink: a legitimately ambiguous element is said, not failed; a wrong
derivative at z == 0 still fails."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bpcheck.cases.mlp import relu_sigmoid
from bpcheck.compare import Case, Setup, run
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.engines.faults import reference_step
from bpcheck.compare.engines.kinks import KINKS, kink_rows, straddles
from bpcheck.compare.diagnosis.summary import first_failure, format_summary
from bpcheck.manual import MLP, SGD
from bpcheck.manual.activations import ReLU
from bpcheck.manual.xp import xp
from bpcheck.reference import LOSS_FNS, Reference
from bpcheck.testing import BackpropMismatch, assert_backprop_close

from mutants import ZERO, ReLUMaskAtZero


class Float64Linear(nn.Linear):
    """nn.Linear that computes z in float64 and rounds once: the same function, other rounding."""

    def forward(self, x):
        return nn.functional.linear(x.double(), self.weight.double(), self.bias.double()).to(x.dtype)


class NoPre(MLP):
    """A manual side that does not report its pre-activations (no kink information)."""

    def step(self, x, t):
        tr = super().step(x, t)
        del tr["pre"]
        return tr


def straddle_case(manual_cls=MLP):
    """float32, z = x @ W1 + b1 with x = (1, 1), W1 = (1, 2^-30), b1 = -1: exactly 2^-30.
    The manual's float32 matmul rounds 1 + 2^-30 to 1, so its z is 0 (relu' = 0); the
    reference's float64 linear keeps z = 2^-30 (relu' = 1). Both are right for their z."""

    def build(dtype, device, seed=None):
        W1 = torch.tensor([[1.0], [2.0 ** -30]], dtype=dtype)
        b1 = torch.tensor([-1.0], dtype=dtype)
        W2 = torch.tensor([[1.5]], dtype=dtype)
        b2 = torch.tensor([0.0], dtype=dtype)
        x = torch.tensor([[1.0, 1.0]], dtype=dtype)
        t = torch.tensor([[0.3]], dtype=dtype)
        manual = manual_cls([W1.clone(), W2.clone()], [b1.clone(), b2.clone()], ("relu", "identity"), "sse", SGD(0.1))
        l1, l2 = Float64Linear(2, 1, dtype=dtype), nn.Linear(1, 1, dtype=dtype)
        module = nn.Sequential(l1, nn.ReLU(), l2, nn.Identity())
        ref = Reference(module, [l1, l2], LOSS_FNS["sse"], torch.optim.SGD(module.parameters(), lr=0.1))
        ref.load([{"weight": W1, "bias": b1}, {"weight": W2, "bias": b2}])
        return Setup(manual, ref, x, t)

    return Case("straddle", "a hidden z on either side of ReLU's kink by rounding", build, steps=3)


def test_straddling_element_is_noted_not_failed():
    case = straddle_case()
    setup = case.build(dtype=torch.float32, device="cpu")
    tr = setup.manual.step(setup.x, setup.t)
    assert tr["pre"][0].item() == 0.0  # the precondition: the manual's z is exactly 0
    df = run(case, dtype="float32")
    assert df["passed"].all(), df[~df["passed"]]
    k = kink_rows(df)
    assert list(zip(k["step"], k["layer"], k["quantity"], k["note"])) == [(s, 1, "delta", "kink:1") for s in (1, 2, 3)]
    assert "kinks: 3 delta row(s)" in format_summary(df)


def test_without_kink_information_the_same_element_fails():
    """Proof that the note is doing work: with no ``pre`` in the trace the delta fails."""
    df = run(straddle_case(NoPre), dtype="float32")
    bad = df[(df["step"] == 1) & (df["layer"] == 1) & (df["quantity"] == "delta")]
    assert not bad["passed"].any()  # (the output fails first: relu(2^-30) on one side, 0 on the other)
    assert kink_rows(df).empty


def test_wrong_derivative_at_zero_is_not_excused_by_a_kink():
    """ReLU' = 1 at z == 0 departs from the convention both sides share: it fails, kink or not."""
    class Mutant(MLP):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.acts[0] = ReLUMaskAtZero()

    df = run(straddle_case(Mutant), dtype="float32")
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 1, "delta")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_zero_on_both_sides_is_no_kink(dtype):
    """relu-sigmoid on data that puts one hidden z exactly at 0 on both sides: the
    correct manual passes with no kink note; the mutant with derivative 1 at 0 fails."""
    setup = relu_sigmoid(dtype=getattr(torch, dtype), device="cpu", **ZERO)
    setup.manual.step(setup.x, setup.t)
    assert (setup.manual.zs[0] == 0).sum() == 1
    df = run("relu-sigmoid", steps=3, dtype=dtype, **ZERO)
    assert df["passed"].all() and kink_rows(df).empty


def test_straddles_criterion():
    z_m = torch.tensor([0.0, 1e-9, -1e-9, 0.0, 0.5, -2e-5])
    z_r = torch.tensor([1e-9, -1e-9, 1e-9, 0.0, 0.5, 1e-9])
    got = straddles(z_m, z_r, rtol=1.3e-6, atol=1e-5).tolist()
    # opposite sides and close: yes; same side or equal: no; opposite but 2e-5 apart: no
    assert got == [True, True, True, False, False, False]
    assert np.all(~straddles(z_r, z_r, 0.0, 0.0).numpy())


REPLAY = dict(steps=80, dtype="float32")  # >= REPLAY_MIN_STEPS: the lockstep replay, on the numpy twin
EXACT = ["step", "layer", "time", "quantity", "index", "passed", "note"]


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_the_fast_engines_align_kinks(mode):
    """The batched reference aligns the straddling element at every recorded state (the
    free loop at every step, from the lean trajectory's z), as the straightforward path
    does step by step: the same rows, verdicts and kink notes."""
    fast, slow = run(straddle_case(), mode=mode, **REPLAY), run(straddle_case(), mode=mode, fast=False, **REPLAY)
    assert fast.attrs["engine"] == ("replay" if mode == "lockstep" else "free") + "+numpy"
    assert slow.attrs["engine"] == "step"
    assert len(kink_rows(fast)) > 0 and fast["passed"].all()
    pd.testing.assert_frame_equal(fast[EXACT], slow[EXACT])


def test_wrong_derivative_at_zero_is_not_excused_on_the_replay(monkeypatch):
    def mask_at_zero(self, error, a, z):
        return xp(error).where(z >= 0, error, 0)  # derivative 1 at z == 0

    monkeypatch.setattr(ReLU, "delta", mask_at_zero)  # the built-in class: the numpy twin runs it
    df = run(straddle_case(), **REPLAY)
    assert df.attrs["engine"] == "replay+numpy"
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 1, "delta")


def test_a_nan_filled_step_counts_no_kinks():
    """A reference that refuses non-finite weights gets a NaN step (compare.faults), shaped
    like an aligned step: a kink count of 0 in the layers that count them, so a chunk
    of such steps stacks like any other."""
    setup = straddle_case().build(dtype=torch.float32, device="cpu")
    mt = setup.manual.step(setup.x, setup.t)
    ref = setup.reference
    with torch.no_grad():
        ref._params[0]["weight"].fill_(float("nan"))

    def refuse(x, t):
        raise RuntimeError("all elements of input should be between 0 and 1")

    ref.step = refuse
    tr = reference_step(ref, setup.x, setup.t, mt, (1.3e-6, 1e-5))
    assert tr["layers"][0][KINKS].item() == 0 and KINKS not in tr["layers"][1]
    assert torch.isnan(tr["layers"][0]["delta"]).all()


class ReluBySite:
    """A 6-32-3 ReLU network by site, mean squared error; ``pre`` its trace's pre-activations
    (True: ``{"0": z1}``; False: none; or any value to pass as is)."""

    def __init__(self, ref, pre=True):
        self.params = {s: {"weight": ref[int(s)].weight.detach().T.clone(), "bias": ref[int(s)].bias.detach().clone()}
                       for s in ("0", "2")}
        self.pre = pre

    def step(self, x, t):
        p0, p2 = self.params["0"], self.params["2"]
        z1 = x @ p0["weight"] + p0["bias"]  # (B, 6) @ (6, 32)
        h = z1.clamp(min=0)
        y = h @ p2["weight"] + p2["bias"]  # (B, 32) @ (32, 3)
        dy = 2 * (y - t) / y.numel()  # dL/dy of mean((y - t)^2)
        dz1 = (dy @ p2["weight"].T) * (z1 > 0)  # (B, 3) @ (3, 32), times relu'
        trace = {"loss": ((y - t) ** 2).mean(), "output": y,
                 "sites": {"2": {"grad_weight": h.T @ dy, "grad_bias": dy.sum(0)},
                           "0": {"delta": dz1, "grad_weight": x.T @ dz1, "grad_bias": dz1.sum(0)}}}
        if self.pre is not False:
            trace["pre"] = {"0": z1} if self.pre is True else self.pre
        return trace


def relu_by_site(pre, steps=20):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3)).to(torch.bfloat16)
    x, t = torch.randn(64, 6, dtype=torch.bfloat16), torch.randn(64, 3, dtype=torch.bfloat16)
    return assert_backprop_close(ReluBySite(ref, pre), ref, x, t, steps=steps, optimizer=0.05, loss="mse")


def test_named_sites_align_kinks_from_their_pre():
    df = relu_by_site(True)
    assert (df["rule"] == "yardstick").all()
    noted = df[df["note"].str.startswith("kink:")]
    assert len(noted) > 0 and set(noted["site"]) == {"0"} and set(noted["quantity"]) == {"delta"}


def test_without_pre_a_relu_run_says_its_kinks_were_not_aligned(capsys):
    with pytest.raises(BackpropMismatch) as e:
        relu_by_site(False)
    msg = str(e.value)
    assert "Kinks not aligned" in msg and "1 (ReLU)" in msg and "trace['pre']" in msg
    report = e.value.report
    assert report.attrs["kinks_unreported"] == {"ReluBySite": ["1 (ReLU)"]}
    summary = format_summary(report, kinks_unreported=report.attrs["kinks_unreported"])
    assert "kinks not aligned" in summary


def test_a_pre_naming_an_unknown_site_is_refused():
    with pytest.raises(UsageError, match="'pre' names sites fc9"):
        relu_by_site({"fc9": torch.zeros(1)}, steps=1)
