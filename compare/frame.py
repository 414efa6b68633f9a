"""Report rows from a block of steps: the one place rows are built.

A block is ``{"step": steps, "manual": {key: values}, "reference": {key: values}}``
with key ``(layer, time, quantity)`` and values either a list of per-step tensors
or one tensor stacked over the steps, shape (T, ...). With ``"seeds"`` (an array of
N seeds) each value has shape (T, N, ...) and every (step, seed) gets its rows.

Every key is compared with ``compare.diff.compare_raw`` (the one element test),
the results are moved to the host in bulk, and the rows are laid out directly in
causal order (``causal_key``), without a per-row Python loop or a sort.
"""
import numpy as np
import pandas as pd
import torch

from .diff import NOTES, compare_raw, index_labels, note_codes
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
    host = to_host([compare_raw(m, r.to(m.dtype), rtol, atol) for m, r in zip(ms, rs)])
    steps = np.asarray(block["step"])
    if seeds is not None:
        steps = np.repeat(steps, len(seeds))
    lengths = [len(h["passed"]) for h in host]
    kf = key_frame(keys)
    ragged = len(set(lengths)) != 1
    if not ragged:  # every key at every step: lay out (step, key) directly, in causal order
        order = np.lexsort(causal_key(kf))
        rows, which = np.repeat(np.arange(lengths[0]), len(keys)), np.tile(order, lengths[0])
        pick = lambda arrays: np.stack([arrays[k] for k in order], axis=1).reshape(-1)  # noqa: E731
    else:  # ragged: concatenate per key, then sort
        rows = np.concatenate([np.arange(n) for n in lengths])
        which = np.repeat(np.arange(len(keys)), lengths)
        pick = np.concatenate
    n = len(rows)
    labels, codes, offset = [], [], 0
    for m, h in zip(ms, host):
        lab, cod = index_labels(h["index"], tuple(m.shape[1:]))
        labels.append(lab)
        codes.append(cod + offset)
        offset += len(lab)
    cols = {"step": steps[rows], "layer": kf["layer"].to_numpy()[which],
            "time": kf["time"].array.take(which),
            "quantity": pd.array(kf["quantity"].to_numpy(), dtype="str").take(which),
            "index": pd.array(np.concatenate(labels), dtype="str").take(pick(codes)),
            "passed": pick([h["passed"] for h in host]),
            "note": pd.array(NOTES, dtype="str").take(pick([note_codes(h["m_finite"], h["r_finite"]) for h in host]))}
    cols.update({c: pick([h[c] for h in host]) for c in FLOATS})
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
        return pd.array([v], dtype="str").take(np.zeros(n, dtype=np.intp))
    return np.full(n, v)


def to_host(cols):
    """compare_raw's tensors -> numpy, one transfer per column for all keys together."""
    out = [{} for _ in cols]
    for name in cols[0] if cols else ():
        parts = [c[name] for c in cols]
        flat = torch.cat([p.double() if name in FLOATS else p for p in parts]).cpu().numpy()
        for o, piece in zip(out, np.split(flat, np.cumsum([len(p) for p in parts])[:-1])):
            o[name] = piece
    return out


def key_frame(keys):
    """One row per (layer, time, quantity) key, step 0: the input of ``causal_key``."""
    return pd.DataFrame({"layer": np.array([k[0] for k in keys], dtype=np.int64),
                         "time": pd.array([k[1] for k in keys], dtype="Int64"),
                         "quantity": pd.array([k[2] for k in keys], dtype="str"),
                         "step": np.zeros(len(keys), dtype=np.int64)})


BACKWARD = {"delta": 0, "error_prev": 2}  # grad_<param> rank 1, between them


def causal_key(df):
    """Sort keys (last is primary) that put each step's rows in the order the values
    are computed: forward (loss, output); backward from the last layer down and from
    the last time step back, delta then grad_* then error_prev; then the update.
    The first failing row is then where a divergence starts."""
    q = df["quantity"]
    phase = np.where(df["layer"].to_numpy() == 0, 0, np.where(q.isin(list(BACKWARD)) | q.str.startswith("grad_"), 1, 2))
    rank = q.map(BACKWARD).fillna(1).to_numpy()
    rank = np.where(phase == 1, rank, 0)
    time = df["time"].fillna(-1).to_numpy(dtype=np.int64)
    layer = df["layer"].to_numpy()
    back = phase == 1
    return (rank, np.where(back, -time, time), np.where(back, -layer, layer), phase, df["step"].to_numpy())
