"""Convolution and recurrence (issue 4): seed 000's conv figure, the formulas against
autograd over strides, paddings, channels and pools, the RNN reference, and mutants
that break each new backward and must be named by the report."""

import pytest
import torch

from bpcheck.cases.conv import conv
from bpcheck.cases.rnn import rnn
from bpcheck.compare import UsageError, run
from bpcheck.compare.diagnosis.summary import first_failure
from bpcheck.manual.conv import MaxPool
from mutants import forget_dilation, run_with

F64 = torch.float64


def close(a, b, tol=1e-15):
    return torch.allclose(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=0, atol=tol)


# --- seed 000's figure ---------------------------------------------------------------------------

def test_figure_numbers(device):
    """Seed 000's conv figure with bpcheck's weights w = (0.5, -0.3), b = 0.2, x = (1, 2, 3):
    given delta_y = (-0.1, 0.2), delta_x = (w0 dy0, w1 dy0 + w0 dy1, w1 dy1) = (-0.05, 0.13, -0.06),
    dw = (x0 dy0 + x1 dy1, x1 dy0 + x2 dy1) = (0.3, 0.4), db = dy0 + dy1 = 0.1 (README)."""
    s = conv(dtype=F64, device=device)
    for side in (s.manual, s.reference):
        tr = side.step(s.x, s.t)
        (q,) = tr["layers"]
        assert close(tr["output"].cpu().flatten(), [0.1, 0.3])
        assert close(tr["loss"].cpu(), 0.05)
        assert close(q["delta"].cpu().flatten(), [-0.1, 0.2])
        assert close(q["error_prev"].cpu().flatten(), [-0.05, 0.13, -0.06])
        assert close(q["grad_weight"].cpu().flatten(), [0.3, 0.4])
        assert close(q["grad_bias"].cpu(), [0.1])
        side.update(tr)
        p = side.params[0]
        assert close(p["weight"].cpu().flatten(), [0.47, -0.34])  # w -= 0.1 * dw
        assert close(p["bias"].cpu(), [0.19])


def test_figure_report():
    df = run("conv")
    assert df["passed"].all()
    assert list(df["quantity"]) == ["output", "loss", "delta", "grad_weight", "grad_bias", "error_prev", "weight", "bias"]
    assert (df["max_abs_diff"] < 1e-15).all()


# --- the formulas against autograd over shapes ---------------------------------------------------

CONV_SHAPES = [
    # (x shape, kernel shape, stride, padding)
    ((2, 3, 11), (4, 3, 3), 2, 1),  # several channels, stride 2, padding 1
    ((1, 2, 10), (3, 2, 4), 3, 0),  # (10 - 4) % 3 == 0: exact cover
    ((1, 2, 11), (3, 2, 4), 3, 2),  # (11 + 4 - 4) % 3 == 2: the last inputs reach no window
    ((2, 2, 7, 8), (3, 2, 3, 2), (2, 3), (1, 0)),  # conv2d, a rectangular kernel, per-axis stride and padding
    ((3, 1, 6, 6), (2, 1, 1, 1), 2, 0),  # 1 x 1 kernel, stride 2: half the inputs get no gradient
    ((1, 1, 5, 5), (1, 1, 5, 5), 1, 2),  # kernel as large as the image
]


@pytest.mark.parametrize("xs,ks,stride,padding", CONV_SHAPES)
def test_conv_formulas_match_autograd(xs, ks, stride, padding):
    g = torch.Generator().manual_seed(0)
    x, K, b = torch.randn(xs, generator=g, dtype=F64), torch.randn(ks, generator=g, dtype=F64), torch.randn(ks[0], generator=g, dtype=F64)
    f = torch.nn.functional.conv1d if len(xs) == 3 else torch.nn.functional.conv2d
    probe = torch.randn(f(x, K, b, stride=stride, padding=padding).shape, generator=g, dtype=F64)
    for dtype in ("float64", "float32"):
        df = run("conv", steps=3, dtype=dtype, x=x, weight=K, bias=b, g=probe, stride=stride, padding=padding)
        assert df["passed"].all(), df[~df["passed"]].head()
        assert {"delta", "grad_weight", "grad_bias", "error_prev"} <= set(df["quantity"])
    assert (df[df["dtype"] == "float64"]["max_abs_diff"] < 1e-12).all()


