"""Issue 12 on the user path: sites that are not Linear layers, shapes, data, losses,
randomness, and nothing skipped. Each test would fail if the rule it names broke."""
import numpy as np
import pytest
import torch
from torch import nn

import bpcheck
from bpcheck.compare import UsageError
from bpcheck.reference import LOSS_FNS
from bpcheck.testing import BackpropMismatch

F64 = torch.float64


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.act, self.out = nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(approximate="tanh"), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.act(self.norm(self.fc(x))))


class ManualGelu:
    """The same network by hand, reporting a delta at every site (the GELU included)."""

    def __init__(self, ref, broken_gelu=False):
        p = {n: v.detach().clone() for n, v in ref.named_parameters()}
        self.params = {"fc": {"weight": p["fc.weight"].T.contiguous(), "bias": p["fc.bias"]},
                       "norm": {"weight": p["norm.weight"], "bias": p["norm.bias"]},
                       "out": {"weight": p["out.weight"].T.contiguous(), "bias": p["out.bias"]}}
        self.broken = broken_gelu

    def step(self, x, t):
        P = self.params
        z = x @ P["fc"]["weight"] + P["fc"]["bias"]  # (B, 4) @ (4, 6)
        mu, var = z.mean(1, keepdim=True), z.var(1, unbiased=False, keepdim=True)
        zhat = (z - mu) / (var + 1e-5).sqrt()
        n = zhat * P["norm"]["weight"] + P["norm"]["bias"]
        c = (2 / torch.pi) ** 0.5
        u = c * (n + 0.044715 * n ** 3)
        th = torch.tanh(u)
        a = 0.5 * n * (1 + th)
        y = a @ P["out"]["weight"] + P["out"]["bias"]  # (B, 6) @ (6, 2)
        dy = y - t  # half_sse
        da = dy @ P["out"]["weight"].T  # (B, 2) @ (2, 6)
        # gelu' = 0.5 (1 + th) + 0.5 n (1 - th^2) c (1 + 3 * 0.044715 n^2)
        dgelu = 0.5 * (1 + th) + 0.5 * n * (1 - th ** 2) * c * (1 + 3 * 0.044715 * n ** 2)
        dn = da * (dgelu if not self.broken else 0.5 * (1 + th))  # the slip: the second term dropped
        dzhat = dn * P["norm"]["weight"]
        D = z.shape[1]
        dz = (dzhat - dzhat.mean(1, keepdim=True) - zhat * (dzhat * zhat).mean(1, keepdim=True)) / (var + 1e-5).sqrt()
        sites = {"out": {"delta": y - t, "grad_weight": a.T @ dy, "grad_bias": dy.sum(0)},
                 "act": {"delta": da, "error_prev": dn},
                 "norm": {"delta": dn, "error_prev": dz, "grad_weight": (dn * zhat).sum(0), "grad_bias": dn.sum(0)},
                 "fc": {"delta": dz, "grad_weight": x.T @ dz, "grad_bias": dz.sum(0)}}
        assert D == 6
        return {"loss": 0.5 * ((y - t) ** 2).sum(), "output": y, "sites": sites}


def gelu_case(**kw):
    torch.manual_seed(0)
    ref = GeluNet().double()
    x, t = torch.randn(5, 4, dtype=F64), torch.randn(5, 2, dtype=F64)
    return ManualGelu(ref, **kw), ref, x, t


def test_a_parameterless_site_is_its_own_site():
    man, ref, x, t = gelu_case()
    report = bpcheck.assert_backprop_close(man, ref, x, t, steps=2, optimizer=0.1)
    assert ("act", "error_prev") in set(zip(report["site"], report["quantity"]))
    man, ref, x, t = gelu_case(broken_gelu=True)
    with pytest.raises(BackpropMismatch) as info:
        bpcheck.assert_backprop_close(man, ref, x, t, steps=1, optimizer=0.1)
    # the GELU's slip is named at the GELU, not folded into the LayerNorm below it
    assert "step 1, act.error_prev" in str(info.value).splitlines()[2]


def test_a_transposed_gradient_with_bpchecks_update_is_a_failed_shape_row():
    man, ref, x, t = gelu_case()
    inner = man.step

    class StepOnly:  # no update(): bpcheck's SGD, fed a transposed gradient
        params = man.params

        def step(self, x, t):
            tr = inner(x, t)
            tr["sites"]["out"]["grad_weight"] = tr["sites"]["out"]["grad_weight"].T
            return tr

    with pytest.raises(BackpropMismatch) as info:
        bpcheck.assert_backprop_close(StepOnly(), ref, x, t, steps=1, optimizer=0.1)
    report = info.value.report
    row = report[(report["site"] == "out") & (report["quantity"] == "grad_weight")].iloc[0]
    assert not row["passed"] and row["note"] == "shape:manual (2, 6) != reference (6, 2)" and row["index"] in ("", "0")
    assert "step 1, out.grad_weight" in str(info.value)


