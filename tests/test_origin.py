"""Own or inherited: the summary tells a layer's own error from one passed down,
by rerunning the manual layer's backward with the reference's upstream error."""
import pytest
import numpy as np
import torch

from bpcheck.cases.mlp import TRASK_X, mlp, trask
from bpcheck.cli import main
from bpcheck.compare import run
from bpcheck.compare.diagnosis.origin import origin_frame
from bpcheck.compare.diagnosis.summary import format_summary
from bpcheck.manual import MLP

from mutants import (CATALOGUE, HalfSSEFactor2, HandsDownDelta, SigmoidNoDerivative, acts, build_with, loss,
                     subclass, Mutant)
from mutants import BROKEN_TRASK_FILE as BROKEN


def report_of(mutant):
    return run(build_with(mutant), steps=mutant.steps, **mutant.options)


def test_own_error_then_inherited_below():
    df = report_of(Mutant("sigmoid' missing", "trask", acts(SigmoidNoDerivative, layers=[2]), 2, "delta"))
    o = origin_frame(df).set_index("layer")
    assert list(o.index) == [2, 1] and set(o["step"]) == {1}
    assert o.loc[2, "verdict"] == "own"
    assert o.loc[2, "own"] == o.loc[2, "reported"] > 0.1  # still wrong with the reference's error fed in
    assert o.loc[1, "verdict"] == "inherited from layer 2"
    assert o.loc[1, "reported"] > 0.01 and o.loc[1, "own"] < 1e-15  # right once fed the right error
    # the reported number is the report's own row
    row = df[(df.step == 1) & (df.layer == 1) & (df.quantity == "delta")].iloc[0]
    assert o.loc[1, "reported"] == row["max_abs_diff"]
    text = format_summary(df, origin=df.attrs["origin"])
    assert "layer 2 delta: |m - r| = " in text and ": own" in text
    assert "with the reference's upstream error fed in: inherited from layer 2" in text


def test_loss_error_is_inherited_from_the_loss():
    df = report_of(Mutant("half-SSE error factor 2", "trask", loss(HalfSSEFactor2), 2, "delta"))
    o = origin_frame(df).set_index("layer")
    assert o.loc[2, "verdict"] == "inherited from the loss" and o.loc[2, "own"] < 1e-15
    assert o.loc[1, "verdict"] == "inherited from layer 2"


def test_wrong_hand_off_is_named():
    """Layer 2's rows pass, layer 1 is right given the right error: the wiring between them is wrong."""
    df = report_of(Mutant("delta handed down", "trask", subclass(HandsDownDelta), 1, "delta"))
    o = origin_frame(df).set_index("layer")
    assert list(o.index) == [1] and o.loc[1, "verdict"] == "hand-off from layer 2"


def test_optimizer_error_is_the_update():
    m = [m for m in CATALOGUE if m.name == "RMSprop eps inside sqrt"][0]
    o = origin_frame(report_of(m))
    assert set(o["verdict"]) == {"update"} and o["own"].isna().all()


def test_passing_run_has_no_entries():
    df = run("trask", steps=3)
    assert df.attrs["origin"] == {"trask": []} and origin_frame(df).empty


def test_layer_backward_matches_step():
    """The protocol's layer_backward, fed step's own upstream errors, gives step's numbers
    (softmax included, through its Jacobian product rather than the fused (p - t)/B)."""
    for setup in (trask(torch.float64, "cpu"), mlp(torch.float64, "cpu")):
        m = setup.manual
        tr = m.step(setup.x, setup.t)
        L = len(m.params)
        top_error = m.loss.error(tr["output"], setup.t)
        for layer in range(L, 0, -1):
            error = top_error if layer == L else tr["layers"][layer]["error_prev"]
            q = m.layer_backward(layer, error)
            for k, v in tr["layers"][layer - 1].items():
                torch.testing.assert_close(q[k], v, rtol=1e-12, atol=1e-15)


def test_cli_summary_says_own_or_inherited(tmp_path, capsys):
    p = tmp_path / "broken.py"
    p.write_text(BROKEN)
    assert main(["run", f"{p}:broken", "--steps", "2"]) == 1
    out = capsys.readouterr().out
    assert "own or inherited (step 1, rerun with the reference's upstream error):" in out
    assert "layer 2 delta: |m - r| = 0.41 as run, 0.41 with the reference's upstream error fed in: own" in out
    assert "inherited from layer 2" in out


