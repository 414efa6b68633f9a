"""bpcheck.testing.assert_backprop_close: passes on correct formulas, and on a broken one
fails with a message whose every number is recomputed here independently."""
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bpcheck.compare.core.diff import compare_one
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.manual import MLP, SGD
from bpcheck.manual.activations import Sigmoid
from bpcheck.testing import BackpropMismatch, assert_backprop_close, error_origin

F64 = torch.float64


def data(device="cpu", dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.rand(6, 2, generator=g, dtype=F64)
    W1, b1 = torch.randn(3, 4, generator=g, dtype=F64), 0.1 * torch.randn(4, generator=g, dtype=F64)
    W2, b2 = torch.randn(4, 2, generator=g, dtype=F64), 0.1 * torch.randn(2, generator=g, dtype=F64)
    return [v.to(device=device, dtype=dtype) for v in (x, t, W1, b1, W2, b2)]


def manual_net(W1, b1, W2, b2, lr=0.5):
    return MLP([W1.clone(), W2.clone()], [b1.clone(), b2.clone()], ["sigmoid", "sigmoid"], "half_sse", SGD(lr))


def seq():
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Sigmoid())


class NoDerivative(Sigmoid):
    def delta(self, error, a, z):
        return error  # missing a(1-a)


def test_passes_returns_report_and_starts_reference_from_manual_weights(device):
    x, t, W1, b1, W2, b2 = data(device)
    net, ref = manual_net(W1, b1, W2, b2), seq()  # ref has its own random init: bpcheck loads the manual's
    df = assert_backprop_close(net, ref, x, t, steps=4, optimizer=0.5)
    assert list(df.columns) == list(COLUMNS) and df["passed"].all()
    assert set(df["step"]) == {1, 2, 3, 4} and set(df["layer"]) == {0, 1, 2}
    assert set(df[df.layer == 2]["quantity"]) == {"delta", "error_prev", "grad_weight", "grad_bias", "weight", "bias"}
    assert (df["device"] == str(torch.device(device))).all() and (df["dtype"] == "float64").all()
    assert df["max_abs_diff"].max() < 1e-14
    # both sides trained 4 steps in lockstep: the module now holds the manual weights (layout (out, in))
    torch.testing.assert_close(ref[2].weight.detach().T, net.params[1]["weight"], rtol=0, atol=1e-14)


def test_float32_uses_the_table():
    x, t, *w = data(dtype=torch.float32)
    df = assert_backprop_close(manual_net(*w), seq(), x, t, steps=3, optimizer=0.5)
    # issue 13: the default rule is the measured yardstick (rtol 8 u of float32, atol per row), not torch's table
    assert (df["dtype"] == "float32").all() and (df["rtol"] == 8 * 2.0 ** -24).all() and (df["rule"] == "yardstick").all()
    assert df["atol"].nunique() > 1 and (df["atol"] < 1e-5).all()


def test_the_rule_by_name():
    """torch.testing's table stays available by name from Python too (it was CLI-only)."""
    x, t, *w = data(dtype=torch.float32)
    df = assert_backprop_close(manual_net(*w), seq(), x, t, steps=2, optimizer=0.5, tolerance="torch")
    assert (df["rule"] == "torch").all() and (df["rtol"] == 1.3e-6).all() and (df["atol"] == 1e-5).all()
    with pytest.raises(UsageError, match="unknown tolerance 'loose'"):
        assert_backprop_close(manual_net(*w), seq(), x, t, steps=1, optimizer=0.5, tolerance="loose")


def broken(lr=0.5):
    x, t, *w = data()
    net = manual_net(*w, lr=lr)
    net.acts[1] = NoDerivative()
    return x, t, w, net