def test_a_module_called_twice_reports_each_call_and_sums_its_gradient():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    torch.manual_seed(1)
    ref = Twice().double()
    W, b = ref.fc.weight.detach().T.clone(), ref.fc.bias.detach().clone()
    x, t = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)

    class Manual:
        params = {"fc": {"weight": W, "bias": b}}

        def step(self, x, t):
            z1 = x @ W + b  # (4, 3) @ (3, 3)
            h = torch.tanh(z1)
            y = h @ W + b
            d2 = y - t
            d1 = (d2 @ W.T) * (1 - h ** 2)
            return {"loss": 0.5 * (d2 ** 2).sum(), "output": y,
                    "sites": {"fc": {("delta", 1): d1, ("delta", 2): d2, "grad_weight": x.T @ d1 + h.T @ d2,
                                     "grad_bias": d1.sum(0) + d2.sum(0)}}}

        def update(self, trace):
            g = trace["sites"]["fc"]
            W.sub_(0.1 * g["grad_weight"])
            b.sub_(0.1 * g["grad_bias"])

    report = bpcheck.assert_backprop_close(Manual(), ref, x, t, steps=3, optimizer=0.1)
    deltas = report[(report["site"] == "fc") & (report["quantity"] == "delta")]
    assert sorted(deltas["time"].unique()) == [1, 2] and len(deltas) == 6


def test_cross_entropy_is_torchs_and_stable_at_a_logit_spread_of_1e4():
    for dtype in (torch.float32, torch.float64):
        ref = nn.Linear(3, 4).to(dtype)
        with torch.no_grad():
            ref.weight.copy_(torch.tensor([[1e4, 0, 0], [0, 0, 0], [-1e4, 0, 0], [0, 1, 0]], dtype=dtype) / 2)
            ref.bias.zero_()
        x, labels = torch.tensor([[1.0, 0, 0], [-1.0, 1, 0]], dtype=dtype), torch.tensor([2, 0])
        W = ref.weight.detach().T.clone()
        b = ref.bias.detach().clone()

        class Manual:
            params = [{"weight": W, "bias": b}]

            def step(self, x, t):
                y = x @ W + b  # logits (2, 3) @ (3, 4)
                p = torch.softmax(y, 1)
                T = torch.eye(4, dtype=dtype)[t]
                delta = (p - T) / y.shape[0]  # dL/dy of the mean cross-entropy
                logp = torch.log_softmax(y, 1)
                return {"loss": -(T * logp).sum() / y.shape[0], "output": y,
                        "layers": [{"delta": delta, "grad_weight": x.T @ delta, "grad_bias": delta.sum(0)}]}

            def update(self, trace):
                pass

        report = bpcheck.assert_backprop_close(Manual(), ref, x, labels, loss="cross_entropy", optimizer=0.0)
        assert np.isfinite(report["manual_norm"]).all() and report["passed"].all()
        spread = float((x @ W).max() - (x @ W).min())
        assert spread >= 1e4
    y = torch.tensor([[2.0, 1.0, 0.1]], dtype=F64)
    assert float(LOSS_FNS["cross_entropy"](y, torch.tensor([0]))) == pytest.approx(
        float(torch.nn.functional.cross_entropy(y, torch.tensor([0]))), abs=0)


def test_dropout_in_training_mode_is_refused_with_the_reason():
    ref = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1)).double()
    with pytest.raises(UsageError, match=r"1 \(Dropout\) in training mode: its mask is random"):
        bpcheck.assert_backprop_close(object(), ref, torch.ones(2, 3, dtype=F64), torch.ones(2, 1, dtype=F64))


def test_randomness_in_forward_is_refused_with_the_reason():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(torch.nn.functional.dropout(x, 0.5, training=True))

    with pytest.raises(UsageError, match="forward draws random numbers"):
        bpcheck.assert_backprop_close(object(), Noisy().double(), torch.ones(2, 3, dtype=F64), torch.ones(2, 1, dtype=F64))


