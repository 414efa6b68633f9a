"""Seed 000's code examples as written: each departure is located by the report."""
import pytest
import torch

from bpcheck.cases import get_case
from bpcheck.compare import run
from bpcheck.compare.diagnosis.summary import first_failure


def test_example1_sse_printed_half_differentiated():
    """Example 1 prints SSE but its error differentiates half of it: the first failure is
    step 1, layer 2, delta, and every backward quantity of layer 2 is exactly half of autograd's."""
    df = run("relu-sigmoid-as-written", steps=3)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 2, "delta")
    s1 = df[df.step == 1].set_index(["layer", "quantity"])
    assert s1.loc[(0, "loss"), "passed"] and s1.loc[(0, "output"), "passed"]
    for q in ("delta", "grad_weight", "error_prev"):
        row = s1.loc[(2, q)]
        assert row["max_rel_diff"] == pytest.approx(0.5, abs=1e-12), q
        assert row["manual_norm"] == pytest.approx(0.5 * row["reference_norm"], rel=1e-12), q


def test_example1_relu_mask_keeps_zero_preactivation():
    """With the loss its error does differentiate (half-SSE), the ReLU mask is the only
    departure: it fails exactly where the pre-activation is 0 (input (0, 0, 1), unit 0),
    at step 1; by step 2 the update has moved that pre-activation off 0."""
    df = run("relu-sigmoid-as-written", steps=5, loss="half_sse")
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"], bad["index"]) == (1, 1, "delta", "2,0")
    assert df[df.layer == 2]["passed"].all()
    assert set(df[~df["passed"]]["step"]) == {1}
    g = df[(df.step == 1) & (df.quantity == "grad_weight") & (df.layer == 1)].iloc[0]
    assert not g["passed"] and g["index"] == "2,0"  # dw1 = x.T @ delta_h carries it to w1[2, 0]
    # The correct case, given the same weights (a zero pre-activation included), agrees with torch.
    setup = get_case("relu-sigmoid-as-written").build(dtype=torch.float64, device="cpu", loss="half_sse")
    z1 = setup.x @ setup.manual.params[0]["weight"]
    assert z1[2, 0] == 0
    weights = [p["weight"].numpy() for p in setup.manual.params]
    assert run("relu-sigmoid", steps=5, weights=weights)["passed"].all()


def test_example2_bias_summed_over_units():
    """b1 += d_hidn.sum() * lr: each hidden bias gets the sum over batch AND units, which is
    the sum of autograd's per-unit gradients; the first failure is step 1, layer 1, grad_bias."""
    df = run("sigmoid-bias-as-written", steps=3)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 1, "grad_bias")
    s1 = df[df.step == 1].set_index(["layer", "quantity"])
    for key in [(2, "delta"), (2, "grad_weight"), (2, "grad_bias"), (2, "error_prev"), (1, "delta"), (1, "grad_weight")]:
        assert s1.loc[key, "passed"], key  # b2's sum is right: the output has one unit
    setup = get_case("sigmoid-bias-as-written").build(dtype=torch.float64, device="cpu")
    m, r = setup.manual.step(setup.x, setup.t), setup.reference.step(setup.x, setup.t)
    mb, rb = m["layers"][0]["grad_bias"], r["layers"][0]["grad_bias"]
    assert torch.all(mb == mb[0]) and mb.shape == rb.shape == (4,)
    torch.testing.assert_close(mb[0], rb.sum(), rtol=1e-14, atol=1e-15)
    assert not torch.allclose(mb, rb)


@pytest.mark.parametrize("case", ["relu-sigmoid-as-written", "sigmoid-bias-as-written"])
def test_as_written_fails_in_free_mode_too(case):
    assert not run(case, steps=5, mode="free")["passed"].all()