def test_failure_message_names_the_row_and_its_numbers():
    x, t, (W1, b1, W2, b2), net = broken()
    with pytest.raises(AssertionError) as info:
        assert_backprop_close(net, seq(), x, t, steps=2, optimizer=0.5, name="mine")
    msg = str(info.value)
    # Independently: step 1's true delta of layer 2 by autograd, and the mutant's (the bare error y - t)
    z2 = torch.sigmoid(x @ W1 + b1) @ W2 + b2
    z2.requires_grad_(True)
    y = torch.sigmoid(z2)
    (true_delta,) = torch.autograd.grad(0.5 * ((y - t) ** 2).sum(), z2)
    wrong = (y - t).detach()
    d = (wrong - true_delta).abs()
    rel = d / true_delta.abs()
    # issue 13: the allowance is the failing row's (the yardstick's atol for that step and quantity)
    from bpcheck.compare.diagnosis.summary import first_failure

    row = first_failure(info.value.report)
    rtol, atol = float(row["rtol"]), float(row["atol"])
    bad = ~torch.isclose(wrong, true_delta, rtol=rtol, atol=atol)
    ia = np.unravel_index(int(d.argmax()), d.shape)
    ir = np.unravel_index(int(rel.argmax()), d.shape)
    assert ia != ir  # this data tells the two indices apart
    assert "Case mine (lockstep, cpu, float64), step 1, 2.delta (the layer's own error" in msg
    assert f"Mismatched elements: {int(bad.sum())} / {d.numel()} " in msg
    assert f"Greatest absolute difference: {float(d.max()):.6g} at index ({ia[0]}, {ia[1]}) (up to {atol:g} allowed)" in msg
    assert f"Greatest relative difference: {float(rel.max()):.6g} at index ({ir[0]}, {ir[1]}) (up to {rtol:g} allowed)" in msg
    # what follows from it is tagged as inherited, from the layer above or from its own gradient
    assert "step 1, 0.delta: max |m - r|" in msg
    assert re.search(r"step 1, 0\.delta: .*\(inherited from step 1 2\.delta\)", msg)
    assert re.search(r"step 1, 2\.grad_weight: .*\(own\)", msg)
    assert re.search(r"step 1, 2\.weight: .*\(inherited from step 1 2\.grad_weight\)", msg)
    assert isinstance(info.value, BackpropMismatch)
    rep = info.value.report
    assert not rep["passed"].all() and list(rep.columns) == list(COLUMNS)


def test_wrong_learning_rate_is_an_own_error_of_the_update():
    x, t, *w = data()
    with pytest.raises(AssertionError) as info:
        assert_backprop_close(manual_net(*w, lr=0.4), seq(), x, t, steps=1, optimizer=0.5)
    msg = str(info.value)
    assert "step 1, 0.weight (the layer's own error" in msg
    rep = info.value.report
    assert rep[rep.quantity.isin(["delta", "error_prev"]) | rep.quantity.str.startswith("grad_")]["passed"].all()


