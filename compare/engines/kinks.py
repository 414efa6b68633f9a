"""Kinks: elements whose derivative is legitimately ambiguous.

ReLU's derivative jumps at z = 0. Both sides take it as 0 at z == 0 exactly
(torch's convention, and bpcheck.manual's), so when the two sides compute the same
z the masks agree, and a manual that takes 1 at z == 0 is a wrong formula the
report must fail. But the two sides compute z with different operations (``x @ W
+ b`` against nn.Linear's addmm), so z can differ by rounding; where that rounding
puts the two z on opposite sides of 0, each side's derivative is right for its own
z and the element's delta legitimately differs by the whole upstream error.

Such an element **straddles the kink**: ``(z_m > 0) != (z_r > 0)`` and z itself
agrees within the run's tolerance, ``|z_m - z_r| <= atol + rtol |z_r|``.

How bpcheck handles it, so that no comparison loosens:

- the manual side reports its pre-activations at kinked layers (trace ``"pre"``,
  see compare.protocol);
- the reference (``Reference.align_kinks``) moves its own z to the manual's value
  at straddling elements only, a move within the tolerance, and lets autograd
  run from there: every quantity of the step, down to the update, is then autograd
  at the manual's side of the kink, and is compared at full strictness;
- it reports the count as the side quantity ``_kinks``, and the runner notes
  ``kink:N`` on that layer's delta row (``mark_kinks``).

A delta that still fails there has a real mismatch besides the kink, and fails.
"""
import numpy as np
import torch

KINKS = "_kinks"  # side quantity: the number of straddling elements of a layer, per step


KINKED = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.PReLU)  # modules with a kink at 0


def unreported(reference, manual_keys):
    """The reference's modules with a kink at 0 (``KINKED``), where the manual side reports
    no pre-activations (trace ``pre``, block key ``_pre``): an element that rounding puts
    on the other side of 0 then fails, in float16 and bfloat16 on most wide layers. The
    run never assumes it away; a failing run's summary says it (``attrs["kinks_unreported"]``)."""
    module = getattr(reference, "module", None)
    if not isinstance(module, torch.nn.Module) or any(k[2] == "_pre" for k in manual_keys):
        return []
    return [f"{name or '(root)'} ({type(m).__name__})" for name, m in module.named_modules() if isinstance(m, KINKED)]


def straddles(z_m, z_r, rtol, atol):
    """Elements where the two pre-activations lie on opposite sides of the kink at 0
    and agree within the tolerance."""
    z_m = z_m.to(z_r.dtype)
    flip = (z_m > 0) != (z_r > 0)
    if _none(flip):  # most steps: the same side everywhere, and nothing to measure
        return flip
    return flip & ((z_m - z_r).abs() <= atol + rtol * z_r.abs())


def align(z_r, z_m, rtol, atol):
    """(z, count): the reference's z with the manual's value at straddling elements.
    The value is exactly z_m there; the gradient passes to z_r unchanged everywhere
    (``z_m + (z_r - z_r.detach())`` is z_m in value and z_r in autograd). Where no
    element straddles (the rule), z_r itself: the same value and gradient, without
    the three full-size operations and their backward."""
    amb = straddles(z_m, z_r, rtol, atol)
    count = amb.sum()
    if _none(amb):
        return z_r, count
    moved = z_m.to(z_r.dtype) + (z_r - z_r.detach())
    return torch.where(amb, moved, z_r), count


def _none(mask):
    """Whether no element of ``mask`` is set, where asking costs nothing: on the CPU and
    outside torch.func's transforms (vmap cannot branch on a value: there, and on a GPU,
    where asking is a synchronisation, the full path runs, with the same result)."""
    if mask.device.type != "cpu":
        return False
    try:
        return not bool(mask.any())
    except RuntimeError:  # a batched tensor under vmap
        return False


def mark_kinks(df, block):
    """Note ``kink:N`` on each delta row whose step had N straddling elements in that layer."""
    found = []
    for (layer, time, quantity), counts in block["reference"].items():
        if quantity != KINKS:
            continue
        n = (counts if isinstance(counts, torch.Tensor) else torch.stack(counts)).cpu().numpy()
        for i in np.flatnonzero(n):
            found.append((block["step"][i], layer, f"kink:{int(n[i])}"))
    if not found:
        return df
    for step, layer, note in found:
        at = (df["step"] == step) & (df["layer"] == layer) & (df["quantity"] == "delta")
        df.loc[at, "note"] = df.loc[at, "note"].map(lambda s: note if not s else f"{s};{note}")
    return df


def kink_rows(df):
    """The rows whose note records a kink."""
    return df[df["note"].astype(str).str.contains("kink:", regex=False)]

