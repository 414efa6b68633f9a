"""The one tolerance rule: what a row may differ by, and which rule said so.

An element passes when ``|m - r| <= atol + rtol * |r|`` (m manual, r reference) and
both sides are finite. A row's ``margin`` is ``max |m - r| / (atol + rtol |r|)`` over
its elements: the row passes when ``margin <= 1``. Three rules fill in atol and rtol:

``yardstick`` (the default): measured rounding. ``rtol = ULPS * u`` (u = finfo.eps / 2
of the run's dtype) covers elementwise formulas, which round each element a few
times; ``atol = K * S + finfo.tiny`` where S, per step and quantity, is how far
correct code's rounding can move that quantity, measured on the reference itself by
a *probe* (compare.core.probe): autograd's same evaluation in another precision, on
the same weights (lockstep) or along its own trajectory (free):

- float64 runs: the probe runs in float32 and ``S = max|r32 - r| * u64 / u32``.
  Rounding errors scale with u, so the float32 evaluation's distance, scaled down by
  2**-29, is the float64 rounding of this very quantity, cancellation and sum
  lengths included (a gradient much smaller than its terms gets the terms' rounding).
- float32, float16, bfloat16 runs: the probe runs in float64 (the truth) and
  ``S = max|r - truth|``: the reference's own rounding in the run's dtype; the manual
  side may be K = 16 times as far (FlashAttention's tests use the same yardstick, k = 2).
  In float64 the factor is K_SCALED = 256: the scaled float32 spread estimates float64's
  rounding rather than measuring it, and in a long stationary run one lucky float32
  evaluation repeats for thousands of steps (1,000,000 trask steps reached 50 S;
  docs/verdicts.md, "Long runs").
- free mode: the probe trains its own copy, so S is the drift that rounding alone
  gives the trajectory by that step, scaled the same way.
- the loss: its atol also carries the output's allowance, to first order
  (``sum |dL/dy| * (atol_y + rtol |y|)``, compare.core.probe): one number summed from
  the output can land, by chance, much nearer the truth than its terms.

S is a maximum over the quantity's elements, so the allowance is per quantity; a
slip that stays inside it is below what the reference's own rounding does to that
quantity. Where the probe is not finite (float32 overflow), a row falls back to
torch's rule for its dtype, as one allowance ``atol + rtol * max|r|``. K and ULPS are set from measurements (docs/verdicts.md):
the largest margin correct code reached over the widened hypothesis suite and the
deep, large, long and cancelling cases, with a factor of 4 to spare; a float32
intermediate in a float64 run is then ~1e7 over, a 1e-9 slip ~1e4 over.

``torch``: torch.testing.assert_close's per-dtype defaults (``TORCH``), right for two
implementations, loose for a proof (float64's 1e-7 lets a float32 matmul through).

``user``: the user's ``rtol`` and ``atol``, both or neither.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from bpcheck.compare.core.errors import UsageError

# dtype: (rtol, atol), torch.testing.assert_close's defaults
TORCH = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
TOLERANCES = TORCH  # the name older code imports

RULES = ("yardstick", "torch")  # by name (--tolerance); explicit rtol/atol make the rule "user"
PROBE = {torch.float64: torch.float32, torch.float32: torch.float64,
         torch.float16: torch.float64, torch.bfloat16: torch.float64}
K = 16.0  # the manual side may be this many times as far as the probe's measured rounding (a truth probe)
K_SCALED = 256.0  # the same for float64, whose float32 probe is scaled to float64's rounding
ULPS = 8.0  # elementwise allowance, in units of u of |r|
KINK_ULPS = 16.0  # z within this many u of each other (absolute: z of order 1) may straddle ReLU's kink


def unit_roundoff(dtype):
    """u = eps / 2: the largest relative error of rounding one real number to ``dtype``."""
    return torch.finfo(dtype).eps / 2


@dataclass(frozen=True)
class Rule:
    """The rule in force: ``name`` (yardstick, torch or user), ``rtol``, and ``atol`` (the
    constant one of torch and user; for the yardstick, the floor under K * S)."""
    name: str
    rtol: float
    atol: float
    probe: Optional[torch.dtype] = None  # the yardstick's probe dtype
    scale: float = 1.0  # S = scale * max|probe - r|
    k: float = K  # atol = k * S + atol
    fallback: float = 0.0  # atol where the probe is not finite (with fallback_rtol * max|r|)
    fallback_rtol: float = 0.0
    kinks: Optional[tuple] = None  # (rtol, atol) for aligning ReLU kinks (kink_tolerance)

    def atol_of(self, spread, largest):
        """The per-row atol from the probe's spread ``max|probe - r|`` and ``max|r|`` (tensors
        per row). Where the spread is not finite (the probe overflowed), torch's rule for
        the dtype, as one absolute allowance: ``atol + rtol * max|r|``."""
        a = spread * (self.k * self.scale) + self.atol
        return torch.where(torch.isfinite(a), a, largest * self.fallback_rtol + self.fallback)


def tolerance(dtype, rtol=None, atol=None):
    """(rtol, atol) of torch's table for ``dtype``; user values override, both or neither."""
    if (rtol is None) != (atol is None):
        raise UsageError("give both rtol and atol, or neither")
    if rtol is None:
        if dtype not in TORCH:
            raise UsageError(f"no default tolerance for {dtype}; give rtol and atol")
        return TORCH[dtype]
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
            raise UsageError(f"{name} must be a non-negative number, got {v!r}")
    return float(rtol), float(atol)


