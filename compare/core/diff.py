"""Batched comparison of one quantity over many steps, kept on the device until the end.

``compare_stacked(m, r, rtol, atol)`` takes the manual and reference values of one
(layer, time, quantity) stacked over T steps, shape (T, ...), and returns host
arrays of length T: one row of the report per step. There is no per-step
``.item()``: the only device-to-host transfer is one ``.cpu()`` per column.
"""
import functools

import numpy as np
import torch


def element_test(m, r, rtol, atol, lengths=None):
    """The element test, reduced over the last axis (or over consecutive segments of it,
    one per quantity, of the given ``lengths``) and left on the device:
    ``max_abs_diff``, ``max_rel_diff``, ``index`` (position of the largest |m - r|
    within the axis or segment, the first one on a tie), ``margin`` (max |m - r| /
    (atol + rtol |r|): the worst element in units of its allowance, 0 where m == r,
    inf where the allowance is 0 and they differ), ``manual_norm``,
    ``reference_norm``, ``passed`` (every element has |m - r| <= atol + rtol |r| and
    both sides are finite), ``m_finite``, ``r_finite``.

    ``atol`` is a number, or one per row (shape ``m.shape[:-1]``; with ``lengths``,
    ``m.shape[:-1] + (len(lengths),)``: one per row and segment), as the yardstick
    gives (compare.core.tolerances).

    Written with the reductions torch does fast over a short axis (sum, amax;
    isfinite().all() and max() are several times slower there): a side is finite
    when ``sum(x * 0) == 0`` (x * 0 is NaN exactly where x is not finite), and every
    element passes when ``max(|m - r| - tol) <= 0`` (for floats, a <= b exactly
    when a - b <= 0). The same lines run on numpy arrays (``compare_many`` gives it
    a short block on the CPU so: numpy's calls cost a tenth of torch's there)."""
    if lengths is None and isinstance(m, torch.Tensor) and m.shape[-1] > 0:
        return whole_rows(m, r, rtol, atol)
    xp = np if isinstance(m, np.ndarray) else torch
    red = Reduce(lengths, m)
    m_ok, r_ok = red.sum(m * 0) == 0, red.sum(r * 0) == 0
    if red.empty:
        zero = torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)
        max_abs, idx, max_rel, margin, ok = zero, torch.zeros(m.shape[:-1], dtype=torch.long, device=m.device), zero, zero, m_ok
    else:
        a = atol if isinstance(atol, (int, float)) else red.spread(atol.astype(m.dtype) if xp is np else atol.to(m.dtype))
        if xp is torch:  # in place: three full-size buffers and a mask, whatever the rule
            d = (m - r).abs_().nan_to_num_(nan=float("inf"))
            ar = r.abs()
            max_abs = red.max(d)
            idx = red.first(d == red.spread(max_abs))
            q = torch.div(d, ar).masked_fill_(~(ar > 0), 0.0)  # as where(ar > 0, ...): NaN r too
            max_rel = red.max(q)
            allowed = ar.mul_(rtol).add_(a)
            margin = red.max(torch.div(d, allowed, out=q).masked_fill_(d == 0, 0.0))
            ok = (red.max(d.sub_(allowed)) <= 0) & m_ok & r_ok
        else:
            d = xp.nan_to_num(xp.abs(m - r), nan=float("inf"))
            ar = xp.abs(r)
            max_abs = red.max(d)
            idx = red.first(d == red.spread(max_abs))
            max_rel = red.max(xp.where(ar > 0, d / ar, 0.0))
            allowed = ar * rtol + a
            margin = red.max(xp.where(d > 0, d / allowed, 0.0))
            ok = (red.max(d - allowed) <= 0) & m_ok & r_ok
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "index": idx, "margin": margin,
            "manual_norm": xp.sqrt(red.sum(m * m)), "reference_norm": xp.sqrt(red.sum(r * r)),
            "passed": ok, "m_finite": m_ok, "r_finite": r_ok}


