"""Seed 003: every printed figure, the departure of its back(), and RMSprop's state.

The seed prints Python floats (float64, repr), so "to the digits printed" is
exact: the -as-written cases reproduce every printed line character for
character, on the CPU in float64. (On CUDA, exp differs from the C library's
in the last ulp for some inputs; the figures are asserted on the CPU only.)
"""
import pytest
import torch
from torch import nn

from bpcheck.cases import get_case
from bpcheck.cli import main
from bpcheck.compare import run
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual.optim import RMSprop

# The seed's printed SGD run: the first four and the last two of 111 steps.
PRINTED_SGD = {
    1: "step = 1: yp = 0.6902834929076443, Error = 0.01810390383656677",
    2: "step = 2: yp = 0.6820312027460466, Error = 0.016567679386586154",
    3: "step = 3: yp = 0.6739592936119999, Error = 0.015130917916992996",
    4: "step = 4: yp = 0.6660860653430867, Error = 0.013792290550574028",
    110: "step = 110: yp = 0.500455314229855, Error = 1.036555239542297e-07",
    111: "step = 111: yp = 0.5004302844701667, Error = 9.2572362633313e-08",
}
# The seed's printed RMSprop run: every step.
PRINTED_RMSPROP = [
    "step = 1: yp = 0.6902834929076443, Error = 0.01810390383656677",
    "step = 2: yp = 0.6118790538896405, Error = 0.006258461349620539",
    "step = 3: yp = 0.5593494607066376, Error = 0.0017611792430843605",
    "step = 4: yp = 0.5301730589054645, Error = 0.00045520674185631563",
    "step = 5: yp = 0.5151484953395415, Error = 0.00011473845552605596",
    "step = 6: yp = 0.5075810359788381, Error = 2.873605325621872e-05",
    "step = 7: yp = 0.5037909668833773, Error = 7.185714955431785e-06",
    "step = 8: yp = 0.5018953359787233, Error = 1.7961492361214424e-06",
    "step = 9: yp = 0.5009475298860605, Error = 4.48906442488917e-07",
    "step = 10: yp = 0.5004736747645289, Error = 1.1218389127573745e-07",
    "step = 11: yp = 0.5002367820786155, Error = 2.803287637675012e-08",
]


def traced(case, **kw):
    lines = []
    df = run(case, on_trace=lines.append, **kw)
    return df, lines


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_sgd_as_written_reproduces_every_printed_line(mode):
    df, lines = traced("sigmoid221-sgd-as-written", mode=mode)
    assert len(lines) == 111  # "111 steps": step 111 is the forward that finds E < 1e-7
    for step, line in PRINTED_SGD.items():
        assert lines[step - 1] == line
    assert df.attrs["stopped"]["sigmoid221-sgd-as-written"]["manual"] == 111


@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_rmsprop_as_written_reproduces_every_printed_line(mode):
    df, lines = traced("sigmoid221-rmsprop-as-written", mode=mode)
    assert lines == PRINTED_RMSPROP
    assert df.attrs["stopped"]["sigmoid221-rmsprop-as-written"]["manual"] == 11


@pytest.mark.parametrize("case, step2, steps", [
    ("sigmoid221-sgd", "step = 2: yp = 0.6820185832642942, Error = 0.016565382326770402", 111),
    ("sigmoid221-rmsprop", "step = 2: yp = 0.6111142613827681, Error = 0.00617318954131906", 11),
])
def test_true_backprop_departs_from_the_printed_run_at_step_2(case, step2, steps):
    """True backprop: same step 1 and the same step counts, another step 2 (bpcheck's own figures)."""
    df, lines = traced(case)
    assert lines[0] == PRINTED_RMSPROP[0]
    assert lines[1] == step2 != (PRINTED_SGD[2] if "sgd" in case else PRINTED_RMSPROP[1])
    assert len(lines) == steps
    assert df.attrs["stopped"][case] == {"manual": steps, "reference": steps}
    assert df["passed"].all()
    assert df["max_abs_diff"].max() < 1e-15  # float64 rounding, values of order 1


@pytest.mark.parametrize("case", ["sigmoid221-sgd", "sigmoid221-rmsprop"])
def test_free_mode_reference_stops_at_the_same_step(case):
    df = run(case, mode="free")
    assert df["passed"].all()
    assert df.attrs["stopped"][case] == ({"manual": 111, "reference": 111} if "sgd" in case
                                         else {"manual": 11, "reference": 11})


@pytest.mark.parametrize("case", ["sigmoid221-sgd-as-written", "sigmoid221-rmsprop-as-written"])
def test_as_written_departure_is_located(case):
    """The hidden layer's error went back through the UPDATED w35, w45: the first failure is
    step 1, layer 2, error_prev; everything before it in the step (forward, layer 2's delta
    and gradient) agrees with autograd."""
    df, lines = traced(case)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 2, "error_prev")
    s1 = df[df.step == 1].set_index(["layer", "quantity"])
    for key in [(0, "loss"), (0, "output"), (2, "delta"), (2, "grad_weight")]:
        assert s1.loc[key, "passed"] and s1.loc[key, "max_abs_diff"] < 1e-15, key
    assert not s1.loc[(1, "grad_weight"), "passed"]
    # The size of the departure: error_prev = delta5 * (W2 - update).T, so |m - r| = delta5 * |update of w35|.
    setup = get_case(case).build(dtype=torch.float64, device="cpu")
    m = setup.manual
    tr = m.step(setup.x, setup.t)
    delta5, dW2 = tr["layers"][1]["delta"], tr["layers"][1]["grad_weight"]
    W2_new = m.optimizer.updated(1, m.params[1], {"weight": dW2})["weight"]
    assert bad["max_abs_diff"] == pytest.approx(float((delta5 * (W2_new - m.params[1]["weight"]).T).abs().max()), rel=1e-12)
    assert bad["index"] == "0,0"  # w35 moves more than w45: dE/dw35 = delta5 * h3, and h3 > h4
    assert bad["max_abs_diff"] > 1e-4


