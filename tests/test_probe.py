"""The yardstick's probe (compare.core.probe): it measures each step on that step's own
data, and the loss's allowance carries the output's (first order, autograd's dL/dy)."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from bpcheck.cases import get_case
from bpcheck.compare import run
from bpcheck.compare.core.probe import Probe
from bpcheck.compare.core.runner import _steps
from bpcheck.compare.core.tolerances import rule
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.testing import BackpropMismatch, assert_backprop_close


class TwoLayer:
    """x @ W1 -> tanh -> @ W2, mean squared error; torch's site names, the manual layout
    (W of shape (in, out)); ``slip`` multiplies site 0's grad_weight where |x| > 1."""

    def __init__(self, net, slip=1.0):
        self.params = {s: {"weight": net[int(s)].weight.detach().T.clone(), "bias": net[int(s)].bias.detach().clone()}
                       for s in ("0", "2")}
        self.slip = slip

    def step(self, x, t):
        p = self.params
        z1 = x @ p["0"]["weight"] + p["0"]["bias"]  # (B, 20) @ (20, 30)
        a1 = torch.tanh(z1)
        y = a1 @ p["2"]["weight"] + p["2"]["bias"]  # (B, 30) @ (30, 5)
        loss = ((y - t) ** 2).mean()
        dy = 2 * (y - t) / y.numel()  # dL/dy
        d1 = (dy @ p["2"]["weight"].T) * (1 - a1 ** 2)  # (B, 5) @ (5, 30), times tanh'
        g1 = x.T @ d1 * (self.slip if x.abs().max() > 1 else 1.0)  # (20, B) @ (B, 30)
        return {"loss": loss, "output": y, "sites": {
            "0": {"grad_weight": g1, "grad_bias": d1.sum(0)},
            "2": {"grad_weight": a1.T @ dy, "grad_bias": dy.sum(0)}}}  # (30, B) @ (B, 5)

    def update(self, trace):
        for s, ps in self.params.items():
            for k in ps:
                ps[k] -= 0.01 * trace["sites"][s][f"grad_{k}"]


def batches():
    """Step 1's batch a million times smaller than the others: a probe that measured every
    step on step 1's data would allow the later steps a meaningless amount."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 20, generator=g) * s, torch.randn(16, 5, generator=g) * s)
            for s in (1e-3, 30.0, 30.0, 30.0)]


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_per_step_data_is_probed_on_its_own_batch(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    df = assert_backprop_close(TwoLayer(net), net, batches(), loss="mse", optimizer=0.01, mode=mode,
                               dtype=torch.float32)
    assert (df["rule"] == "yardstick").all()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    with pytest.raises(BackpropMismatch) as e:  # 0.1% on one gradient from step 2 on
        assert_backprop_close(TwoLayer(net, slip=1.001), net, batches(), loss="mse", optimizer=0.01, mode=mode,
                              dtype=torch.float32)
    bad = first_failure(e.value.report)
    assert (int(bad["step"]), bad["site"], bad["quantity"]) == (2, "0", "grad_weight")
    assert bad["margin"] > 10  # before the probe took each step's batch: below 1, a pass


def block_and_probe(case, dtype, steps):
    setup = get_case(case).build(dtype=dtype, device=torch.device("cpu"), seed=0)
    probe = Probe(setup, "lockstep", rule(dtype))
    block = next(iter(_steps(setup, "lockstep", steps, steps, {"manual": None, "reference": None})))
    return setup, probe, block


def test_loss_allowance_carries_the_outputs():
    setup, probe, block = block_and_probe("trask", torch.float32, 1)
    with_carry = probe.atol(block)
    setup, probe, block = block_and_probe("trask", torch.float32, 1)  # the same run again, carry off
    probe._carry_to_loss = lambda block, out: None
    own = probe.atol(block)
    y = block["reference"][(0, None, "output")][0].double()
    slope = (y - setup.t.double()).abs()  # trask's loss is 0.5 sum (y - t)^2: dL/dy = y - t
    expect = own[(0, None, "loss")] + (slope * (own[(0, None, "output")] + probe.rule.rtol * y.abs())).sum()
    assert torch.allclose(with_carry[(0, None, "loss")], expect, rtol=1e-6, atol=0)
    assert (with_carry[(0, None, "loss")] > own[(0, None, "loss")]).all()
    assert all(torch.equal(with_carry[k], own[k]) for k in own if k != (0, None, "loss"))


class LossSlip:
    def __init__(self, manual, change):
        self._m, self._change = manual, change

    def __getattr__(self, name):
        return getattr(self._m, name)

    def step(self, x, t, **kw):
        tr = self._m.step(x, t, **kw)
        tr["loss"] = self._change(tr["loss"])
        return tr


def loss_slipped(case, change):
    base = get_case(case)

    def build(**kw):
        setup = base.build(**kw)
        setup.manual = LossSlip(setup.manual, change)
        return setup

    return replace(base, name=f"{case}-loss-slip", build=build)


@pytest.mark.parametrize("case", ["trask", "mlp"])
@pytest.mark.parametrize("slip", ["float32", "1e-9"])
def test_a_loss_slip_still_fails_in_float64(case, slip):
    change = (lambda v: v.float().double()) if slip == "float32" else (lambda v: v * (1 + 1e-9))
    df = run(loss_slipped(case, change), steps=3)
    bad = first_failure(df)
    assert (int(bad["step"]), int(bad["layer"]), bad["quantity"]) == (1, 0, "loss")
    assert bad["margin"] > 10