def whole_rows(m, r, rtol, atol):
    """``element_test`` over whole rows of torch tensors, in fewer passes over the
    elements (a wide layer's rows are the check's main cost), with the same results:

    - ``max`` gives the largest |m - r| and its first index in one pass;
    - both sides are finite wherever the row's largest |m - r| is below the largest float
      (``nan_to_num_`` makes NaN inf and inf that float), so ``sum(x * 0)`` runs only on
      the rows where it is not;
    - ``passed`` follows from the margin: for a > 0, fl(d / a) <= 1 exactly when d <= a
      (division rounds monotonically), so a margin below 1 passes and one above fails;
      rows at exactly 1 or NaN (inf / inf) take the subtraction ``max(d - a) <= 0``."""
    a = atol if isinstance(atol, (int, float)) else atol.to(m.dtype)[..., None]
    d = torch.sub(m, r).abs_().nan_to_num_(nan=float("inf"))
    ar = r.abs()
    max_abs, idx = d.max(-1)  # the first of equal maxima
    q = torch.div(d, ar).masked_fill_(~(ar > 0), 0.0)  # as where(ar > 0, ...): NaN r too
    max_rel = q.amax(-1)
    allowed = ar.mul_(rtol).add_(a)
    margin = torch.div(d, allowed, out=q).masked_fill_(d == 0, 0.0).amax(-1)
    m_ok = torch.ones_like(max_abs, dtype=torch.bool)
    r_ok = m_ok.clone()
    ok = margin < 1
    odd = ~(max_abs < torch.finfo(d.dtype).max)  # nan_to_num_ made NaN inf and inf the largest float
    if odd.any():  # a non-finite side, or a difference that overflowed: test those rows
        m_ok[odd], r_ok[odd] = (m[odd] * 0).sum(-1) == 0, (r[odd] * 0).sum(-1) == 0
    edge = (margin == 1) | torch.isnan(margin)
    if not isinstance(atol, (int, float)):
        edge |= torch.isnan(atol)
    if edge.any():
        ok[edge] = d[edge].sub_(allowed[edge]).amax(-1) <= 0
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "index": idx, "margin": margin,
            "manual_norm": torch.sqrt((m * m).sum(-1)), "reference_norm": torch.sqrt((r * r).sum(-1)),
            "passed": ok & m_ok & r_ok, "m_finite": m_ok, "r_finite": r_ok}


class Reduce:
    """Reductions over the last axis, whole or in segments (torch.segment_reduce; on
    numpy arrays, ``reduceat``: segments only)."""

    def __init__(self, lengths, like):
        self.lengths = lengths
        self.empty = like.shape[-1] == 0
        if isinstance(like, np.ndarray):
            self.starts = np.cumsum(lengths) - lengths
            self.pos = np.arange(like.shape[-1]) - np.repeat(self.starts, lengths)
        elif lengths is not None:
            rows = like.shape[:-1].numel()
            self.seg = lengths.to(like.device).expand(rows, -1).reshape(*like.shape[:-1], -1)
            starts = torch.cumsum(lengths, 0) - lengths
            self.pos = (torch.arange(like.shape[-1]) - starts.repeat_interleave(lengths)).to(like.device, like.dtype)

    def sum(self, x):
        if isinstance(x, np.ndarray):
            return np.add.reduceat(x, self.starts, axis=-1)
        return x.sum(-1) if self.lengths is None else torch.segment_reduce(x, "sum", lengths=self.seg, axis=-1)

    def max(self, x):
        if isinstance(x, np.ndarray):
            return np.maximum.reduceat(x, self.starts, axis=-1)
        return x.amax(-1) if self.lengths is None else torch.segment_reduce(x, "max", lengths=self.seg, axis=-1)

    def spread(self, v):
        """A per-segment value back on every element of its segment."""
        if isinstance(v, np.ndarray):
            return np.repeat(v, self.lengths, axis=-1)
        return v[..., None] if self.lengths is None else v.repeat_interleave(self.lengths.to(v.device), dim=-1)

    def first(self, hit):
        """The position of the first True, within the axis or segment."""
        if isinstance(hit, np.ndarray):
            return np.minimum.reduceat(np.where(hit, self.pos, len(self.pos)), self.starts, axis=-1)
        if self.lengths is None:
            return hit.to(torch.uint8).argmax(-1)  # argmax returns the first of equal maxima
        far = torch.full((), float("inf"), dtype=self.pos.dtype, device=hit.device)
        return torch.segment_reduce(torch.where(hit, self.pos, far), "min", lengths=self.seg, axis=-1).long()


ROW_BUDGET = 1 << 20  # elements per pass of the element test: its temporaries stay bounded


