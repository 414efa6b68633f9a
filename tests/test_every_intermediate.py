"""Issue 12's exercise: every intermediate of an Embedding + Linear + BatchNorm + tanh +
cross-entropy network (examples/every_intermediate.py), compared through taps, with Adam
and the running statistics. Slips a learner makes are each caught at the right site."""
import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

import bpcheck
from bpcheck.compare import UsageError
from bpcheck.testing import BackpropMismatch

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "every_intermediate.py"


def load(replace=None):
    """The example as a module; ``replace=(old, new)`` edits one line of its source first."""
    src = EXAMPLE.read_text()
    if replace is not None:
        old, new = replace
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    spec = importlib.util.spec_from_loader("every_intermediate_mutant", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, str(EXAMPLE), "exec"), mod.__dict__)
    return mod


def test_the_exercise_passes_and_compares_everything():
    ex = load()
    report = bpcheck.assert_backprop_close(**ex.build(), steps=8)
    assert report["passed"].all() and report["step"].max() == 8
    got = set(zip(report["site"], report["quantity"]))
    for tap in ("logprobs", "probs", "counts_sum_inv", "counts", "norm_logits", "logit_maxes",
                "bnraw", "bnvar_inv", "bnvar", "bndiff2", "bndiff", "bnmeani", "embcat"):
        assert {(f"tap:{tap}", "delta"), (f"tap:{tap}", "value")} <= got
    assert {("emb", "grad_weight"), ("bn", "running_var"), ("bn", "running_mean"), ("fc1", "weight.exp_avg"),
            ("fc2", "bias.exp_avg_sq"), ("emb", "weight.step")} <= got
    for mode in ("lockstep", "free"):  # and no false alarm in float32
        assert bpcheck.assert_backprop_close(**ex.build(torch.float32), steps=8, mode=mode)["passed"].all()


@pytest.mark.parametrize("slip, where", [
    # a wrong Bessel factor: the variance over n instead of n - 1, forward and backward
    (("bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)", "bnvar = bndiff2.sum(0, keepdim=True) / n"),
     "step 1, tap:bnvar.value"),
    # a sign slip in the normaliser's gradient
    (("dbnmeani = -dbndiff.sum(0, keepdim=True)", "dbnmeani = dbndiff.sum(0, keepdim=True)"),
     "step 1, tap:bnmeani.delta"),
    # `=` where `+=` belongs: repeated tokens overwrite instead of adding up
    (("dC.index_add_(0, X.reshape(-1), demb.reshape(-1, E))", "dC[X.reshape(-1)] = demb.reshape(-1, E)"),
     "step 1, emb.grad_weight"),
    # the running variance updated with the biased variance
    (("running[\"running_var\"].mul_(1 - MOMENTUM).add_(MOMENTUM * bnvar[0])",
      "running[\"running_var\"].mul_(1 - MOMENTUM).add_(MOMENTUM * bnvar[0] * (B - 1) / B)"),
     "step 1, bn.running_var"),
])
def test_each_slip_is_caught_at_its_site(slip, where):
    ex = load(slip)
    with pytest.raises(BackpropMismatch) as info:
        bpcheck.assert_backprop_close(**ex.build(), steps=2)
    headline = str(info.value).splitlines()[2]
    assert where in headline, headline


def test_a_missing_running_statistic_is_refused_not_skipped():
    ex = load()

    class Forgetful(ex.Manual):  # keeps both statistics, reports only the variance
        @property
        def buffers(self):
            return {"bn": {"running_var": self.running["running_var"]}}

    def build():
        return ex.build(manual=Forgetful)

    with pytest.raises(UsageError, match=r"the reference has bn\.running_mean, which the manual side does not report"):
        bpcheck.assert_backprop_close(**build(), steps=1)
    report = bpcheck.assert_backprop_close(**build(), steps=1, unmatched="row")
    row = report[(report["site"] == "bn") & (report["quantity"] == "running_mean")]
    assert list(row["note"]) == ["unmatched:reference only"] and row["max_abs_diff"].isna().all()


def test_the_case_runs_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bpcheck.entry", "run", f"{EXAMPLE}:CASE", "--steps", "3",
                           "--csv", str(tmp_path / "r.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "every-intermediate: PASS" in done.stdout
