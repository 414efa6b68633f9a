"""The one tolerance table: torch.testing.assert_close's per-dtype defaults.

An element passes when ``|m - r| <= atol + rtol * |r|`` (m manual, r reference).
Float64 is the dtype for proofs; its (1e-7, 1e-7) is loose next to float64
rounding (about 1e-16 relative), so the tests also assert much smaller
differences where they prove a formula.
"""
import torch

from bpcheck.compare.core.errors import UsageError

# dtype: (rtol, atol)
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}


def tolerance(dtype, rtol=None, atol=None):
    """(rtol, atol) for ``dtype``; user values override, both or neither."""
    if (rtol is None) != (atol is None):
        raise UsageError("give both rtol and atol, or neither")
    if rtol is None:
        if dtype not in TOLERANCES:
            raise UsageError(f"no default tolerance for {dtype}; give rtol and atol")
        return TOLERANCES[dtype]
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
            raise UsageError(f"{name} must be a non-negative number, got {v!r}")
    return float(rtol), float(atol)