def compare_raw(m, r, rtol, atol):
    """``element_test`` per step: m, r stacked over T steps, (T, ...), or listed per step
    (T tensors, as runner._steps collects them) -> tensors of length T; ``atol`` a number
    or a (T,) tensor; r is compared in m's dtype. Steps go through in passes of at most
    ROW_BUDGET elements (at least one step), so the test's few temporaries never hold a
    whole stack, and listed steps are stacked a pass at a time (a wide layer's pass is
    one step: its tensor is read where it lies, never copied into a stack)."""
    T = len(m)
    size = m[0].numel() if T else 0
    per = max(1, ROW_BUDGET // max(1, size))
    dtype = _wide(m[0] if T else m).dtype
    if T <= per:
        return element_test(rows(m, 0, T, dtype), rows(r, 0, T, dtype), rtol, atol)
    parts = [element_test(rows(m, s, s + per, dtype), rows(r, s, s + per, dtype), rtol,
                          atol if isinstance(atol, (int, float)) else atol[s:s + per]) for s in range(0, T, per)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def rows(values, s, e, dtype):
    """Steps s..e of ``values`` (a tensor stacked over the steps, or a list of per-step
    tensors) as one (e - s, n) tensor in ``dtype``: a view where it can be one."""
    e = min(e, len(values))
    if torch.is_tensor(values):
        part = values[s:e]
    elif e - s == 1:
        part = values[s][None]
    else:
        part = torch.stack(values[s:e])
    return part.reshape(e - s, -1).to(dtype)


SEGMENT_LIMIT = 1 << 16  # side by side while a block holds at most this many elements


def compare_many(ms, rs, rtol, atol):
    """``compare_raw`` for K quantities over the same T steps: a dict of (T, K) tensors.
    ``atol``: a number, or one (T,) tensor per quantity. A small block (a few steps: a
    one-step check) is tested in one pass, the quantities side by side as segments of
    one axis; otherwise one quantity at a time, which is faster for many steps
    (torch.segment_reduce does not vectorise across rows). Float16 and bfloat16 values
    are compared in float32 (exactly: their differences are float32 numbers), so that
    a margin of 1e6 is not an overflow."""
    T = len(ms[0])
    per_key = not isinstance(atol, (int, float))
    sizes = [m[0].numel() if T else 0 for m in ms]
    same = len({(_wide(m[0]).dtype, m[0].device) if T else None for m in ms}) == 1
    if len(ms) > 1 and same and 0 not in sizes and T <= 8 and T * sum(sizes) <= SEGMENT_LIMIT:
        dt = _wide(ms[0][0]).dtype
        ms, rs = [rows(m, 0, T, dt) for m in ms], [rows(r, 0, T, dt) for r in rs]
        m, r = torch.cat(ms, 1), torch.cat(rs, 1)
        a = torch.stack([torch.as_tensor(x, dtype=torch.float64).expand(T).cpu() for x in atol], 1) if per_key else atol
        if m.device.type == "cpu" and m.dtype in (torch.float64, torch.float32):  # numpy: a few us a call
            with np.errstate(all="ignore"):  # inf - inf, x / 0: as torch, silently (masked or flagged)
                out = element_test(m.detach().numpy(), r.detach().numpy(), rtol, a.numpy() if per_key else a,
                                   lengths=np.array(sizes))
            out = {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}
            out.update(norms(ms, rs))  # summed as the per-quantity path sums them: results independent of T
            return out
        return element_test(m, r, rtol, a.to(m.device) if per_key else a, lengths=torch.tensor(sizes))
    each = [compare_raw(m, r, rtol, atol[j] if per_key else atol) for j, (m, r) in enumerate(zip(ms, rs))]
    return {k: torch.stack([e[k].to(each[0][k].dtype) if k in ("passed", "m_finite", "r_finite", "index")
                            else e[k].double() for e in each], 1) for k in each[0]}


def norms(ms, rs):
    """manual_norm and reference_norm, (T, K), summed by torch row by row exactly as
    ``compare_raw`` sums them: a sum's rounding depends on its order, and numpy's
    segmented sum orders differently, so a chunk of few steps would give norms an ulp
    off those of a long chunk (torch's per-row sum does not depend on the number of rows)."""
    T = ms[0].shape[0]
    mm = [m.reshape(T, -1) for m in ms]
    rr = [r.to(m.dtype).reshape(T, -1) for m, r in zip(ms, rs)]
    return {"manual_norm": torch.stack([torch.sqrt((m * m).sum(-1)) for m in mm], 1),
            "reference_norm": torch.stack([torch.sqrt((r * r).sum(-1)) for r in rr], 1)}


def _wide(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


NOTES = np.array(["", "nonfinite:manual", "nonfinite:reference", "nonfinite:both"], dtype=object)


def note_codes(m_ok, r_ok):
    """Host bool arrays -> codes into NOTES (0: both finite)."""
    return (~m_ok).astype(np.int8) + 2 * (~r_ok).astype(np.int8)


def compare_stacked(m, r, rtol, atol):
    shape = tuple(m.shape[1:])
    raw = compare_raw(_wide(m), _wide(r), rtol, atol)
    out = {k: raw[k].double().cpu().numpy() for k in ("max_abs_diff", "max_rel_diff", "margin", "manual_norm",
                                                      "reference_norm")}
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
