"""One case under two device:dtype configurations, against a float64 CPU ground truth.

``compare_devices(case, a, b)`` runs the case with the one runner (compare.runner.run)
under configuration ``a``, under ``b`` and under the truth ``t`` = cpu:float64
(no second run when ``a`` or ``b`` is exactly that configuration: it is the truth).
Every run starts from the same initial weights and data: each configuration builds
the case from the same seed, and the build is checked to equal the truth's values
cast to its dtype, bit for bit. The report has the runner's rows of each run and,
compared with the same batched code (compare.diff through the runner's frame),

    a.m/a.r  b.m/b.r  t.m/t.r   the formula gap, manual against reference, on each side
    a.m/b.m  a.r/b.r            manual on a against manual on b; reference against reference
    a.m/t.r  a.r/t.r ...        each side against the truth, float64 autograd on the CPU
    a#2.m/a.m  a#2.r/a.r ...    repeat k of a side against its first run (``repeat``)

Modes. ``free``: every run trains its own copies from the same start, so the cross
rows show how far the trajectories drift apart. ``lockstep`` (default): each run's
reference is loaded with its manual weights before every step (the runner's
lockstep), and every side's manual weights are first set to the truth's weights at
the start of that step, cast to its dtype; each cross row then holds one step of
rounding, not an accumulated drift. Optimizer state (RMSprop) is not loaded: it
follows each side's own gradients.

Errors in units of roundoff. ``error_units`` turns a row into
``max|x - y| / (u * max(||x||, ||y||))``: the largest elementwise difference
relative to the 2-norm of the values compared, in units of ``u``, the unit
roundoff (``finfo.eps / 2``) of the row's coarser dtype. Rounding gives small
multiples of u (growing with the length of sums and, in free mode, with the
steps); a wrong formula gives about 1/u.

Verdicts (``devices_table``), per layer, time and quantity:

    formula    the float64 gap on the CPU (t.m/t.r) fails the run's rule (the
               yardstick by default, compare.core.tolerances): the hand formula
               is not autograd's, on any device and dtype
    ok         every side's gap passes the rule, and torch's table for its dtype
    rounding   a gap passes the rule but torch's table for its dtype would flag
               it, or it fails the rule while the hand formulas are no further
               from the truth than PRECISION_FACTOR times autograd's own
               distance (at least 1 u): the dtype's rounding. ``bpcheck run``
               says the same words (compare.diagnosis.summary)
    precision  a side's hand formulas are more than PRECISION_FACTOR times further
               from the truth than autograd is there: right formula, but it loses
               precision that autograd keeps (an unstable form or a device fault)

Under the tight float64 rule a formula that is right in real arithmetic but loses
digits fails the float64 gap too; it is ``precision``, not ``formula``, when its
float64 gap in units of u is within SCALES_WITH_U of a coarser side's manual error
in that side's units: the loss scales with u, as rounding does, while a wrong
formula is the same absolute error in every dtype (about u32/u64 = 5e8 times more
units in float64).

``formula`` and ``precision`` make ``bpcheck devices`` exit 1.

The repeats (``repeat`` > 1) run each side again with the same settings; their
spread is the nondeterminism floor: a difference between a and b below the floor
says nothing about a or b. CPU kernels are deterministic at a fixed thread count,
so on the CPU the floor is 0, which the tests assert.
"""
import functools
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import pandas as pd
import torch

from bpcheck.compare.diagnosis import settings
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.runner import MODES, _frame, check_steps, resolve_case, resolve_device, resolve_dtype, run
from bpcheck.compare.core.tolerances import TOLERANCES, tolerance
from bpcheck.compare.diagnosis.summary import torch_flags

DEFAULT_STEPS = 1000  # a devices report has up to nine comparisons per step; --steps for more
PRECISION_FACTOR = 10.0
SCALES_WITH_U = 100.0  # a float64 gap within this factor of a coarser side's units scales with u: precision
TRUTH = ("cpu", "float64")


def unit_roundoff(dtype):
    """u = eps / 2: the largest relative error of rounding one real number to ``dtype``."""
    return torch.finfo(resolve_dtype(dtype)).eps / 2


def dtype_name(dt):
    return str(dt).replace("torch.", "")