@pytest.mark.parametrize("opts", [
    dict(pool=None),  # no pooling
    dict(pool=3, stride=1, padding=0, size=8),  # 6 x 6 maps, 3 x 3 windows
    dict(pool=2, stride=1, padding=2, kernel=(2, 3), size=7, in_channels=1, channels=2, classes=4),  # odd maps: crop
    dict(optimizer="rmsprop", lr=0.01),
])
def test_cnn_variants_match_autograd(opts):
    df = run("cnn", steps=20, **opts)
    assert df["passed"].all(), df[~df["passed"]].head()
    assert (df["max_abs_diff"] < 1e-12).all()


def test_cnn_learns():
    df = run("cnn")
    loss = df[df["quantity"] == "loss"]["manual_norm"]
    assert loss.iloc[-1] < 0.05 * loss.iloc[0]


# --- the RNN -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_unrolled_reference_is_nn_rnn(dtype, tol, device):
    """The per-time reference values come from nn.RNN's recurrence unrolled on its own
    parameters; that graph's output and parameter gradients are nn.RNN's own."""
    s = rnn(dtype=dtype, device=device)
    m = s.reference.module
    y, _ = m(s.x)
    y2, zs = m.unrolled(s.x)
    assert len(zs) == s.x.shape[1]
    params = list(m.parameters())
    g1 = torch.autograd.grad(((y - s.t) ** 2).mean(), params)
    g2 = torch.autograd.grad(((y2 - s.t) ** 2).mean(), params)
    assert torch.allclose(y, y2, rtol=0, atol=tol)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=0, atol=tol)


def test_rnn_rows_per_time_step():
    df = run("rnn", steps=2)
    T = 8
    rec = df[(df["step"] == 1) & (df["layer"] == 1)]
    timed = rec[rec["time"].notna()]
    assert list(zip(timed["time"], timed["quantity"])) == [(t, q) for t in range(T, 0, -1) for q in ("delta", "error_prev")]
    assert rec[rec["time"].isna()]["quantity"].tolist()[:4] == [
        "grad_weight_ih_l0", "grad_weight_hh_l0", "grad_bias_ih_l0", "grad_bias_hh_l0"]
    assert df["passed"].all()


def test_rnn_learns():
    df = run("rnn")
    loss = df[df["quantity"] == "loss"]["manual_norm"]
    assert loss.iloc[-1] < 0.3 * loss.iloc[0]


# --- mutants: break each new backward, see the report name it --------------------------------------

def passed(df, step, layer, quantity):
    return bool(df[(df.step == step) & (df.layer == layer) & (df.quantity == quantity)]["passed"].all())


@pytest.mark.mutation
@pytest.mark.parametrize("case", ["conv", "cnn"])
def test_unflipped_kernel_named(case):
    """error_prev as the full correlation with K itself instead of K flipped."""
    df = run_with(case, lambda m: setattr(m.conv, "flip", lambda K: K))
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 1, "error_prev")
    assert all(passed(df, 1, 1, q) for q in ("delta", "grad_weight", "grad_bias"))


@pytest.mark.mutation
def test_missing_dilation_named():
    """The cnn's conv has stride 2: without dilation, dK (computed first) and error_prev are wrong."""
    df = run_with("cnn", forget_dilation)
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["quantity"]) == (1, 1, "grad_weight")
    assert not passed(df, 1, 1, "error_prev")
    assert passed(df, 1, 1, "delta") and passed(df, 1, 1, "grad_bias")