@pytest.mark.parametrize("case", ["sigmoid221-sgd-as-written", "sigmoid221-rmsprop-as-written"])
def test_cli_as_written_exits_1_and_prints_the_seed_run(case, capsys):
    assert main(["run", case, "--print-trace"]) == 1
    out = capsys.readouterr().out.splitlines()
    if "rmsprop" in case:
        assert out[:11] == PRINTED_RMSPROP
    else:
        assert out[0] == PRINTED_SGD[1] and out[110] == PRINTED_SGD[111]
    assert any(line.startswith("  first failure: case " + case + " step 1 layer 2 error_prev index (0,0)") for line in out)
    assert "  stopped: manual at step " + ("11" if "rmsprop" in case else "111") + ", reference at step" in "\n".join(out)


@pytest.mark.parametrize("case", ["sigmoid221-sgd", "sigmoid221-rmsprop"])
def test_cli_correct_case_exits_0(case, capsys):
    assert main(["run", case]) == 0


def test_rmsprop_state_is_torch_optims_square_avg():
    """The reference's optimizer_state is torch.optim.RMSprop's own square_avg (transposed to
    the manual layout), and after step 1 it is (1 - alpha) g^2 of autograd's gradient."""
    setup = get_case("sigmoid221-rmsprop").build(dtype=torch.float64, device="cpu")
    ref = setup.reference
    tr = ref.step(setup.x, setup.t)
    ref.update(tr)
    st = ref.state()
    for layer, s in zip(ref.layers, st):
        assert s["weight"].data_ptr() == ref.optimizer.state[layer.weight]["square_avg"].data_ptr()
    for s, q in zip(st, tr["layers"]):
        torch.testing.assert_close(s["weight"], (1 - 0.999) * q["grad_weight"] ** 2, rtol=1e-15, atol=0)
    df = run("sigmoid221-rmsprop")
    rows = df[df.quantity == "optimizer_state"]
    assert sorted(set(zip(rows.layer, rows.step))) == [(l, s) for l in (1, 2) for s in range(1, 12)]
    assert (rows["max_rel_diff"] < 1e-14).all()


@pytest.mark.mutation
def test_wrong_beta_is_caught_in_the_optimizer_state():
    """RMSprop with beta 0.99 instead of 0.999: the report names the update rows of step 1."""
    from dataclasses import replace

    base = get_case("sigmoid221-rmsprop")

    def build(**kw):
        setup = base.build(**kw)
        setup.manual.optimizer = RMSprop(0.1, 0.99, 0.01)
        return setup

    df = run(replace(base, build=build))
    bad = first_failure(df)
    assert (bad["step"], bad["layer"]) == (1, 1) and bad["quantity"] in ("weight", "optimizer_state")
    s1 = df[df.step == 1].set_index(["layer", "quantity"])
    assert not s1.loc[(1, "optimizer_state"), "passed"] and not s1.loc[(2, "optimizer_state"), "passed"]
    assert s1.loc[(1, "grad_weight"), "passed"]


def test_seed_torch_version_one_d_output_weight_is_harmless():
    """The seed's PyTorch version assigns output.weight = [0.3, 0.9] (1-D) where nn.Linear(2, 1)
    declares (1, 2). F.linear then takes a dot product: a 0-dim output with the same value
    and the same gradient (as 1-D) as the declared shape."""
    x = torch.tensor([0.35, 0.9], dtype=torch.float64)
    h = torch.sigmoid(x @ torch.tensor([[0.1, 0.8], [0.4, 0.6]], dtype=torch.float64).T)
    one_d, two_d = nn.Linear(2, 1, bias=False).double(), nn.Linear(2, 1, bias=False).double()
    one_d.weight.data = torch.tensor([0.3, 0.9], dtype=torch.float64)
    two_d.weight.data = torch.tensor([[0.3, 0.9]], dtype=torch.float64)
    outs = []
    for lin in (one_d, two_d):
        yp = torch.sigmoid(lin(h))
        (0.5 * ((yp - 0.5) ** 2).mean()).backward()
        outs.append((yp.detach(), lin.weight.grad))
    assert outs[0][0].shape == () and outs[1][0].shape == (1,)
    assert float(outs[0][0]) == float(outs[1][0]) == 0.6902834929076443
    assert torch.equal(outs[0][1], outs[1][1].reshape(-1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["lockstep", "free"])
def test_rmsprop_correct_case_agrees_with_torch_optim_in_low_precision(dtype, mode):
    """The correct case's RMSprop rounds as torch.optim's (bpcheck.manual.optim), so it agrees
    within the dtype's tolerance in half precision too, stopping at the same step."""
    df = run("sigmoid221-rmsprop", dtype=dtype, mode=mode)
    assert df["passed"].all(), first_failure(df)
    st = df.attrs["stopped"]["sigmoid221-rmsprop"]
    assert st["manual"] == st["reference"] is not None
