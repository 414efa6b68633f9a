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

from .diff import NOTES, compare_many, compare_raw, index_labels, note_codes
from .errors import UsageError
from .schema import COLUMNS

FLOATS = ("max_abs_diff", "max_rel_diff", "manual_norm", "reference_norm")


def stacked(values):
    return values if isinstance(values, torch.Tensor) else torch.stack(values)


def build_frame(block, meta, rtol, atol):
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
    steps = np.asarray(block["step"])
    if seeds is not None:
        steps = np.repeat(steps, len(seeds))
    lengths = [m.shape[0] for m in ms]
    if len(set(lengths)) == 1:  # every key at every step: (T, K) columns, rows laid out in causal order
        host = {k: v.double().cpu().numpy() if k in FLOATS else v.cpu().numpy()
                for k, v in compare_many(ms, rs, rtol, atol).items()}
        order = key_order(keys)
        rows, which = np.repeat(np.arange(lengths[0]), len(keys)), np.tile(order, lengths[0])
        per_key = [{k: v[:, i] for k, v in host.items()} for i in range(len(keys))]
        pick = lambda arrays: np.stack([arrays[k] for k in order], axis=1).reshape(-1)  # noqa: E731
        ragged = False
    else:  # ragged (a key missing at some steps): per key, concatenated, then sorted
        per_key = [{k: v.double().cpu().numpy() if k in FLOATS else v.cpu().numpy()
                    for k, v in compare_raw(m, r.to(m.dtype), rtol, atol).items()} for m, r in zip(ms, rs)]
        rows = np.concatenate([np.arange(n) for n in lengths])
        which = np.repeat(np.arange(len(keys)), lengths)
        pick = np.concatenate
        ragged = True
    labels, codes, offset = [], [], 0
    for m, h in zip(ms, per_key):
        lab, cod = index_labels(h["index"], tuple(m.shape[1:]))
        if len(lab) > len(cod):  # fewer rows than positions: keep only the labels used
            lab, cod = lab[cod], np.arange(len(cod))
        labels.append(lab)
        codes.append(cod + offset)
        offset += len(lab)
    n = len(rows)
    cols = {"step": steps[rows], "layer": np.array([k[0] for k in keys], dtype=np.int64)[which],
            "time": pd.array([k[1] for k in keys], dtype="Int64").take(which),
            "quantity": strings(tuple(k[2] for k in keys)).take(which),
            "index": pd.array(np.concatenate(labels), dtype="str").take(pick(codes)),
            "passed": pick([h["passed"] for h in per_key]),
            "note": strings(tuple(NOTES)).take(pick([note_codes(h["m_finite"], h["r_finite"]) for h in per_key]))}
    cols.update({c: pick([h[c] for h in per_key]) for c in FLOATS})
    if seeds is not None:
        cols["seed"] = np.tile(np.asarray(seeds), len(block["step"]))[rows]
    for k, v in meta.items():
        if k not in cols:
            cols[k] = constant(v, n)
    df = pd.DataFrame({c: cols[c] for c in COLUMNS})
    if ragged:
        df = df.iloc[np.lexsort(causal_key(df))].reset_index(drop=True)
    return df


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