def test_manual_without_update_gets_bpchecks_sgd():
    x, t, *w = data()
    net = manual_net(*w)

    class StepOnly:  # the protocol minus update(): bpcheck applies W -= lr * dW
        params = net.params
        step = staticmethod(net.step)

    df = assert_backprop_close(StepOnly(), seq(), x, t, steps=3, optimizer=0.5)
    assert df["passed"].all() and {"weight", "bias"} <= set(df["quantity"])
    # issue 12: with a torch optimizer, bpcheck applies its manual twin, whose state is compared too
    df = assert_backprop_close(StepOnly(), seq(), x, t, steps=3, optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    assert df["passed"].all() and {"weight.exp_avg", "bias.exp_avg_sq", "weight.step"} <= set(df["quantity"])
    with pytest.raises(UsageError, match="no manual twin for LBFGS"):
        assert_backprop_close(StepOnly(), seq(), x, t, optimizer=lambda p: torch.optim.LBFGS(p))


@pytest.mark.parametrize("make_opt", ["lr", "factory", "instance"])
def test_optimizer_forms(make_opt):
    x, t, *w = data()
    ref = seq()
    opt = {"lr": 0.5, "factory": lambda p: torch.optim.SGD(p, lr=0.5),
           "instance": torch.optim.SGD(ref.parameters(), lr=0.5)}[make_opt]
    assert assert_backprop_close(manual_net(*w), ref, x, t, steps=2, optimizer=opt)["passed"].all()


class Net(nn.Module):
    """fc2 is registered before fc1, so only the forward pass knows the order."""

    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(4, 2)
        self.fc1 = nn.Linear(3, 4)

    def forward(self, x):
        return torch.sigmoid(self.fc2(torch.sigmoid(self.fc1(x))))


def test_bare_module_layers_by_name_or_call_order():
    x, t, *w = data()
    assert assert_backprop_close(manual_net(*w), Net(), x, t, optimizer=0.5)["passed"].all()  # default: call order
    assert assert_backprop_close(manual_net(*w), Net(), x, t, optimizer=0.5, layers=["fc1", "fc2"])["passed"].all()
    with pytest.raises(UsageError, match="listed as fc2, fc1 but forward runs them as fc1, fc2"):
        assert_backprop_close(manual_net(*w), Net(), x, t, layers=["fc2", "fc1"])
    with pytest.raises(UsageError, match=r"no submodule 'fc3' \(its submodules: fc2, fc1\)"):
        assert_backprop_close(manual_net(*w), Net(), x, t, layers=["fc1", "fc3"])


def test_a_layer_run_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    x, t, *w = data()
    with pytest.raises(UsageError, match="fc runs 2 times"):
        assert_backprop_close(manual_net(*w), Twice(), x, t)


def test_bad_input_is_a_usage_error():
    x, t, *w = data()
    with pytest.raises(UsageError, match="0.weight is float64 on cpu, but the run is float32"):
        assert_backprop_close(manual_net(*w), seq(), x, t, dtype="float32")
    with pytest.raises(UsageError, match="unknown loss 'l1'"):
        assert_backprop_close(manual_net(*w), seq(), x, t, loss="l1")
    with pytest.raises(UsageError, match="manual side has 2 layers, reference side has 1"):
        assert_backprop_close(manual_net(*w), nn.Sequential(nn.Linear(3, 2)), x, t)
    with pytest.raises(UsageError, match="manual side has no params"):
        assert_backprop_close(object(), seq(), x, t)
    # integer inputs are data now (token ids, issue 12); a Linear net that can't take them says so
    with pytest.raises(UsageError, match="the reference's forward pass fails on step 1's inputs: RuntimeError"):
        assert_backprop_close(manual_net(*w), seq(), torch.ones(6, 3, dtype=torch.long), t)
    with pytest.raises(UsageError, match="floating-point or integer"):
        assert_backprop_close(manual_net(*w), seq(), torch.ones(6, 3, dtype=torch.bool), t)


def test_compare_one_counts_and_locates():
    r = torch.tensor([[1.0, 2.0, -4.0], [0.0, 1e-3, 10.0]], dtype=F64)
    m = r + torch.tensor([[0.0, 1e-9, 0.3], [0.0, 1e-4, 0.0]], dtype=F64)
    d = compare_one(m, r, rtol=1e-7, atol=1e-7)
    assert (d["mismatched"], d["total"]) == (2, 6)  # 1e-9 <= 1e-7 + 1e-7 * 2 passes; 0.3 and 1e-4 fail
    assert d["abs_index"] == (0, 2) and d["max_abs_diff"] == pytest.approx(0.3)
    assert d["rel_index"] == (1, 1) and d["max_rel_diff"] == pytest.approx(0.1)
    m[1, 0] = float("nan")
    assert compare_one(m, r, 1e-7, 1e-7)["mismatched"] == 3  # NaN never passes
    s = compare_one(torch.tensor(1.0), torch.tensor(1.5), 0.0, 0.1)
    assert (s["mismatched"], s["total"], s["abs_index"]) == (1, 1, ())


def _rows(spec, mode="lockstep"):
    return pd.DataFrame([dict(case="c", mode=mode, step=s, layer=l, time=pd.NA, quantity=q, passed=p)
                         for s, l, q, p in spec])


def test_error_origin_rule():
    df = _rows([(1, 0, "output", True), (1, 2, "delta", True), (1, 2, "grad_weight", False),
                (1, 1, "delta", False), (1, 1, "weight", True), (1, 2, "weight", False)])
    assert error_origin(df, 2) is None  # the first failure
    assert error_origin(df, 3)["quantity"] == "grad_weight"  # a layer above failed first
    assert error_origin(df, 5)["quantity"] == "grad_weight"  # an update inherits its own gradient only
    df2 = _rows([(1, 1, "delta", False), (1, 2, "weight", False)])
    assert error_origin(df2, 1) is None  # layer 1's delta does not feed layer 2's update
    spec = [(1, 1, "delta", False), (2, 1, "delta", False)]
    assert error_origin(_rows(spec), 1) is None  # lockstep: every step starts from the same weights
    assert error_origin(_rows(spec, "free"), 1)["step"] == 1  # free: the trajectories had parted
