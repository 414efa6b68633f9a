"""A checker that can't fail is worse than none: break a formula, see it named.

Mutants are injected through the public protocol (a subclass or a swapped
activation), never by editing files."""
import pytest

from bpcheck.compare import run
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual.activations import Sigmoid


class NoDerivative(Sigmoid):
    def delta(self, error, a, z):
        return error  # missing a(1-a)




@pytest.mark.mutation
def test_missing_derivative_factor_named():
    df = run_with("trask", lambda m: m.acts.__setitem__(1, NoDerivative()), steps=5)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 2, "delta")


@pytest.mark.mutation
def test_wrong_sign_named():
    class Flip(Sigmoid):
        def delta(self, error, a, z):
            return -a * (1 - a) * error

    df = run_with("trask", lambda m: m.acts.__setitem__(0, Flip()), steps=5)
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

    df = run_with("trask", patch, steps=5)
    bad = first_failure(df)
    assert (bad["layer"], bad["quantity"]) == (2, "error_prev")


# ---- the catalogue (tests/mutants.py): >= 25 mutants, each caught and located ----------------

from mutants import CATALOGUE, KILLS, build_with, kill, run_with  # noqa: E402


@pytest.mark.mutation
@pytest.mark.parametrize("mutant", CATALOGUE, ids=[m.name for m in CATALOGUE])
def test_mutant_is_caught_and_located(mutant, one_thread):
    row, df = kill(mutant)
    KILLS.append(row)
    assert row["verdict"] == "killed", row
    # the failure is a formula failure, not excused as a kink
    bad = first_failure(df)
    assert "kink" not in bad["note"]


@pytest.mark.mutation
def test_catalogue_is_large_and_distinct():
    assert len(CATALOGUE) >= 25
    assert len({m.name for m in CATALOGUE}) == len(CATALOGUE)


CONTROLS = sorted({(m.case, repr(sorted(m.options.items()))): m for m in CATALOGUE}.items())


@pytest.mark.mutation
@pytest.mark.parametrize("key,mutant", CONTROLS, ids=[f"{c}:{o}" for (c, o), _ in CONTROLS])
def test_unmutated_control_passes(key, mutant, one_thread):
    """The same case, data and options without the mutant: every row passes, so each
    kill is the mutant's doing."""
    from dataclasses import replace as dc_replace

    df = run(build_with(dc_replace(mutant, patch=None)), steps=mutant.steps, **mutant.options)
    assert df["passed"].all(), df[~df["passed"]].head()
