"""Every correct case, both modes, float64 and float32, against autograd."""
import pytest

from bpcheck.cases import correct_cases
from bpcheck.compare import run

CASES = [c.name for c in correct_cases()]
STEPS = 300  # enough steps for trajectories to move; trask's full 60,000 run is in test_trask_full


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["lockstep", "free"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_case_matches_autograd(case, mode, dtype, device):
    df = run(case, steps=STEPS, mode=mode, dtype=dtype, device=device)
    assert df["passed"].all(), df[~df["passed"]].head()
    assert set(df["step"]) == set(range(1, min(STEPS, df["step"].max()) + 1))


@pytest.mark.parametrize("case", CASES)
def test_float64_lockstep_is_rounding_only(case, device):
    """In float64 lockstep the hand formulas equal autograd to rounding: every
    difference is a few units of float64 roundoff of the values compared."""
    df = run(case, steps=50, dtype="float64", device=device)
    scale = df[["manual_norm", "reference_norm"]].max(axis=1).clip(lower=1.0)
    assert (df["max_abs_diff"] <= 1e-12 * scale).all(), df.sort_values("max_abs_diff").tail()


def test_every_layer_and_quantity_reported():
    df = run("sigmoid-bias", steps=3)
    got = set(zip(df["layer"], df["quantity"]))
    want = {(0, "loss"), (0, "output")} | {
        (layer, q) for layer in (1, 2) for q in ("delta", "error_prev", "grad_weight", "grad_bias", "weight", "bias")
    }
    assert got == want
    assert len(df) == 3 * len(want)
