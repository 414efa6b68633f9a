"""The manual optimizers against torch.optim: the same float64 parameters and the same
random gradients every step, then every parameter and every state tensor compared under
torch's own state names (``optimizer.state[p]``). A few formulas broken on purpose show
the comparison names the first quantity that goes wrong."""
import pathlib
import re

import numpy as np
import pytest
import torch

from bpcheck.compare.core.errors import UsageError
from bpcheck.manual import SGD, Adagrad, Adam, AdamW, FullRMSprop, FullSGD, RMSprop, from_torch, make_optimizer

RTOL, ATOL = 1e-12, 1e-14  # float64; the two sides round their products in different orders
STEPS = 25
SHAPES = [{"weight": (3, 4), "bias": (4,)}, {"weight": (4, 2)}]  # layers, as a manual MLP holds them
TWINS = {"sgd": (FullSGD, torch.optim.SGD), "adam": (Adam, torch.optim.Adam), "adamw": (AdamW, torch.optim.AdamW),
         "rmsprop": (FullRMSprop, torch.optim.RMSprop), "adagrad": (Adagrad, torch.optim.Adagrad)}
GRID = [  # (optimizer, lr, options): every option of each, alone and together
    ("sgd", 0.1, {}), ("sgd", 0.1, {"momentum": 0.9}), ("sgd", 0.1, {"momentum": 0.9, "dampening": 0.5}),
    ("sgd", 0.1, {"momentum": 0.8, "nesterov": True}), ("sgd", 0.05, {"weight_decay": 0.1}),
    ("sgd", 0.05, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("sgd", 0.05, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", 0.01, {}), ("adam", 0.01, {"amsgrad": True}), ("adam", 0.01, {"weight_decay": 0.1}),
    ("adam", 0.02, {"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.05, "amsgrad": True}),
    ("adamw", 0.01, {}), ("adamw", 0.01, {"amsgrad": True}), ("adamw", 0.02, {"weight_decay": 0.3, "eps": 1e-4}),
    ("rmsprop", 0.01, {}), ("rmsprop", 0.01, {"momentum": 0.9}), ("rmsprop", 0.01, {"centered": True}),
    ("rmsprop", 0.01, {"alpha": 0.5, "eps": 1e-3, "weight_decay": 0.1}),
    ("rmsprop", 0.005, {"centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("adagrad", 0.1, {}), ("adagrad", 0.1, {"lr_decay": 0.1}), ("adagrad", 0.1, {"weight_decay": 0.1}),
    ("adagrad", 0.1, {"initial_accumulator_value": 0.5, "eps": 1e-3, "lr_decay": 0.01, "weight_decay": 0.01}),
]


def first_mismatch(manual, make_torch, sites=False, steps=STEPS, seed=0):
    """Steps ``manual`` and the torch.optim optimizer ``make_torch(params)`` side by side and
    returns the first disagreement as (step, site, param, quantity), quantity a state name,
    "state names" or "param"; None when all agree. State is compared before the parameter,
    so that a broken state formula is named rather than the update it feeds."""
    gen = torch.Generator().manual_seed(seed)
    keys = [f"fc{i}" for i in range(len(SHAPES))] if sites else list(range(len(SHAPES)))
    init = {k: {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in shape.items()}
            for k, shape in zip(keys, SHAPES)}
    mine = {k: {n: w.clone() for n, w in p.items()} for k, p in init.items()}
    theirs = {k: {n: torch.nn.Parameter(w.clone()) for n, w in p.items()} for k, p in init.items()}
    opt = make_torch([w for p in theirs.values() for w in p.values()])
    as_given = (lambda d: d) if sites else (lambda d: [d[k] for k in keys])
    for step in range(1, steps + 1):
        scale = 10.0 ** (2 * torch.rand((), generator=gen).item() - 1)  # gradients from 0.1 to 10
        grads = {k: {n: scale * torch.randn(w.shape, generator=gen, dtype=torch.float64) for n, w in p.items()}
                 for k, p in init.items()}
        for k, p in theirs.items():
            for n, w in p.items():
                w.grad = grads[k][n].clone()
        opt.step()
        manual.step(as_given(mine), as_given(grads))
        state = manual.state()
        for i, k in enumerate(keys):
            for n, w in theirs[k].items():
                want = opt.state[w]
                got = {} if state is None else state[k if sites else i][n]
                if set(got) != set(want):
                    return step, k, n, "state names"
                for q in want:
                    if not torch.allclose(got[q], want[q].to(got[q].dtype), rtol=RTOL, atol=ATOL):
                        return step, k, n, q
                if not torch.allclose(mine[k][n], w.detach(), rtol=RTOL, atol=ATOL):
                    return step, k, n, "param"
    return None


def torch_twin(name, lr, kw):
    return lambda ps: TWINS[name][1](ps, lr=lr, foreach=False, **kw)


@pytest.mark.parametrize("name,lr,kw", GRID, ids=lambda v: str(v))
def test_every_parameter_and_state_tensor_matches_torch_optim(name, lr, kw):
    assert first_mismatch(TWINS[name][0](lr, **kw), torch_twin(name, lr, kw)) is None


@pytest.mark.parametrize("name,lr,kw", [g for g in GRID if g[2]], ids=lambda v: str(v))
def test_from_torch_builds_a_twin_that_matches_on_named_sites(name, lr, kw):
    probe = torch_twin(name, lr, kw)([torch.nn.Parameter(torch.zeros(1))])
    manual = from_torch(probe)
    assert type(manual) is TWINS[name][0]
    assert first_mismatch(manual, torch_twin(name, lr, kw), sites=True) is None


def test_make_optimizer_builds_the_full_twins_by_name():
    for name, lr, kw in GRID:
        opt = make_optimizer(name, lr, **kw)
        seed = name in ("sgd", "rmsprop") and not kw
        assert type(opt) is ({"sgd": SGD, "rmsprop": RMSprop}[name] if seed else TWINS[name][0])
    assert first_mismatch(make_optimizer("adamw", 0.01, amsgrad=True), torch_twin("adamw", 0.01, {"amsgrad": True})) \
        is None


# Formulas broken on purpose: the comparison must fail, at the step and quantity that hold the fault.

class SGDDampedFirstStep(FullSGD):
    def update(self, w, g, s):
        s.setdefault("momentum_buffer", torch.zeros_like(w))  # b = 0, so the first step gives b = (1-d)*g
        super().update(w, g, s)


class AdamNoBiasCorrection(Adam):
    def update(self, w, g, s):
        (b1, b2), m, v = self.betas, s["exp_avg"], s["exp_avg_sq"]
        s["step"] += 1
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        w.sub_(self.lr * m / (v.sqrt() + self.eps))  # no 1 - b^t


class AdamEpsInsideRoot(Adam):
    def update(self, w, g, s):
        (b1, b2), m, v = self.betas, s["exp_avg"], s["exp_avg_sq"]
        t = s["step"] = s["step"] + 1
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        w.sub_(self.lr / (1 - b1 ** t) * m / (v / (1 - b2 ** t) + self.eps).sqrt())  # eps under the root


class AdamWCoupledDecay(AdamW):
    decoupled = False  # the decay goes into g (Adam's L2), not onto W


class RMSpropNotCentered(FullRMSprop):
    def update(self, w, g, s):
        ga = s.pop("grad_avg")  # keep grad_avg up to date but leave it out of the denominator
        ga.mul_(self.alpha).add_((1 - self.alpha) * g)
        self.centered = False
        super().update(w, g, s)
        self.centered, s["grad_avg"] = True, ga


class AdagradDecayFromFirstStep(Adagrad):
    def update(self, w, g, s):
        t = s["step"] = s["step"] + 1
        s["sum"].add_(g * g)
        w.sub_(self.lr / (1 + t * self.lr_decay) * g / (s["sum"].sqrt() + self.eps))  # t, not t - 1


class AdamStateRenamed(Adam):
    def state(self):
        st = super().state()
        return [{n: {("m" if q == "exp_avg" else q): v for q, v in d.items()} for n, d in p.items()} for p in st]


@pytest.mark.mutation
@pytest.mark.parametrize("mutant,name,lr,kw,quantity", [
    (SGDDampedFirstStep, "sgd", 0.1, {"momentum": 0.9, "dampening": 0.5}, "momentum_buffer"),
    (AdamNoBiasCorrection, "adam", 0.01, {}, "param"),
    (AdamEpsInsideRoot, "adam", 0.01, {"eps": 1e-3}, "param"),
    (AdamWCoupledDecay, "adamw", 0.01, {"weight_decay": 0.1}, "exp_avg"),
    (RMSpropNotCentered, "rmsprop", 0.01, {"centered": True}, "param"),
    (AdagradDecayFromFirstStep, "adagrad", 0.1, {"lr_decay": 0.1}, "param"),
    (AdamStateRenamed, "adam", 0.01, {}, "state names"),
], ids=lambda v: getattr(v, "__name__", None))
def test_a_broken_formula_fails_at_its_first_step_and_quantity(mutant, name, lr, kw, quantity):
    assert first_mismatch(mutant(lr, **kw), torch_twin(name, lr, kw)) == (1, 0, "weight", quantity)


# The interface

def test_state_keeps_the_outer_structure_and_hands_step_out_in_the_parameter_dtype():
    opt = Adam(0.1, amsgrad=True)
    assert opt.state() is None
    params = {"fc1": {"weight": torch.ones(2, 3, dtype=torch.float32)}, "fc2": {"bias": torch.ones(3)}}
    opt.step(params, {k: {n: torch.full_like(w, 0.5) for n, w in p.items()} for k, p in params.items()})
    opt.step(params, {k: {n: torch.full_like(w, 0.5) for n, w in p.items()} for k, p in params.items()})
    st = opt.state()
    assert list(st) == ["fc1", "fc2"] and list(st["fc1"]) == ["weight"]
    assert list(st["fc1"]["weight"]) == ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    step = st["fc1"]["weight"]["step"]
    assert step.shape == () and step.dtype == torch.float32 and step.item() == 2.0
    assert st["fc1"]["weight"]["exp_avg"] is opt.state()["fc1"]["weight"]["exp_avg"]  # live tensors


def test_sgd_without_momentum_keeps_no_state_and_a_list_keeps_empty_layers():
    opt = FullSGD(0.5, weight_decay=0.1)
    w = torch.ones(2)
    opt.step([{"weight": w}], [{"weight": torch.ones(2)}])
    assert opt.state() is None and torch.equal(w, torch.full((2,), 1 - 0.5 * 1.1))
    opt = FullRMSprop(0.1)
    opt.step([{}, {"bias": torch.ones(2)}], [{}, {"bias": torch.ones(2)}])
    assert [list(p) for p in opt.state()] == [[], ["bias"]]


def test_grads_of_another_structure_are_refused():
    with pytest.raises(UsageError, match="structure of params"):
        Adam().step({"fc1": {"weight": torch.ones(2)}}, [{"weight": torch.ones(2)}])


def test_seed_optimizers_keep_their_classes_and_state_format():
    assert type(make_optimizer("sgd", 1.0)) is SGD
    rms = make_optimizer("rmsprop", 0.1, alpha=0.999, eps=1e-2)
    assert type(rms) is RMSprop
    w = torch.ones(2)
    rms.step([{"weight": w}], [{"weight": torch.full((2,), 2.0)}])
    st = rms.state()
    assert isinstance(st, list) and list(st[0]) == ["weight"] and isinstance(st[0]["weight"], torch.Tensor)
    assert torch.allclose(st[0]["weight"], torch.full((2,), 0.001 * 4.0), rtol=1e-15)
    assert type(make_optimizer("rmsprop", 0.1, momentum=0)) is FullRMSprop  # any other option: the full twin


@pytest.mark.parametrize("opt", [lambda: SGD(0.5), lambda: RMSprop(0.1, 0.9, 1e-3)], ids=["sgd", "rmsprop"])
def test_seed_optimizers_take_sites_by_name_with_the_same_result_bit_for_bit(opt):
    gen = torch.Generator().manual_seed(1)
    init = [{"weight": torch.randn(3, 2, generator=gen, dtype=torch.float64), "bias": torch.randn(2, generator=gen)}]
    grads = [[{n: torch.randn(w.shape, generator=gen, dtype=w.dtype) for n, w in p.items()} for p in init]
             for _ in range(3)]
    as_list, as_dict = opt(), opt()
    lp, dp = [{n: w.clone() for n, w in init[0].items()}], {"fc": {n: w.clone() for n, w in init[0].items()}}
    for g in grads:
        as_list.step(lp, g)
        as_dict.step(dp, {"fc": g[0]})
    assert all(torch.equal(lp[0][n], dp["fc"][n]) for n in lp[0])
    if as_list.state() is not None:
        assert list(as_dict.state()) == ["fc"]
        assert all(torch.equal(as_list.state()[0][n], as_dict.state()["fc"][n]) for n in lp[0])


def test_complex_parameters_are_refused():
    with pytest.raises(UsageError, match="Adam: complex parameters are not supported"):
        Adam().step([{"weight": torch.ones(2, dtype=torch.complex128)}], [{"weight": torch.ones(2, dtype=torch.complex128)}])


@pytest.mark.parametrize("lr", [1.0, 0.25])
def test_seed_sgd_updates_a_numpy_view_in_place(lr):
    base = np.arange(6.0).reshape(2, 3)
    view = base[:, 1:]
    g = np.ones((2, 2))
    SGD(lr).step([{"weight": view}], [{"weight": g}])
    assert np.array_equal(base, np.array([[0, 1 - lr, 2 - lr], [3, 4 - lr, 5 - lr]]))
    assert SGD(lr).state() is None


# Bad input: the manual optimizers refuse what torch refuses, with torch's message

@pytest.mark.parametrize("name,kw", [
    ("sgd", {"lr": 0.1, "nesterov": True}), ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("sgd", {"lr": -1.0}), ("sgd", {"lr": 0.1, "momentum": -0.1}), ("sgd", {"lr": 0.1, "weight_decay": -1.0}),
    ("adam", {"betas": (1.0, 0.999)}), ("adam", {"betas": (0.9, -0.1)}), ("adam", {"eps": -1.0}),
    ("adamw", {"weight_decay": -0.1}), ("rmsprop", {"alpha": -0.5}), ("rmsprop", {"momentum": -1.0}),
    ("adagrad", {"lr_decay": -1.0}), ("adagrad", {"initial_accumulator_value": -1.0}),
])
def test_invalid_hyper_parameters_raise_torchs_message(name, kw):
    with pytest.raises(ValueError) as theirs:
        TWINS[name][1]([torch.nn.Parameter(torch.zeros(1))], **kw)
    with pytest.raises(UsageError) as mine:
        TWINS[name][0](**kw)
    assert str(mine.value) == str(theirs.value)


def test_make_optimizer_refuses_unknown_names_and_options():
    with pytest.raises(UsageError, match=r"unknown optimizer 'lbfgs' \(known: sgd, adam, adamw, rmsprop, adagrad\)"):
        make_optimizer("lbfgs", 0.1)
    with pytest.raises(UsageError, match=r"optimizer 'adam' has no option 'momentum' \(its options: betas, eps, "):
        make_optimizer("adam", 0.1, momentum=0.9)


def one_param():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize("build,option", [
    (lambda: torch.optim.Adam(one_param(), foreach=True), "foreach=True"),
    (lambda: torch.optim.AdamW(one_param(), fused=True), "fused=True"),
    (lambda: torch.optim.Adam(one_param(), capturable=True), "capturable=True"),
    (lambda: torch.optim.SGD(one_param(), lr=0.1, maximize=True), "maximize=True"),
    (lambda: torch.optim.RMSprop(one_param(), differentiable=True), "differentiable=True"),
    (lambda: torch.optim.Adam(one_param(), decoupled_weight_decay=True), "decoupled_weight_decay=True"),
    (lambda: torch.optim.Adamax(one_param()), "no manual twin for Adamax"),
    (lambda: torch.optim.SGD([{"params": one_param()}, {"params": one_param(), "lr": 0.2}], lr=0.1),
     "param groups differ in lr (0.1 and 0.2)"),
])
def test_from_torch_refuses_what_the_twins_do_not_follow(build, option):
    with pytest.raises(UsageError, match=option.replace("(", r"\(").replace(")", r"\)")) as e:
        from_torch(build())
    assert "\n" not in str(e.value)


def test_from_torch_takes_groups_that_agree_and_refuses_a_stepped_optimizer():
    opt = torch.optim.Adagrad([{"params": one_param()}, {"params": one_param()}], lr=0.3, lr_decay=0.1)
    manual = from_torch(opt)
    assert (type(manual), manual.lr, manual.lr_decay) == (Adagrad, 0.3, 0.1)
    ps = one_param()
    opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    ps[0].grad = torch.ones(2)
    opt.step()
    with pytest.raises(UsageError, match="already taken steps"):
        from_torch(opt)


def test_the_examples_in_docs_optimizers_run(capsys):
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "optimizers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 3
    for code in blocks:
        exec(compile(code, "docs/optimizers.md", "exec"), {})
    assert capsys.readouterr().out == "['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step']\ntensor(1., dtype=torch.float64)\n"
