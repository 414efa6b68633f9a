"""The named-site examples pass in float64, and a broken copy of each fails naming the site
and quantity of the slip.

examples/lstm_gates.py (nn.LSTM and a looped nn.LSTMCell against one matrix per gate),
examples/attention.py (nn.MultiheadAttention) and examples/numpy_mlp.py (a numpy network
on DataLoader batches, also as ``bpcheck run FILE.py:NAME``). A broken copy is the
example's file with one formula replaced as text, written to tmp_path: the examples
themselves stay as a reader sees them.
"""
import os
import pathlib
import runpy
import subprocess
import sys

import pandas as pd
import pytest
import torch

import bpcheck
from bpcheck.compare import run
from bpcheck.compare.core.errors import UsageError

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
EXE = os.path.join(os.path.dirname(sys.executable), "bpcheck")


def slipped(tmp_path, name, old, new):
    """A copy of examples/``name`` with the formula ``old`` (found exactly once) replaced by ``new``."""
    src = (EXAMPLES / name).read_text()
    assert src.count(old) == 1, f"{old!r} is not in {name} exactly once"
    path = tmp_path / name
    path.write_text(src.replace(old, new))
    return path


def load(path):
    return runpy.run_path(str(path))  # not __main__: definitions only


def failure(check, *args, **kw):
    """The message and the failing (site, quantity, time) rows of a check that must fail."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kw)
    r = info.value.report
    bad = r[~r["passed"].astype(bool)]
    rows = {(s, q, None if pd.isna(t) else int(t)) for s, q, t in zip(bad["site"], bad["quantity"], bad["time"])}
    return str(info.value), rows


@pytest.mark.parametrize("name", ["lstm_gates.py", "attention.py", "numpy_mlp.py"])
def test_example_runs_standalone_and_prints_pass(name, capsys):
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("PASS") and "FAIL" not in out


# --- LSTM -------------------------------------------------------------------------------

def test_lstm_sites_and_per_time_rows():
    g = load(EXAMPLES / "lstm_gates.py")
    r = g["check"]("lstm", steps=1)
    assert set(r.loc[r["site"] == "lstm", "quantity"]) >= {"delta.0", "error_prev", "grad_W_if", "grad_b_ho", "W_if"}
    assert r["time"].isna().all()  # nn.LSTM is called once: no time index
    r = g["check"]("cell", steps=1)
    cell = r[r["site"] == "cell"]
    times = lambda q: sorted(cell.loc[cell["quantity"] == q, "time"].astype(int))  # noqa: E731
    assert times("delta.0") == times("delta.1") == times("error_prev.0") == [1, 2, 3, 4, 5]
    assert times("error_prev.1") == times("error_prev.2") == [2, 3, 4, 5]  # h_0, c_0 are constants
    assert cell.loc[cell["quantity"] == "grad_W_if", "time"].isna().all()  # summed over the calls


def test_lstm_hidden_weight_gradient_with_h_s_for_h_s_minus_1(tmp_path):
    g = load(slipped(tmp_path, "lstm_gates.py", 'grads[f"W_h{k}"] += hs[s].T @ dz[k]',
                     'grads[f"W_h{k}"] += hs[s + 1].T @ dz[k]'))
    msg, rows = failure(g["check"], "lstm", steps=1)
    assert "step 1, lstm.grad_W_hi (the layer's own error" in msg
    assert rows == {("lstm", q, None) for k in "ifgo" for q in (f"grad_W_h{k}", f"W_h{k}")}


def test_lstm_input_error_without_the_output_gate(tmp_path):
    g = load(slipped(tmp_path, "lstm_gates.py", "for k in GATES)  # (B, H) @ (H, in)", 'for k in "ifg")  #'))
    msg, rows = failure(g["check"], "lstm", steps=1)
    assert "step 1, lstm.error_prev (the layer's own error" in msg
    assert rows == {("lstm", "error_prev", None)}


def test_cell_forget_gate_slip_is_located_at_the_last_call(tmp_path):
    # dz_f with c_s where c_{s-1} belongs: wrong from the last call (time 5) back
    g = load(slipped(tmp_path, "lstm_gates.py", '"f": dc * cs[s] * f', '"f": dc * cs[s + 1] * f'))
    msg, rows = failure(g["check"], "cell", steps=1)
    assert "step 1, cell.error_prev.0[5] (the layer's own error" in msg
    assert "cell.delta.0[4]: " in msg and "(inherited from step 1 cell.error_prev.0[5])" in msg
    assert ("cell", "delta.0", 5) not in rows and ("cell", "delta.1", 5) not in rows  # from fc: right
    assert ("cell", "grad_W_if", None) in rows and ("cell", "delta.0", 4) in rows


def test_cell_first_call_without_state_names_its_input_like_the_others():
    g = load(EXAMPLES / "lstm_gates.py")

    class FirstCallBare(g["CellNet"]):  # the cell's own zero state at time 1: one tensor input there
        def forward(self, x):
            h, c = self.cell(x[:, 0])
            for s in range(1, x.shape[1]):
                h, c = self.cell(x[:, s], (h, c))
            return self.fc(h)

    x, t = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    r = bpcheck.assert_backprop_close(g["ManualLSTM"](3, 6, 2, site="cell"), FirstCallBare(3, 6, 2), x, t,
                                      maps=g["gate_maps"]("cell", 6))
    assert ((r["quantity"] == "error_prev.0") & (r["time"] == 1)).sum() == 1


def test_maps_errors_name_the_manual_tensors():
    g = load(EXAMPLES / "lstm_gates.py")
    x, t = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    late = {f"lstm.W_i{gate}": ("weight_ih_l0", lambda w: w[k * 6:(k + 1) * 6].T) for k, gate in enumerate("ifgo")}
    with pytest.raises(UsageError, match=r"weight_ih_l0 \(24, 3\) are not covered .*\(W_ii, W_if, W_ig, W_io;"):
        bpcheck.assert_backprop_close(g["ManualLSTM"](3, 6, 2), g["LSTMNet"](3, 6, 2), x, t,
                                      maps=g["gate_maps"]("lstm", 6, "_l0") | late)  # every lambda sees k = 3
    copy = {"lstm.W_ig": ("weight_ih_l0", lambda w: w[12:18].T.clone())}
    with pytest.raises(UsageError, match=r"the view for lstm\.W_ig \(onto weight_ih_l0\) must return a view"):
        bpcheck.assert_backprop_close(g["ManualLSTM"](3, 6, 2), g["LSTMNet"](3, 6, 2), x, t,
                                      maps=g["gate_maps"]("lstm", 6, "_l0") | copy)


# --- attention --------------------------------------------------------------------------

def test_attention_softmax_gradient_without_its_row_sum(tmp_path):
    g = load(slipped(tmp_path, "attention.py", "ds = a * (da - (da * a).sum(-1, keepdim=True))", "ds = a * da"))
    msg, rows = failure(g["check"], steps=1)
    assert "step 1, attn.grad_W_q (the layer's own error" in msg
    qk = {f"{p}_{n}" for p in ("grad_W", "grad_b", "W", "b") for n in "qk"}
    assert rows == {("attn", q, None) for q in qk | {"error_prev.0", "error_prev.1"}}  # value path, out_proj: right


def test_attention_key_gradient_without_the_scale(tmp_path):
    g = load(slipped(tmp_path, "attention.py", "dk = ds.transpose(-1, -2) @ q * scale",
                     "dk = ds.transpose(-1, -2) @ q"))
    msg, rows = failure(g["check"], steps=1)
    assert "step 1, attn.grad_W_k (the layer's own error" in msg
    assert "attn.error_prev.1: " in msg  # dL/d(key), the second of three inputs
    # grad_b_k is 0 on both sides (a key bias shifts a whole softmax row), scaled or not: it passes
    assert rows == {("attn", q, None) for q in ("grad_W_k", "error_prev.1", "W_k")}


# --- numpy network on a DataLoader --------------------------------------------------------

def test_numpy_mlp_trains_on_every_batch_in_place():
    g = load(EXAMPLES / "numpy_mlp.py")
    manual = g["NumpyMLP"](3, 5, 2)
    w0 = manual.params["0"]["weight"].copy()
    r = bpcheck.assert_backprop_close(manual, g["reference"](3, 5, 2), g["loader"](), loss="mse", optimizer=g["LR"])
    assert sorted(r["step"].unique()) == [1, 2, 3, 4, 5]  # 40 samples in batches of 8
    assert r.loc[r["quantity"] == "loss", "reference_norm"].nunique() == 5  # a new batch each step
    assert set(r["site"]) == {"", "0", "1", "2"}  # the Tanh is a site of its own
    assert not (manual.params["0"]["weight"] == w0).all()  # the numpy arrays were trained


def test_numpy_mlp_tanh_derivative_slip_is_the_tanh_sites_error(tmp_path):
    g = load(slipped(tmp_path, "numpy_mlp.py", "dz = dh * (1 - h ** 2)", "dz = dh * (1 - h)"))
    msg, rows = failure(g["check"])
    assert "step 1, 1.error_prev (the layer's own error" in msg  # site "1" is nn.Tanh
    assert "0.delta: " in msg and "(inherited from step 1 1.error_prev)" in msg
    assert ("1", "delta", None) not in rows and ("2", "grad_weight", None) not in rows


def run_cli(path, tmp_path, name="numpy_mlp"):
    csv = tmp_path / "r.csv"
    p = subprocess.run([EXE, "run", f"{path}:{name}", "--csv", str(csv)], capture_output=True, text=True,
                       timeout=300)
    return p, (pd.read_csv(csv, keep_default_na=False) if csv.exists() else None)


@pytest.mark.parametrize("file, name, steps, sites", [
    ("numpy_mlp.py", "numpy_mlp", 5, {"", "0", "1", "2"}),  # steps: the loader's 5 batches
    ("lstm_gates.py", "lstm", 3, {"", "lstm", "fc"}),
    ("lstm_gates.py", "cell", 3, {"", "cell", "fc"}),
    ("attention.py", "attention", 3, {"", "attn", "attn.out_proj"})])
def test_example_cases_pass_through_the_runner(file, name, steps, sites):
    report = run(load(EXAMPLES / file)[name])  # what bpcheck run FILE.py:NAME runs
    assert report["passed"].astype(bool).all()
    assert set(report["site"]) == sites and report["step"].max() == steps


def test_numpy_mlp_case_passes_through_bpcheck_run(tmp_path):
    p, report = run_cli(EXAMPLES / "numpy_mlp.py", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "numpy_mlp: PASS  (5 steps, lockstep, cpu, float64" in p.stdout
    assert set(report["site"]) == {"", "0", "1", "2"} and report["step"].max() == 5


def test_numpy_mlp_case_broken_copy_fails_through_bpcheck_run(tmp_path):
    path = slipped(tmp_path, "numpy_mlp.py", "dz = dh * (1 - h ** 2)", "dz = dh * (1 - h)")
    p, report = run_cli(path, tmp_path)
    assert p.returncode == 1, p.stderr
    # the summary names layers by number (site "1" is layer 2); the report names the site
    assert "first failure: case numpy_mlp step 1 layer 2 error_prev " in p.stdout
    first = report[report["passed"].astype(str) == "False"].iloc[0]
    assert (first["step"], first["site"], first["quantity"]) == (1, "1", "error_prev")


# --- what a stranger gets wrong first: one line naming the site, and what to write ----------

def test_unmapped_gate_matrices_name_the_site_and_maps():
    g = load(EXAMPLES / "lstm_gates.py")
    x, t = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"^lstm: the manual side's parameters W_hf, .* are not the reference's "
                                         r"bias_hh_l0, bias_ih_l0, weight_hh_l0, weight_ih_l0; .* maps=\{'lstm\."):
        bpcheck.assert_backprop_close(g["ManualLSTM"](3, 6, 2), g["LSTMNet"](3, 6, 2), x, t)


def test_a_linear_weight_in_torchs_layout_says_how_to_keep_it():
    g = load(EXAMPLES / "lstm_gates.py")
    x, t = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    manual, maps = g["ManualLSTM"](3, 6, 2), g["gate_maps"]("lstm", 6, "_l0")
    manual.params["fc"]["weight"] = manual.params["fc"]["weight"].T.contiguous()  # (out, H), as torch keeps it
    with pytest.raises(UsageError, match=r"^fc\.weight: manual shape \(2, 6\) != reference shape \(6, 2\) .*"
                                         r"maps=\{'fc\.weight': \('weight', lambda w: w\)\}"):
        bpcheck.assert_backprop_close(manual, g["LSTMNet"](3, 6, 2), x, t, maps=maps)


def test_a_quantity_without_its_tuple_suffix_names_what_the_reference_has():
    g = load(EXAMPLES / "attention.py")

    class WithWeights(torch.nn.Module):  # need_weights left at True: the output is (y, weights)
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    x, t = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"reports attn\.delta, which the reference has no counterpart for "
                                         r"\(it has attn\.delta\.0, attn\.delta\.1: a tuple's k-th tensor"):
        bpcheck.assert_backprop_close(g["ManualAttention"](8, 2), WithWeights(), x, t, loss="mse",
                                      maps=g["qkv_maps"](8))


def test_optimizer_state_of_a_packed_parameter_compares_per_gate():
    # Adam's moments of weight_ih are shown through the same views as the weight: W_if.exp_avg etc.
    g = load(EXAMPLES / "lstm_gates.py")
    kw = g["build"](torch.float64, "cpu", "cell") | {"optimizer": lambda ps: torch.optim.Adam(ps, lr=1e-2)}
    r = bpcheck.assert_backprop_close(**kw, steps=3)  # the manual side has no update(): bpcheck's Adam twin
    cell = set(r.loc[r["site"] == "cell", "quantity"])
    assert {f"W_i{k}.{s}" for k in "ifgo" for s in ("exp_avg", "exp_avg_sq", "step")} <= cell
