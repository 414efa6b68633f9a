"""Batched comparison of one quantity over many steps, kept on the device until the end.

``compare_stacked(m, r, rtol, atol)`` takes the manual and reference values of one
(layer, time, quantity) stacked over T steps, shape (T, ...), and returns host
arrays of length T: one row of the report per step. There is no per-step
``.item()``: the only device-to-host transfer is one ``.cpu()`` per column.
"""
import numpy as np
import torch


def compare_raw(m, r, rtol, atol):
    """The element test, per step, left on the device: m, r of shape (T, ...) ->
    tensors of length T: ``max_abs``, ``max_rel``, ``index`` (flat position of the
    largest |m - r|), ``manual_norm``, ``reference_norm``, ``passed``, and
    ``m_finite`` / ``r_finite`` (each side all finite)."""
    T = m.shape[0]
    m2, r2 = m.reshape(T, -1), r.reshape(T, -1)
    m_ok, r_ok = torch.isfinite(m2).all(1), torch.isfinite(r2).all(1)
    d = torch.nan_to_num((m2 - r2).abs(), nan=float("inf"))
    ar = r2.abs()
    if m2.shape[1] == 0:
        zero = torch.zeros(T, dtype=m.dtype, device=m.device)
        max_abs, idx, max_rel, ok = zero, torch.zeros(T, dtype=torch.long, device=m.device), zero, m_ok
    else:
        max_abs, idx = d.max(1)
        max_rel = torch.where(ar > 0, d / ar, torch.zeros((), dtype=d.dtype, device=d.device)).max(1).values
        ok = (d <= atol + rtol * ar).all(1) & m_ok & r_ok
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "index": idx,
            "manual_norm": torch.linalg.vector_norm(m2, dim=1), "reference_norm": torch.linalg.vector_norm(r2, dim=1),
            "passed": ok, "m_finite": m_ok, "r_finite": r_ok}


NOTES = np.array(["", "nonfinite:manual", "nonfinite:reference", "nonfinite:both"], dtype=object)


def note_codes(m_ok, r_ok):
    """Host bool arrays -> codes into NOTES (0: both finite)."""
    return (~m_ok).astype(np.int8) + 2 * (~r_ok).astype(np.int8)


def compare_stacked(m, r, rtol, atol):
    shape = tuple(m.shape[1:])
    raw = compare_raw(m, r, rtol, atol)
    out = {k: raw[k].double().cpu().numpy() for k in ("max_abs_diff", "max_rel_diff", "manual_norm", "reference_norm")}
    out["passed"] = raw["passed"].cpu().numpy()
    out["index"] = format_index(raw["index"].cpu().numpy(), shape)
    out["note"] = NOTES[note_codes(raw["m_finite"].cpu().numpy(), raw["r_finite"].cpu().numpy())]
    return out


def format_index(flat, shape):
    """Flat indices -> "i,j" strings in ``shape`` ("" for a scalar)."""
    labels, codes = index_labels(flat, shape)
    return labels[codes]


def index_labels(flat, shape):
    """(labels, codes) with ``labels[codes]`` the "i,j" strings of the flat indices:
    each distinct position is formatted once."""
    if not shape:
        return np.array([""], dtype=object), np.zeros(len(flat), dtype=np.intp)
    uniq, codes = np.unique(flat, return_inverse=True)
    parts = np.unravel_index(uniq, shape)
    s = parts[0].astype(str).astype(object)
    for p in parts[1:]:
        s = s + "," + p.astype(str).astype(object)
    return s, codes.reshape(-1)