class NudgedErrorPrev(MLP):
    """Hands down (and reports) layer 2's error_prev off by 1e-11: within the tolerance there."""

    def backprop(self, layer, delta):
        q = super().backprop(layer, delta)
        if layer == 2:
            q["error_prev"] = q["error_prev"] + 1e-11
        return q


def test_difference_within_tolerance_amplified_below_is_inherited_not_hand_off():
    """x of size 1000 turns layer 2's 1e-11 into ~1e-8 in layer 1's dW (atol 1e-10):
    layer 1 is right given the reference's error, and the error it got is the one layer 2
    reported, so the verdict is an amplified inheritance, not a wrong hand-off."""
    x = TRASK_X * 1000.0
    w1 = np.full((3, 4), 1e-4)
    w2 = np.array([[0.5], [-0.3], [0.2], [0.1]])
    df = report_of(Mutant("nudged", "trask", subclass(NudgedErrorPrev), 1, "grad_weight",
                          dict(x=x, weights=[w1, w2], rtol=0.0, atol=1e-10)))
    o = origin_frame(df).set_index("layer")
    assert list(o.index) == [1] and o.loc[1, "quantity"] == "grad_weight"
    assert o.loc[1, "verdict"] == "inherited from layer 2 (within its tolerance there, amplified here)"
    assert o.loc[1, "reported"] > 1e-9 and o.loc[1, "own"] < 1e-12


@pytest.mark.parametrize("case,layer,quantity,verdict", [
    ("sigmoid221-sgd-as-written", 2, "error_prev", "own"),  # backprop through the updated w35, w45
    ("sigmoid221-rmsprop-as-written", 2, "error_prev", "own"),
    ("sigmoid-bias-as-written", 1, "grad_bias", "own"),  # one sum over batch and units
    ("relu-sigmoid-as-written", 2, "delta", "inherited from the loss"),  # SSE printed, half of it differentiated
])
def test_seed_departures_are_diagnosed_where_they_sit(case, layer, quantity, verdict):
    """The -as-written manual sides give layer_backward the same departure as their step,
    so the rerun with the reference's upstream error names the departing formula itself."""
    o = origin_frame(run(case, steps=3))
    row = o[(o.layer == layer) & (o.quantity == quantity)].iloc[0]
    assert row["verdict"] == verdict


BROKEN_USER_CASE = '''
import torch
from torch import nn
import bpcheck


class Net:
    def __init__(self):
        self.params = [{"weight": torch.full((3, 2), 0.1, dtype=torch.float64)}]

    def step(self, x, t):
        y = torch.sigmoid(x @ self.params[0]["weight"])  # (B, 3) @ (3, 2) -> (B, 2)
        delta = (y - t)  # wrong: sigmoid's derivative forgotten
        return {"loss": 0.5 * ((y - t) ** 2).sum(), "output": y,
                "layers": [{"delta": delta, "grad_weight": x.T @ delta}]}


def build(dtype, device):
    g = torch.Generator().manual_seed(0)
    return {"manual": Net(), "reference": nn.Sequential(nn.Linear(3, 2, bias=False), nn.Sigmoid()),
            "inputs": torch.rand(4, 3, generator=g, dtype=torch.float64),
            "targets": torch.rand(4, 2, generator=g, dtype=torch.float64), "optimizer": 0.5}


net = bpcheck.case("net", build, steps=2)
'''


def test_a_side_without_layer_backward_says_the_origin_was_not_diagnosed(tmp_path, capsys):
    """Nothing skipped in silence: a failing user case whose manual side cannot rerun a layer
    says so where the own-or-inherited block would stand, in run and in report alike."""
    from bpcheck.cli import main

    f = tmp_path / "net.py"
    f.write_text(BROKEN_USER_CASE)
    csv = tmp_path / "r.csv"
    assert main(["run", f"{f}:net", "--csv", str(csv), "--quiet"]) == 1
    ran = capsys.readouterr().out
    assert "own or inherited: not diagnosed: the manual side has no layer_backward" in ran
    assert main(["report", str(csv)]) == 1
    assert "own or inherited: not diagnosed" in capsys.readouterr().out