@pytest.mark.mutation
def test_missing_dilation_is_harmless_at_stride_1():
    """The same mutant changes nothing when the stride is 1: the check targets the stride."""
    assert run_with("cnn", forget_dilation, stride=1)["passed"].all()


@pytest.mark.mutation
@pytest.mark.parametrize("carry", [
    lambda m: lambda delta: torch.zeros_like(delta),  # truncated BPTT: nothing flows into h_{t-1}
    lambda m: lambda delta: delta @ m.params[0]["weight_hh_l0"],  # W_hh where W_hh.T belongs
], ids=["dropped", "untransposed"])
def test_broken_bptt_carry_named(carry):
    """The carry delta_t @ W_hh.T first enters delta at time T-1: the report names that time step."""
    df = run_with("rnn", lambda m: setattr(m, "carry", carry(m)))
    bad = first_failure(df)
    assert (bad["step"], bad["layer"], bad["time"], bad["quantity"]) == (1, 1, 7, "delta")
    step1 = df[df.step == 1]
    assert step1[step1.layer == 2]["passed"].all()
    assert step1[(step1.layer == 1) & (step1.time == 8)]["passed"].all()


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case,opts,words", [
    ("conv", dict(weight=[[[1.0, 2.0, 3.0, 4.0]]]), "does not fit"),
    ("conv", dict(weight=[[[1.0], [2.0]]]), "input channels"),
    ("conv", dict(g=[[[1.0, 2.0, 3.0]]]), "t has shape"),
    ("conv", dict(stride=0), "stride"),
    ("cnn", dict(pool=9), "pool"),
    ("cnn", dict(pool=(2, 2)), "pool"),
    ("cnn", dict(x=[[1.0, 2.0]], t=[[1.0, 0.0]]), "x has shape"),
    ("cnn", dict(classes=7), "classes"),
    ("rnn", dict(length=0), "length"),
    ("rnn", dict(x=[[[1.0]]], t=[[[1.0], [2.0]]]), "t has shape"),
])
def test_bad_input_is_a_usage_error(case, opts, words):
    with pytest.raises(UsageError, match=words):
        run(case, steps=1, **opts)


def test_own_or_inherited_for_the_conv_layers():
    """ConvNet has layer_backward (compare.origin): a conv without the kernel flip is the
    conv layer's own error; a readout delta without the 1/B is the loss's, and the conv
    layer below inherits it."""
    df = run_with("cnn", lambda m: setattr(m.conv, "flip", lambda K: K))
    assert {e["layer"]: e["verdict"] for e in df.attrs["origin"]["cnn"]} == {1: "own"}

    def no_mean(m):
        m.loss.softmax_delta = lambda p, t: p - t  # (p - t), not (p - t)/B

    df = run_with("cnn", no_mean)
    assert {e["layer"]: e["verdict"] for e in df.attrs["origin"]["cnn"]} == {
        2: "inherited from the loss", 1: "inherited from layer 2"}


@pytest.mark.parametrize("nd", [1, 2])
def test_max_pool_ties_go_where_torch_sends_them(nd):
    """ReLU zeros tie whole windows, and equal positive values tie too: the manual pool
    routes each window's error to its first maximum, as torch's max_pool does."""
    shape = (2, 3, 7) if nd == 1 else (2, 3, 6, 7)
    x = torch.zeros(shape, dtype=torch.float64)  # every window a tie
    x[(0, 0) + (2,) * nd] = x[(0, 0) + (3,) * nd] = 1.0  # a positive tie across a window's corners
    pool = MaxPool(2)
    y = pool.forward(x)
    g = torch.randn(y.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    xr = x.clone().requires_grad_(True)
    (torch.nn.functional.max_pool1d if nd == 1 else torch.nn.functional.max_pool2d)(xr, 2).backward(g)
    assert torch.equal(pool.backward(g), xr.grad)
    assert int((pool.backward(g) != 0).sum()) == g.numel()  # one element per window, not every tied one
