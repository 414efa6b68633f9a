"""Batched comparison of one quantity over many steps, kept on the device until the end.

``compare_stacked(m, r, rtol, atol)`` takes the manual and reference values of one
(layer, time, quantity) stacked over T steps, shape (T, ...), and returns host
arrays of length T: one row of the report per step. There is no per-step
``.item()``: the only device-to-host transfer is one ``.cpu()`` per column.
"""
import functools

import numpy as np
import torch


def element_test(m, r, rtol, atol):
    """The element test, reduced over the last axis and left on the device: ``max_abs_diff``,
    ``max_rel_diff``, ``index`` (position of the largest |m - r| along the axis),
    ``manual_norm``, ``reference_norm``, ``passed`` (every element has
    |m - r| <= atol + rtol |r| and both sides are finite), ``m_finite``, ``r_finite``.

    Written with the reductions torch does fast over a short last axis (sum, amax,
    vector_norm; isfinite().all() and max() are several times slower there):
    a side is finite when ``sum(x * 0) == 0`` (x * 0 is NaN exactly where x is not
    finite), and every element passes when ``max(|m - r| - tol) <= 0``
    (for floats, a <= b exactly when a - b <= 0)."""
    m_ok, r_ok = (m * 0).sum(-1) == 0, (r * 0).sum(-1) == 0
    d = torch.nan_to_num((m - r).abs(), nan=float("inf"))
    ar = r.abs()
    if m.shape[-1] == 0:
        zero = torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)
        max_abs, idx, max_rel, ok = zero, torch.zeros(m.shape[:-1], dtype=torch.long, device=m.device), zero, m_ok
    else:
        max_abs, idx = d.max(-1)
        max_rel = torch.where(ar > 0, d / ar, torch.zeros((), dtype=d.dtype, device=d.device)).amax(-1)
        ok = ((d - (atol + rtol * ar)).amax(-1) <= 0) & m_ok & r_ok
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "index": idx,
            "manual_norm": torch.linalg.vector_norm(m, dim=-1), "reference_norm": torch.linalg.vector_norm(r, dim=-1),
            "passed": ok, "m_finite": m_ok, "r_finite": r_ok}


def compare_raw(m, r, rtol, atol):
    """``element_test`` per step: m, r of shape (T, ...) -> tensors of length T."""
    T = m.shape[0]
    return element_test(m.reshape(T, -1), r.reshape(T, -1), rtol, atol)


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
    """(labels, codes) with ``labels[codes]`` the "i,j" strings of the flat indices.
    Small shapes format every position once (cached); large ones only those present."""
    if not shape:
        return np.array([""], dtype=object), np.zeros(len(flat), dtype=np.intp)
    size = int(np.prod(shape))
    if size <= 1 << 16:
        return all_labels(shape), np.asarray(flat, dtype=np.intp)
    uniq, codes = np.unique(flat, return_inverse=True)
    return _format(uniq, shape), codes.reshape(-1)


@functools.lru_cache(maxsize=256)
def all_labels(shape):
    return _format(np.arange(int(np.prod(shape))), shape)


def _format(flat, shape):
    parts = np.unravel_index(flat, shape)
    s = parts[0].astype(str).astype(object)
    for p in parts[1:]:
        s = s + "," + p.astype(str).astype(object)
    return s