@dataclass(frozen=True)
class Config:
    """One configuration: device, dtype and the numerics settings to run it under
    (None: as they are)."""
    name: str
    device: str
    dtype: str
    threads: Optional[int] = None
    tf32: Optional[str] = None
    deterministic: Optional[bool] = None

    @property
    def spec(self):
        opts = [f"threads={self.threads}"] if self.threads is not None else []
        opts += [f"tf32={self.tf32}"] if self.tf32 is not None else []
        opts += [f"deterministic={'on' if self.deterministic else 'off'}"] if self.deterministic is not None else []
        return f"{self.device}:{self.dtype}" + (":" + ",".join(opts) if opts else "")

    def numerics(self):
        return settings.numerics(self.tf32, self.deterministic, self.threads)

    def same_run(self, other):
        return (self.device, self.dtype, self.threads, self.tf32, self.deterministic) == (
            other.device, other.dtype, other.threads, other.tf32, other.deterministic)


def parse_config(text, name, tf32=None, deterministic=None):
    """``DEVICE:DTYPE[:OPTION=VALUE,...]`` -> Config. Options: threads=N, tf32=on|off,
    deterministic=on|off; ``tf32`` and ``deterministic`` here are the defaults for both sides."""
    parts = str(text).split(":")
    if len(parts) > 1 and parts[1].isdigit():  # cuda:1:float32
        parts = [parts[0] + ":" + parts[1]] + parts[2:]
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"--{name} {text!r}: expected DEVICE:DTYPE[:OPTION=VALUE,...], e.g. cpu:float32 or cuda:float32:tf32=off")
    try:
        dev, dt = resolve_device(parts[0]), resolve_dtype(parts[1])
    except UsageError as e:
        raise UsageError(f"--{name} {text}: {e}") from None
    if dt not in TOLERANCES:
        raise UsageError(f"--{name} {text}: dtype {dtype_name(dt)} has no tolerance (float64, float32, float16, bfloat16)")
    threads, det = None, deterministic
    for item in parts[2].split(",") if len(parts) == 3 else []:
        key, _, value = item.partition("=")
        if key == "threads" and value.isdigit() and int(value) > 0:
            threads = int(value)
        elif key == "tf32" and value in settings.TF32_CHOICES:
            tf32 = value
        elif key == "deterministic" and value in ("on", "off"):
            det = value == "on"
        else:
            raise UsageError(f"--{name} {text}: bad option {item!r} (threads=N, tf32=on|off, deterministic=on|off)")
    settings.check_tf32(tf32)
    return Config(name, str(dev), dtype_name(dt), threads, tf32, det)


class Execution:
    """One configuration's run: its report rows, its settings id, and its per-step
    values on the CPU, ``values[side][key]`` a (steps, ...) tensor, side manual or reference."""

    def __init__(self, cfg):
        self.cfg, self.start, self.starts, self.chunks = cfg, None, [], {"manual": {}, "reference": {}}

    def keep(self, block, frame):
        for side, part in self.chunks.items():
            for key, vals in block[side].items():
                part.setdefault(key, []).append(torch.stack(vals).cpu())

    def finish(self, frame):
        self.frame = frame
        self.settings = frame["settings"].iloc[0]
        self.values = {side: {k: torch.cat(v) for k, v in part.items()} for side, part in self.chunks.items()}
        self.chunks = None


def _snapshot(setup):
    cpu = lambda v: v.detach().to("cpu", copy=True)  # noqa: E731
    return {"x": cpu(setup.x), "t": cpu(setup.t),
            "params": [{n: cpu(v) for n, v in p.items()} for p in setup.manual.params]}


def _check_same_start(case, cfg, mine, truth):
    """Each configuration must start from the truth's values cast to its dtype, bit for bit."""
    pairs = [("x", mine["x"], truth["x"]), ("t", mine["t"], truth["t"])]
    pairs += [(f"layer {i} {n}", p[n], q[n]) for i, (p, q) in enumerate(zip(mine["params"], truth["params"]), 1) for n in p]
    for what, v, w in pairs:
        if v.shape != w.shape or not torch.equal(v, w.to(v.dtype)):
            raise UsageError(f"case {case}: {cfg.name} = {cfg.spec} starts from a different {what} than the "
                             "float64 truth; a case must build every dtype from the same float64 values")


