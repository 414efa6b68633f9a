"""Batched comparison of one quantity over many steps, kept on the device until the end.

``compare_stacked(m, r, rtol, atol)`` takes the manual and reference values of one
(layer, time, quantity) stacked over T steps, shape (T, ...), and returns host
arrays of length T: one row of the report per step. There is no per-step
``.item()``: the only device-to-host transfer is one ``.cpu()`` per column.
"""
import numpy as np
import torch


def compare_stacked(m, r, rtol, atol):
    T = m.shape[0]
    shape = tuple(m.shape[1:])
    m2, r2 = m.reshape(T, -1), r.reshape(T, -1)
    m_ok, r_ok = torch.isfinite(m2).all(1), torch.isfinite(r2).all(1)
    d = torch.nan_to_num((m2 - r2).abs(), nan=float("inf"))
    ar = r2.abs()
    if m2.shape[1] == 0:
        zero = torch.zeros(T, dtype=m.dtype, device=m.device)
        max_abs, idx, max_rel, ok = zero, torch.zeros(T, dtype=torch.long), zero, m_ok
    else:
        max_abs, idx = d.max(1)
        max_rel = torch.where(ar > 0, d / ar, torch.zeros((), dtype=d.dtype, device=d.device)).max(1).values
        ok = (d <= atol + rtol * ar).all(1) & m_ok & r_ok
    cols = {
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "manual_norm": torch.linalg.vector_norm(m2, dim=1),
        "reference_norm": torch.linalg.vector_norm(r2, dim=1),
    }
    out = {k: v.double().cpu().numpy() for k, v in cols.items()}
    out["passed"] = ok.cpu().numpy()
    out["index"] = format_index(idx.cpu().numpy(), shape)
    m_ok, r_ok = m_ok.cpu().numpy(), r_ok.cpu().numpy()
    note = np.full(T, "", dtype=object)
    note[~m_ok] = "nonfinite:manual"
    note[~r_ok] = "nonfinite:reference"
    note[~m_ok & ~r_ok] = "nonfinite:both"
    out["note"] = note
    return out


def format_index(flat, shape):
    """Flat indices -> "i,j" strings in ``shape`` ("" for a scalar)."""
    if not shape:
        return np.full(len(flat), "", dtype=object)
    parts = np.unravel_index(flat, shape)
    s = parts[0].astype(str).astype(object)
    for p in parts[1:]:
        s = s + "," + p.astype(str).astype(object)
    return s


def compare_one(m, r, rtol, atol):
    """One tensor pair in full, for a failure message (bpcheck.testing): the same
    element test as ``compare_stacked`` (``|m - r| <= atol + rtol |r|``, both finite),
    plus what a report row leaves out: how many elements fail, and where the largest
    relative difference is. Indices are tuples in ``m``'s shape (() for a scalar)."""
    shape = tuple(m.shape)
    m1, r1 = m.reshape(-1), r.to(m.dtype).reshape(-1)
    d = torch.nan_to_num((m1 - r1).abs(), nan=float("inf"))
    ar = r1.abs()
    bad = ~(d <= atol + rtol * ar) | ~torch.isfinite(m1) | ~torch.isfinite(r1)
    rel = torch.where(ar > 0, d / ar, torch.zeros((), dtype=d.dtype, device=d.device))
    out = {"mismatched": int(bad.sum()), "total": m1.numel(),
           "max_abs_diff": 0.0, "abs_index": (), "max_rel_diff": 0.0, "rel_index": ()}
    if m1.numel():
        ia, ir = int(d.argmax()), int(rel.argmax())
        out.update(max_abs_diff=float(d[ia]), max_rel_diff=float(rel[ir]),
                   abs_index=tuple(int(i) for i in np.unravel_index(ia, shape)) if shape else (),
                   rel_index=tuple(int(i) for i in np.unravel_index(ir, shape)) if shape else ())
    return out