def rule(dtype, name=None, rtol=None, atol=None):
    """The Rule for a run in ``dtype``: explicit ``rtol``/``atol`` (both) give ``user``;
    otherwise ``name`` (default ``yardstick``)."""
    if name is not None and name not in RULES:
        raise UsageError(f"unknown tolerance {name!r} (known: {', '.join(RULES)}; or give rtol and atol)")
    if rtol is not None or atol is not None:
        if name is not None:
            raise UsageError(f"give a tolerance by name ({name}) or rtol and atol, not both")
        r, a = tolerance(dtype, rtol, atol)
        return Rule("user", r, a)
    r, a = tolerance(dtype)
    if name == "torch":
        return Rule("torch", r, a)
    u, probe = unit_roundoff(dtype), PROBE[dtype]
    scale = u / unit_roundoff(probe) if unit_roundoff(probe) > u else 1.0
    k = K_SCALED if scale != 1.0 else K
    return Rule("yardstick", ULPS * u, torch.finfo(dtype).tiny * u, probe, scale, k, a, r, (r, max(a, KINK_ULPS * u)))


def describe(rule):
    """One line for the summary: which rule decided, in words."""
    if rule.name == "yardstick":
        src = f"the reference re-evaluated in {str(rule.probe).replace('torch.', '')}"
        src += " and scaled to this dtype's rounding" if rule.scale != 1.0 else " (the truth)"
        return (f"rule yardstick: |m - r| <= {rule.k:g} x S + {ULPS:g} ulp x |r|, S = the rounding of each quantity "
                f"measured by {src}; margin = |m - r| in units of that allowance (pass <= 1)")
    return (f"rule {rule.name}: |m - r| <= atol {rule.atol:g} + rtol {rule.rtol:g} x |r|"
            + (" (torch.testing's defaults)" if rule.name == "torch" else "") + "; margin in units of it")



def kink_tolerance(rule):
    """(rtol, atol) within which two pre-activations on opposite sides of ReLU's kink count
    as the same z (compare.engines.kinks): a constant pair. Under the yardstick (whose
    atol is per quantity and step, and z is not reported) torch's rtol and the larger of
    torch's atol and KINK_ULPS * u: in float16/bfloat16 the two sides' z of order 1
    differ by several u, far more than torch's 1e-5."""
    return rule.kinks or (rule.rtol, rule.atol)
