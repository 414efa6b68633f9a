"""Report rows from a block of steps: the one place rows are built.

A block is ``{"step": steps, "manual": {key: values}, "reference": {key: values}}``
with key ``(layer, time, quantity)`` and values either a list of per-step tensors
or one tensor stacked over the steps, shape (T, ...). With ``"seeds"`` (an array of
N seeds) each value has shape (T, N, ...) and every (step, seed) gets its rows.

Every key is compared by ``compare.diff`` (the one element test), the results come
to the host in bulk (one transfer per column for all keys), and the rows are laid
out directly in causal order (``causal_key``), without a per-row loop or a sort.
"""
import functools

import numpy as np
import pandas as pd
import torch

from .diff import NOTES, compare_many, compare_raw, format_index, index_labels, note_codes
from .errors import UsageError
from .schema import COLUMNS

FLOATS = ("max_abs_diff", "max_rel_diff", "manual_norm", "reference_norm")


def stacked(values):
    return values if isinstance(values, torch.Tensor) else torch.stack(values)


def pairs(block):
    """The keys both sides report, and their (manual, reference) values stacked: (T[*N], ...)."""
    seeds = block.get("seeds")
    keys, ms, rs = [], [], []
    for key, mvals in block["manual"].items():
        rvals = block["reference"].get(key)
        if rvals is None:
            continue
        layer, time, quantity = key
        m, r = stacked(mvals), stacked(rvals)
        if m.shape != r.shape:
            lead = 1 if seeds is None else 2
            raise UsageError(f"layer {layer} {quantity}: manual shape {tuple(m.shape[lead:])} "
                             f"!= reference shape {tuple(r.shape[lead:])}")
        if seeds is not None:
            m, r = m.flatten(0, 1), r.flatten(0, 1)
        keys.append(key)
        ms.append(m)
        rs.append(r)
    return keys, ms, rs


def host_columns(cols):
    return {k: v.double().cpu().numpy() if k in FLOATS else v.cpu().numpy() for k, v in cols.items()}


def compared(block, rtol, atol):
    """The block compared, still one row per (step[, seed]) and one column per key:
    ``{"keys", "shapes", "cols": {name: (R, K)}, "step": (R, K), "seed": (R,) or None}``,
    or None when keys have different numbers of steps (ragged)."""
    keys, ms, rs = pairs(block)
    if len({m.shape[0] for m in ms}) != 1:
        return None
    seeds = block.get("seeds")
    steps = np.asarray(block["step"])
    seed = None
    if seeds is not None:
        steps, seed = np.repeat(steps, len(seeds)), np.tile(np.asarray(seeds), len(steps))
    return {"keys": keys, "shapes": [tuple(m.shape[1:]) for m in ms],
            "cols": host_columns(compare_many(ms, rs, rtol, atol)),
            "step": np.repeat(steps[:, None], len(keys), 1), "seed": seed}


def worst_per_seed(c, carry=None, copies=None):
    """Per seed and key, the row of its largest |m - r| over the steps so far (its step,
    index and norms), with the largest relative difference, ``passed`` only if every
    step passed, and the non-finite flags of any step: R = T*N rows -> N rows."""
    cols, step = c["cols"], c["step"]
    R, K = step.shape
    T = R // copies
    cols = {k: v.reshape(T, copies, K) for k, v in cols.items()}
    step = step.reshape(T, copies, K)
    if carry is not None:  # the worst so far is one more "step"
        cols = {k: np.concatenate([carry["cols"][k][None], v]) for k, v in cols.items()}
        step = np.concatenate([carry["step"][None], step])
    at = cols["max_abs_diff"].argmax(0)[None]  # first step of the largest difference
    out = {k: np.take_along_axis(v, at, 0)[0] for k, v in cols.items()}
    out["max_rel_diff"] = cols["max_rel_diff"].max(0)
    for k in ("passed", "m_finite", "r_finite"):
        out[k] = cols[k].all(0)
    return {"keys": c["keys"], "shapes": c["shapes"], "cols": out,
            "step": np.take_along_axis(step, at, 0)[0], "seed": c["seed"][:copies]}


def build_frame(block, meta, rtol, atol):
    c = compared(block, rtol, atol)
    if c is None:
        return ragged_frame(block, meta, rtol, atol)
    return layout(c, meta)


