"""Every file in examples/ runs, and each example's check fails when its formulas are broken
(through the same public protocol, never by editing the files)."""
import ast
import pathlib
import runpy

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def load(name):
    return runpy.run_path(str(EXAMPLES / name))  # run_name is not __main__: definitions only


@pytest.mark.parametrize("name, says", [("two_layer.py", ""), ("nielsen.py", "Nielsen-style network matches autograd"),
                                        ("custom_function.py", "SigmoidLinear.backward matches autograd")])
def test_example_runs(name, says, capsys):
    torch.manual_seed(0)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert says in capsys.readouterr().out


def code_lines(path):
    """Lines of code: neither blank, nor comment, nor the module docstring."""
    src = path.read_text()
    doc = ast.parse(src).body[0]
    skip = set(range(doc.lineno, doc.end_lineno + 1)) if isinstance(doc, ast.Expr) else set()
    return [ln for i, ln in enumerate(src.splitlines(), 1)
            if i not in skip and ln.strip() and not ln.strip().startswith("#")]


def test_two_layer_network_checked_in_under_20_lines():
    lines = code_lines(EXAMPLES / "two_layer.py")
    assert len(lines) == 19 < 20
    assert sum("assert_backprop_close(" in ln for ln in lines) == 1


def test_two_layer_example_catches_a_missing_derivative():
    torch.manual_seed(0)
    g = load("two_layer.py")
    TwoLayer, assert_close = g["TwoLayer"], g["assert_backprop_close"]

    class Slip(TwoLayer):  # delta1 without the sigmoid's derivative h(1-h)
        def step(self, x, t):
            tr = super().step(x, t)
            tr["layers"][0]["delta"] = tr["layers"][1]["error_prev"]
            return tr

    net = Slip(torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
    with pytest.raises(AssertionError, match=r"step 1, 0\.delta"):
        assert_close(net, g["reference"], g["x"], g["t"], optimizer=0.5)


def test_nielsen_example_catches_sigmoid_prime_of_the_activation():
    g = load("nielsen.py")

    class Slip(g["Network"]):  # BP1 with sigma'(a) where sigma'(z) is meant
        def backprop(self, x, y):
            nabla_b, nabla_w, deltas, errors_prev = super().backprop(x, y)
            a = self.feedforward(x)
            deltas[-1] = self.cost_derivative(a, y) * g["sigmoid_prime"](a)
            return nabla_b, nabla_w, deltas, errors_prev

    with pytest.raises(AssertionError) as info:
        g["check"](Slip([4, 6, 5, 3]), steps=2)
    assert "Case nielsen (lockstep, cpu, float64), step 1, 4.delta (the layer's own error" in str(info.value)


def test_nielsen_example_catches_an_update_without_1_over_m():
    g = load("nielsen.py")

    class Slip(g["Network"]):
        def update_mini_batch(self, nabla_b, nabla_w, m, eta):
            super().update_mini_batch(nabla_b, nabla_w, 1, eta)  # forgets to average over the mini-batch

    with pytest.raises(AssertionError) as info:
        g["check"](Slip([4, 6, 5, 3]), steps=1)
    rep = info.value.report
    assert rep[~rep.passed]["quantity"].isin(["weight", "bias"]).all()
    assert "step 1, 0.weight (the layer's own error" in str(info.value)


def test_nielsen_example_float32(device):
    g = load("nielsen.py")
    df = g["check"](g["Network"]([4, 6, 5, 3], dtype=torch.float32, device=device), steps=3)
    assert (df["dtype"] == "float32").all() and df["passed"].all()


def test_custom_function_example_catches_a_wrong_backward():
    g = load("custom_function.py")

    class Slip(torch.autograd.Function):  # forgets sigma'(z): returns dL/dz = dL/dy
        @staticmethod
        def forward(ctx, x, weight, bias):
            return g["SigmoidLinear"].forward(ctx, x, weight, bias)

        @staticmethod
        def backward(ctx, error):
            x, weight, y = ctx.saved_tensors
            return error @ weight, error.T @ x, error.sum(0)

    class SlipLayer(g["FusedLayer"]):
        def forward(self, x):
            return Slip.apply(x, self.weight, self.bias)

    with pytest.raises(AssertionError) as info:
        g["check"](SlipLayer, steps=2)
    rep = info.value.report
    bad = rep[~rep.passed].iloc[0]
    assert (bad["step"], bad["layer"]) == (1, 2) and bad["quantity"].startswith("grad_")
    assert "1.grad_" in str(info.value)


def test_custom_function_example_on_each_device_and_float32(device):
    g = load("custom_function.py")
    df = g["check"](steps=3, dtype=torch.float32, device=device)
    assert df["passed"].all() and (df["device"] == str(torch.device(device))).all()