def _drive(setup, ex, truth):
    """Lockstep across configurations: before every step, the runner loads the reference
    with the manual weights (reference.load); wrap that load so that the truth records
    its weights there and every other side first takes them, cast to its dtype."""
    man, ref = setup.manual, setup.reference
    load, count = ref.load, [0]

    def drive(params):
        i = count[0]
        count[0] += 1
        if truth is None:
            ex.starts.append([{n: v.detach().to("cpu", copy=True) for n, v in p.items()} for p in man.params])
        elif i < len(truth.starts):
            with torch.no_grad():
                for p, src in zip(man.params, truth.starts[i]):
                    for n, v in p.items():
                        v.copy_(src[n])
        return load(man.params)

    ref.load = drive


def execute(case, cfg, steps, mode, seed=None, chunk=2048, truth=None, **options):
    """Run ``case`` under ``cfg`` with the one runner and keep its per-step values.
    ``truth``: the truth's Execution (None when this run is the truth)."""
    ex = Execution(cfg)

    @functools.wraps(case.build)  # keeps the case's signature, for the runner's option checks
    def build(**kw):
        setup = case.build(**kw)
        ex.start = _snapshot(setup)
        if truth is not None:
            _check_same_start(case.name, cfg, ex.start, truth.start)
        if mode == "lockstep" and hasattr(setup.reference, "load"):
            _drive(setup, ex, truth)
        return setup

    with cfg.numerics():
        try:
            frame = run(replace(case, build=build), steps=steps, mode=mode, device=cfg.device, dtype=cfg.dtype,
                        seed=seed, chunk=chunk, on_block=ex.keep, **options)
        except (RuntimeError, NotImplementedError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            dtype_problem = "not implemented for" in msg or ("not supported" in msg and ("Half" in msg or "BFloat16" in msg))
            if dtype_problem or isinstance(e, NotImplementedError):
                raise UsageError(f"case {case.name} does not run in {cfg.dtype} on {cfg.device}: {msg}") from None
            raise
    ex.finish(frame)
    return ex


def pair_frame(case, mode, seed, left, right, lside, rside, label, chunk=2048):
    """Rows comparing ``left``'s ``lside`` values with ``right``'s ``rside`` values, step by
    step, through the runner's batched frame, at the coarser dtype's tolerance."""
    lcfg, rcfg = left.cfg, right.cfg
    coarse = max((lcfg.dtype, rcfg.dtype), key=unit_roundoff)
    rtol, atol = tolerance(resolve_dtype(coarse))
    meta = {"case": case.name, "mode": mode, "device": f"{lcfg.device}/{rcfg.device}",
            "dtype": f"{lcfg.dtype}/{rcfg.dtype}", "seed": -1 if seed is None else seed, "atol": atol, "rtol": rtol,
            "rule": "torch", "settings": f"{left.settings}/{right.settings}", "compare": label}
    lv, rv = left.values[lside], right.values[rside]
    keys = [k for k in lv if k in rv and lv[k].shape[1:] == rv[k].shape[1:]]
    T = min((min(lv[k].shape[0], rv[k].shape[0]) for k in keys), default=0)  # common steps (stop_below)
    frames = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        block = {"step": list(range(s + 1, e + 1)),
                 "manual": {k: list(lv[k][s:e].double()) for k in keys},
                 "reference": {k: list(rv[k][s:e].double()) for k in keys}}
        frames.append(_frame(block, meta, rtol, atol))
    return frames


def compare_devices(case, a, b, steps=None, mode="lockstep", seed=None, repeat=1, tf32=None,
                    deterministic=None, chunk=2048, **options):
    """The device-pair report of ``case`` (a name or a Case): a DataFrame in the one schema,
    sorted by step; ``attrs["devices"]`` describes the configurations. ``a`` and ``b`` are
    Configs or ``DEVICE:DTYPE[:OPTION=VALUE,...]`` strings."""
    case = resolve_case(case)
    steps = check_steps(steps if steps is not None else min(case.steps, DEFAULT_STEPS))
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UsageError(f"repeat must be a positive integer, got {repeat!r}")
    settings.check_tf32(tf32)
    a = replace(a, name="a") if isinstance(a, Config) else parse_config(a, "a", tf32, deterministic)
    b = replace(b, name="b") if isinstance(b, Config) else parse_config(b, "b", tf32, deterministic)
    t = Config("t", *TRUTH, tf32=tf32, deterministic=deterministic)
    T = next((c for c in (a, b) if c.same_run(t)), t)  # the configuration that serves as truth
    kw = dict(steps=steps, mode=mode, seed=seed, chunk=chunk, **options)

    runs = {T.name: execute(case, T, truth=None, **kw)}
    truth = runs[T.name]
    gaps, vs_truth, floors = [], [], []
    for cfg in (a, b):
        if cfg.name not in runs:
            runs[cfg.name] = execute(case, cfg, truth=truth, **kw)
        ex = runs[cfg.name]
        if cfg is not T:
            for s in "mr":
                vs_truth += pair_frame(case, mode, seed, ex, truth, _side(s), "reference", f"{cfg.name}.{s}/{T.name}.r", chunk)
        for k in range(2, repeat + 1):
            again = execute(case, replace(cfg, name=f"{cfg.name}#{k}"), truth=truth, **kw)
            for s in "mr":
                floors += pair_frame(case, mode, seed, again, ex, _side(s), _side(s), f"{cfg.name}#{k}.{s}/{cfg.name}.{s}", chunk)
    for name in ([t.name] if T is t else []) + [a.name, b.name]:
        f = runs[name].frame
        gaps.append(f.assign(compare=f"{name}.m/{name}.r"))
    cross = []
    for s in "mr":
        cross += pair_frame(case, mode, seed, runs["a"], runs["b"], _side(s), _side(s), f"a.{s}/b.{s}", chunk)
    df = pd.concat(gaps + vs_truth + cross + floors, ignore_index=True)
    df = df.sort_values("step", kind="stable", ignore_index=True)
    df.attrs["devices"] = {
        "case": case.name, "mode": mode, "steps": steps, "case_steps": case.steps, "repeat": repeat,
        "truth": T.name, "configs": {c.name: {"spec": c.spec, "dtype": c.dtype, "settings": runs[c.name].settings}
                                     for c in ([t] if T is t else []) + [a, b]},
    }
    return df


def _side(s):
    return "manual" if s == "m" else "reference"


def error_units(df):
    """Per row: ``max_abs_diff / (u * max(manual_norm, reference_norm))``, u the unit
    roundoff of the row's coarser dtype ("float64/float32" -> float32's). 0 where the
    values are equal, inf where they are not finite."""
    u = df["dtype"].map({s: max(unit_roundoff(d) for d in str(s).split("/")) for s in df["dtype"].unique()})
    scale = np.maximum(df["manual_norm"], df["reference_norm"]) * u
    err = (df["max_abs_diff"] / scale).where(df["max_abs_diff"] != 0, 0.0)
    return err.fillna(np.inf).astype(float)


def devices_table(df):
    """One row per (layer, time, quantity): the worst error in units of u of each
    comparison over all steps, the gap failures, and the verdict (module docstring)."""
    info = df.attrs["devices"]
    T = info["truth"]
    d = df.assign(err=error_units(df), bad=~df["passed"].astype(bool), time=df["time"].fillna(-1),
                  flag=torch_flags(df))
    g = d.groupby(["layer", "time", "quantity", "compare"], sort=False)
    err, bad = g["err"].max().unstack("compare"), g["bad"].sum().unstack("compare")
    flag = g["flag"].sum().unstack("compare")
    col = lambda frame, c: frame[c] if c in frame else pd.Series(np.nan, index=frame.index)  # noqa: E731
    out = pd.DataFrame(index=err.index)
    out["f64_gap"] = col(err, f"{T}.m/{T}.r")
    out["formula_failed"] = col(bad, f"{T}.m/{T}.r").fillna(0).astype(int)
    for x in ("a", "b"):
        out[f"{x}.low"] = info["configs"][x]["dtype"] != "float64"
        out[f"{x}.manual"] = col(err, f"{x}.m/{T}.r") if x != T else col(err, f"{x}.m/{x}.r")
        out[f"{x}.autograd"] = col(err, f"{x}.r/{T}.r") if x != T else 0.0
        out[f"{x}.gap"] = col(err, f"{x}.m/{x}.r")
        out[f"{x}.gap_failed"] = col(bad, f"{x}.m/{x}.r").fillna(0).astype(int)
        out[f"{x}.gap_flagged"] = col(flag, f"{x}.m/{x}.r").fillna(0).astype(int)
        reps = [c for c in err.columns if c.startswith(f"{x}#")]
        out[f"{x}.floor"] = err[reps].max(axis=1) if reps else np.nan
    out["a/b.manual"] = col(err, "a.m/b.m")
    out["a/b.autograd"] = col(err, "a.r/b.r")
    out["verdict"] = [verdict(r) for _, r in out.iterrows()]
    out = out.reset_index()
    out["time"] = out["time"].where(out["time"] >= 0).astype("Int64")
    return out


def verdict(r):
    if r["formula_failed"]:
        # a formula error is the same absolute error in every dtype: far more units of float64's
        # u than of a coarser dtype's; lost precision scales with u: as many units in both
        lows = [r[f"{x}.manual"] for x in ("a", "b") if r.get(f"{x}.low", False) and not pd.isna(r[f"{x}.manual"])]
        if lows and r["f64_gap"] <= SCALES_WITH_U * max(max(lows), 1.0):
            return "precision"
        return "formula"
    worst = "ok"
    for x in ("a", "b"):
        if r[f"{x}.gap_failed"]:
            ratio = r[f"{x}.manual"] / max(r[f"{x}.autograd"], 1.0)
            worst = "precision" if ratio > PRECISION_FACTOR else ("rounding" if worst == "ok" else worst)
        elif r.get(f"{x}.gap_flagged", 0) and worst == "ok":
            worst = "rounding"
    return worst


FAILING = ("formula", "precision")


def _u(v):
    if pd.isna(v):
        return "-"
    if v == 0:
        return "0"
    return f"{v:.3g}" if v < 1e4 else f"{v:.1e}"


def format_devices(df):
    """The printed summary: the configurations and their settings, then one line per
    layer, time and quantity with the verdict and every comparison in units of u."""
    info, table = df.attrs["devices"], devices_table(df)
    T, cfgs, floors = info["truth"], info["configs"], info["repeat"] > 1
    steps = int(df["step"].max()) if len(df) else 0
    of = f" (of the case's {info['case_steps']}: --steps for more)" if info["case_steps"] > steps else ""
    lines = [f"{info['case']}: devices, {info['mode']}, {steps} steps{of}"]
    for name, c in cfgs.items():
        role = {"t": "  the truth: float64 autograd on the CPU"}.get(name, "  (also the truth)" if name == T else "")
        lines.append(f"  {name}  {c['spec']:<28} u = {unit_roundoff(c['dtype']):<8.2g} settings {c['settings']}{role}")
    for rid in settings.ids_in(c["settings"] for c in cfgs.values()):
        lines.append("  " + settings.describe(rid))
    lines.append("  [u] = max|x - y| / (u * max(||x||, ||y||)), the worst step; u: unit roundoff of the coarser dtype")
    lines.append("  manual, autograd: a side against the truth; gap: manual against autograd on that side"
                 + ("; floor: spread of the repeats" if floors else ""))
    w = 9
    side_cols = ["manual", "autograd", "gap"] + (["floor"] if floors else [])
    group = lambda title, n: f" {title:^{n * w + n - 1}} |"  # noqa: E731
    lines.append(f"  {'':<40}{'formula':>{w}} |" + group(f"a: {cfgs['a']['spec']} [u]", len(side_cols))
                 + group(f"b: {cfgs['b']['spec']} [u]", len(side_cols)) + group("a against b [u]", 2))
    cols = " ".join(f"{c:>{w}}" for c in side_cols)
    lines.append(f"  {'layer':>5} {'time':>4}  {'quantity':<18} {'verdict':<9}{'f64 gap':>{w}} | {cols} | {cols} |"
                 f" {'manual':>{w}} {'autograd':>{w}} |")
    for _, r in table.iterrows():
        t = "" if pd.isna(r["time"]) else int(r["time"])
        side = lambda x: " ".join(  # noqa: E731
            [f"{_u(r[f'{x}.manual']):>{w}}", f"{_u(r[f'{x}.autograd']):>{w}}",
             f"{_u(r[f'{x}.gap']) + ('!' if r[f'{x}.gap_failed'] else ''):>{w}}"]
            + ([f"{_u(r[f'{x}.floor']):>{w}}"] if floors else []))
        lines.append(f"  {int(r['layer']):>5} {t:>4}  {r['quantity']:<18} {r['verdict']:<9}{_u(r['f64_gap']):>{w}} |"
                     f" {side('a')} | {side('b')} | {_u(r['a/b.manual']):>{w}} {_u(r['a/b.autograd']):>{w}} |")
    counts = table["verdict"].value_counts()
    lines.append("  verdicts: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in ("ok", "rounding", "precision", "formula"))
                 + ".  formula: the float64 gap fails; rounding: a gap fails (!) its dtype's tolerance by rounding;"
                 " precision: the hand code is >10x further from the truth than autograd")
    return "\n".join(lines)