def test_the_probe_leaves_buffers_and_rng_as_found():
    from bpcheck.reference.side import probe_order

    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    x = torch.randn(6, 3, dtype=F64)
    before = {n: b.clone() for n, b in ref.named_buffers()}
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert probe_order(ref, x) == ["", "0", "1", "2"]
    assert all(torch.equal(before[n], b) for n, b in ref.named_buffers())
    assert torch.equal(state, torch.get_rng_state())


def test_buffers_of_a_list_form_reference_are_not_skipped():
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    params = [{n: (p.detach().T if p.ndim == 2 else p.detach()).clone() for n, p in m.named_parameters()}
              for m in (ref[0], ref[1], ref[2])]

    class Quiet:  # reports the loss and output only: its buffers are missing, not its formulas
        def __init__(self):
            self.params = params

        def step(self, x, t):
            return {"loss": torch.zeros((), dtype=F64), "output": torch.zeros(6, 1, dtype=F64), "layers": [{}, {}, {}]}

        def update(self, trace):
            pass

    with pytest.raises(UsageError, match=r"the reference has 1\.num_batches_tracked, 1\.running_mean, 1\.running_var, "
                                         r"which the manual side does not report"):
        bpcheck.assert_backprop_close(Quiet(), ref, torch.randn(6, 3, dtype=F64), torch.ones(6, 1, dtype=F64))


def test_maps_must_cover_a_packed_parameter_exactly_once():
    ref = nn.Linear(2, 4).double()
    man = type("M", (), {"params": {"": {}}})()
    maps = {"(root).top": ("weight", lambda w: w[:2]), "(root).bottom": ("weight", lambda w: w[1:])}
    with pytest.raises(UsageError, match=r"maps: elements of \(root\)\.weight \(4, 2\) are covered twice"):
        bpcheck.assert_backprop_close(man, ref, torch.ones(1, 2, dtype=F64), torch.ones(1, 4, dtype=F64), maps=maps)
    maps = {"(root).top": ("weight", lambda w: w[:2].clone())}
    with pytest.raises(UsageError, match="must return a view"):
        bpcheck.assert_backprop_close(man, ref, torch.ones(1, 2, dtype=F64), torch.ones(1, 4, dtype=F64), maps=maps)


def test_a_manual_quantity_without_counterpart_is_refused():
    man, ref, x, t = gelu_case()
    inner = man.step

    class Extra(ManualGelu):
        def step(self, x, t):
            tr = inner(x, t)
            tr["sites"]["act"]["grad_alpha"] = torch.zeros(1, dtype=F64)
            return tr

    extra = Extra.__new__(Extra)
    extra.__dict__.update(man.__dict__)
    with pytest.raises(UsageError, match=r"the manual side reports act\.grad_alpha, which the reference has no counterpart"):
        bpcheck.assert_backprop_close(extra, ref, x, t, optimizer=0.1)


def test_integer_targets_and_per_step_batches_from_a_callable():
    torch.manual_seed(2)
    ref = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 5)).double()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 5, (4, 2), generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(3)]
    C = ref[0].weight.detach().clone()
    W, b = ref[2].weight.detach().T.clone(), ref[2].bias.detach().clone()
    seen = []

    class Manual:
        params = {"0": {"weight": C}, "2": {"weight": W, "bias": b}}

        def step(self, X, Y):
            seen.append(X.clone())
            e = C[X].reshape(X.shape[0], -1)  # (4, 6)
            y = e @ W + b  # (4, 6) @ (6, 5)
            p = torch.softmax(y, 1)
            d = (p - torch.eye(5, dtype=F64)[Y]) / X.shape[0]
            de = (d @ W.T).reshape(X.shape[0], 2, 3)
            dC = torch.zeros_like(C).index_add_(0, X.reshape(-1), de.reshape(-1, 3))
            return {"loss": -torch.log_softmax(y, 1)[torch.arange(4), Y].mean(), "output": y,
                    "sites": {"2": {"delta": d, "grad_weight": e.T @ d, "grad_bias": d.sum(0)}, "0": {"grad_weight": dC}}}

    report = bpcheck.assert_backprop_close(Manual(), ref, lambda step: batches[step - 1], loss="cross_entropy",
                                           optimizer=0.5, steps=3)
    assert report["passed"].all() and report["step"].max() == 3
    assert all(torch.equal(s, bt[0]) for s, bt in zip(seen, batches))
    report = bpcheck.assert_backprop_close(Manual(), ref, batches, loss="cross_entropy", optimizer=0.5, steps=10)
    assert report["step"].max() == 3 and report.attrs["halted"] == {"Manual": "the data ran out after step 3"}