def layout(c, meta):
    """Rows (one per row of ``c`` and key) laid out in causal order: steps, then keys."""
    keys, cols = c["keys"], c["cols"]
    R = c["step"].shape[0]
    order = key_order(keys)
    pick = lambda a: a[:, order].reshape(-1)  # noqa: E731
    which = np.tile(order, R)
    labels, codes, offset = [], [], 0
    for i, shape in enumerate(c["shapes"]):
        lab, cod = index_labels(cols["index"][:, i], shape)
        if len(lab) > len(cod):  # fewer rows than positions: keep only the labels used
            lab, cod = lab[cod], np.arange(len(cod))
        labels.append(lab)
        codes.append(cod + offset)
        offset += len(lab)
    out = {"step": pick(c["step"]), "layer": np.array([k[0] for k in keys], dtype=np.int64)[which],
           "time": pd.array([k[1] for k in keys], dtype="Int64").take(which),
           "quantity": strings(tuple(k[2] for k in keys)).take(which),
           "index": pd.array(np.concatenate(labels), dtype="str").take(pick(np.stack(codes, 1))),
           "passed": pick(cols["passed"]),
           "note": strings(tuple(NOTES)).take(pick(note_codes(cols["m_finite"], cols["r_finite"])))}
    out.update({k: pick(cols[k]) for k in FLOATS})
    if c["seed"] is not None:
        out["seed"] = np.repeat(c["seed"], len(keys))
    return _frame(out, meta)


def _frame(out, meta):
    n = len(out["step"])
    for k, v in meta.items():
        if k not in out:
            out[k] = constant(v, n)
    return pd.DataFrame({k: out[k] for k in COLUMNS})


def ragged_frame(block, meta, rtol, atol):
    """Keys with different numbers of steps: each compared alone, rows then sorted."""
    keys, ms, rs = pairs(block)
    steps = np.asarray(block["step"])
    per_key = [host_columns(compare_raw(m, r.to(m.dtype), rtol, atol)) for m, r in zip(ms, rs)]
    lengths = [m.shape[0] for m in ms]
    rows = np.concatenate([np.arange(n) for n in lengths])
    which = np.repeat(np.arange(len(keys)), lengths)
    labels = np.concatenate([format_index(h["index"], tuple(m.shape[1:])) for m, h in zip(ms, per_key)])
    out = {"step": steps[rows], "layer": np.array([k[0] for k in keys], dtype=np.int64)[which],
           "time": pd.array([k[1] for k in keys], dtype="Int64").take(which),
           "quantity": strings(tuple(k[2] for k in keys)).take(which),
           "index": pd.array(labels, dtype="str"),
           "passed": np.concatenate([h["passed"] for h in per_key]),
           "note": strings(tuple(NOTES)).take(
               np.concatenate([note_codes(h["m_finite"], h["r_finite"]) for h in per_key]))}
    out.update({k: np.concatenate([h[k] for h in per_key]) for k in FLOATS})
    df = _frame(out, meta)
    return df.iloc[np.lexsort(causal_key(df))].reset_index(drop=True)


def constant(v, n):
    """A column holding ``v`` n times, typed as ``df[k] = v`` would type it."""
    if isinstance(v, str):
        return strings((v,)).take(np.zeros(n, dtype=np.intp))
    return np.full(n, v)


@functools.lru_cache(maxsize=512)
def strings(values):
    """A pandas string array of ``values`` (a tuple), made once: making one costs more
    than taking from it."""
    return pd.array(list(values), dtype="str")


BACKWARD = {"delta": 0, "error_prev": 2}  # grad_<param> rank 1, between them


def causal_key(df):
    """Sort keys (last is primary) that put each step's rows in the order the values
    are computed: forward (loss, output); backward from the last layer down and from
    the last time step back, delta then grad_* then error_prev; then the update.
    The first failing row is then where a divergence starts."""
    return causal_arrays(df["layer"].to_numpy(), df["time"].fillna(-1).to_numpy(dtype=np.int64),
                         df["quantity"].to_numpy(), df["step"].to_numpy())


def key_order(keys):
    """The causal order of a step's (layer, time, quantity) keys, as indices into ``keys``."""
    return _key_order(tuple(keys))


@functools.lru_cache(maxsize=256)
def _key_order(keys):
    layer = np.array([k[0] for k in keys], dtype=np.int64)
    time = np.array([-1 if k[1] is None else k[1] for k in keys], dtype=np.int64)
    quantity = np.array([k[2] for k in keys], dtype=object)
    return np.lexsort(causal_arrays(layer, time, quantity, np.zeros(len(keys), dtype=np.int64)))


def causal_arrays(layer, time, quantity, step):
    names, codes = np.unique(np.asarray(quantity, dtype=object).astype(str), return_inverse=True)
    backward = np.array([q in BACKWARD or q.startswith("grad_") for q in names], dtype=bool)[codes]
    rank = np.array([BACKWARD.get(q, 1) for q in names], dtype=np.int64)[codes]
    phase = np.where(layer == 0, 0, np.where(backward, 1, 2))
    back = phase == 1
    rank = np.where(back, rank, 0)
    return (rank, np.where(back, -time, time), np.where(back, -layer, layer), phase, step)
