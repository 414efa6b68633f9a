"""Report rows from a block of steps: the one place rows are built.

A block is ``{"step": steps, "manual": {key: values}, "reference": {key: values}}``
with key ``(layer, time, quantity)`` and values either a list of per-step tensors
or one tensor stacked over the steps, shape (T, ...). With ``"seeds"`` (an array of
N seeds) each value has shape (T, N, ...) and every (step, seed) gets its rows.

Every key is compared by ``compare.diff`` (the one element test), the results come
to the host in bulk (one transfer per column for all keys), and the rows are laid
out directly in causal order (``causal_key``), without a per-row loop or a sort.

Keys whose quantity starts with ``_`` (``_kinks``) are side information, not rows. A
key whose two sides have different shapes (a wrong formula, not bad input) gives
failed rows: differences inf, norms NaN, note ``shape:manual (..) != reference (..)``.
The meta columns (case, mode, ..., ``settings``, ``compare``, ``rule``) are the runner's.

``atol`` is a number, or (the yardstick, compare.core.tolerances) a dict
{key: (T,) tensor}, one per step and key: the ``atol`` column then varies by row.
"""
import functools

import numpy as np
import pandas as pd
import torch

from bpcheck.compare.core.diff import NOTES, compare_many, compare_raw, format_index, index_labels, note_codes
from bpcheck.compare.core.schema import COLUMNS

FLOATS = ("max_abs_diff", "max_rel_diff", "margin", "manual_norm", "reference_norm")


def stacked(values):
    return values if isinstance(values, torch.Tensor) else torch.stack(values)


def steps_of(values):
    """The values as compare.diff takes them: stacked (T, ...) or per step, a list of T
    tensors; per-step lists are left unstacked (compare.diff stacks a pass at a time, and a
    wide layer's step is compared where it lies: no copy of the block)."""
    return values if isinstance(values, torch.Tensor) else list(values)


def pairs(block):
    """The keys both sides report, and their (manual, reference) values: (T[*N], ...), or
    a list of T per-step tensors as the block holds them (``steps_of``);
    and ``mismatched``: {position in keys: note} for keys whose sides differ in shape
    (their values are then (T[*N], 0) empty stand-ins, and their rows fail)."""
    seeds = block.get("seeds")
    keys, ms, rs, mismatched = [], [], [], {}
    for key, mvals in block["manual"].items():
        rvals = block["reference"].get(key)
        if rvals is None or key[2].startswith("_"):  # side information (e.g. _kinks), not a compared value
            continue
        m_shape, r_shape = _shape(mvals), _shape(rvals)
        if m_shape != r_shape:  # a wrong formula, not bad input: failed rows
            lead = 1 if seeds is None else 2
            n = len(mvals) * (1 if seeds is None else len(seeds))
            mismatched[len(keys)] = f"shape:manual {tuple(m_shape[lead:])} != reference {tuple(r_shape[lead:])}"
            like = mvals if isinstance(mvals, torch.Tensor) else mvals[0]
            m = r = torch.zeros((n, 0), dtype=like.dtype if like.is_floating_point() else torch.float64,
                                device=like.device)
        else:
            if seeds is not None:
                m, r = stacked(mvals).flatten(0, 1), stacked(rvals).flatten(0, 1)
            else:
                m, r = steps_of(mvals), steps_of(rvals)
        keys.append(key)
        ms.append(m)
        rs.append(r)
    return keys, ms, rs, mismatched


def _shape(values):
    """The shape ``stacked(values)`` has, without stacking."""
    if isinstance(values, torch.Tensor):
        return tuple(values.shape)
    return (len(values),) + tuple(values[0].shape)


def per_key(atol, keys, seeds=None):
    """``atol`` as compare.diff takes it: a number, or one (T[*N],) tensor per key."""
    if isinstance(atol, (int, float)):
        return atol
    n = 1 if seeds is None else len(seeds)
    return [atol[k].repeat_interleave(n) if n > 1 else atol[k] for k in keys]


def mismatch_columns(cols, mismatched):
    """Host columns (R, K) with the mismatched keys' rows failed: inf, NaN norms."""
    for j in mismatched:
        cols["max_abs_diff"][:, j] = np.inf
        cols["max_rel_diff"][:, j] = np.inf
        if "margin" in cols:
            cols["margin"][:, j] = np.inf
        cols["manual_norm"][:, j] = np.nan
        cols["reference_norm"][:, j] = np.nan
        cols["passed"][:, j] = False
        cols["index"][:, j] = 0
    return cols


def note_table(codes, mismatched):
    """(labels, codes) of the note column: NOTES, and each mismatched key's shape note."""
    labels = tuple(NOTES)
    if mismatched:
        codes = codes.copy()
        extra = sorted(set(mismatched.values()))
        for j, note in mismatched.items():
            codes[:, j] = len(NOTES) + extra.index(note)
        labels += tuple(extra)
    return labels, codes


def host_columns(cols):
    return {k: v.double().cpu().numpy() if k in FLOATS else v.cpu().numpy() for k, v in cols.items()}


def compared(block, rtol, atol):
    """The block compared, still one row per (step[, seed]) and one column per key:
    ``{"keys", "shapes", "cols": {name: (R, K)}, "step": (R, K), "seed": (R,) or None}``,
    or None when keys have different numbers of steps (ragged)."""
    keys, ms, rs, mismatched = pairs(block)
    if len({len(m) for m in ms}) != 1:
        return None
    seeds = block.get("seeds")
    steps = np.asarray(block["step"])
    seed = None
    if seeds is not None:
        steps, seed = np.repeat(steps, len(seeds)), np.tile(np.asarray(seeds), len(steps))
    shapes = [() if j in mismatched else _shape(m)[1:] for j, m in enumerate(ms)]
    cols = mismatch_columns(host_columns(compare_many(ms, rs, rtol, per_key(atol, keys, seeds))), mismatched)
    if not isinstance(atol, (int, float)):
        cols["atol"] = np.stack([atol[k].double().cpu().numpy() for k in keys], 1) if keys else np.zeros((len(steps), 0))
        if seeds is not None:
            cols["atol"] = np.repeat(cols["atol"], len(seeds), 0)
    return {"keys": keys, "shapes": shapes, "cols": cols, "mismatched": mismatched,
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
    return {"keys": c["keys"], "shapes": c["shapes"], "cols": out, "mismatched": c.get("mismatched", {}),
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
           "passed": pick(cols["passed"])}
    notes, codes = note_table(note_codes(cols["m_finite"], cols["r_finite"]), c.get("mismatched", {}))
    out["note"] = strings(notes).take(pick(codes))
    out.update({k: pick(cols[k]) for k in FLOATS + ("atol",) if k in cols})
    if c["seed"] is not None:
        out["seed"] = np.repeat(c["seed"], len(keys))
    return _frame(out, meta)


def _frame(out, meta):
    n = len(out["step"])
    if "site" not in out:
        out["site"] = site_column(out["layer"], meta.get("sites"))
    for k, v in meta.items():
        if k == "sites":
            continue
        if k not in out:
            out[k] = constant(v, n)
    return pd.DataFrame({k: out[k] for k in COLUMNS}, copy=False)  # every column is built afresh here


def ragged_frame(block, meta, rtol, atol):
    """Keys with different numbers of steps: each compared alone, rows then sorted."""
    keys, ms, rs, mismatched = pairs(block)
    ms, rs = [stacked(m) for m in ms], [stacked(r) for r in rs]
    steps = np.asarray(block["step"])
    atols = per_key(atol, keys)
    each = isinstance(atols, list)
    cols_of = [host_columns(compare_raw(m, r.to(m.dtype), rtol, atols[j] if each else atols))
               for j, (m, r) in enumerate(zip(ms, rs))]
    for j, h in enumerate(cols_of if each else ()):
        h["atol"] = atols[j].double().cpu().numpy()
    for j, h in enumerate(cols_of):
        if j in mismatched:
            h.update({k: v[:, None] for k, v in h.items()})
            mismatch_columns(h, {0: None})
            h.update({k: v[:, 0] for k, v in h.items()})
    lengths = [m.shape[0] for m in ms]
    rows = np.concatenate([np.arange(n) for n in lengths])
    which = np.repeat(np.arange(len(keys)), lengths)
    labels = np.concatenate([format_index(h["index"], () if j in mismatched else tuple(m.shape[1:]))
                             for j, (m, h) in enumerate(zip(ms, cols_of))])
    out = {"step": steps[rows], "layer": np.array([k[0] for k in keys], dtype=np.int64)[which],
           "time": pd.array([k[1] for k in keys], dtype="Int64").take(which),
           "quantity": strings(tuple(k[2] for k in keys)).take(which),
           "index": pd.array(labels, dtype="str"),
           "passed": np.concatenate([h["passed"] for h in cols_of])}
    codes = [note_codes(h["m_finite"], h["r_finite"]) for h in cols_of]
    extra = sorted(set(mismatched.values()))
    for j, note in mismatched.items():
        codes[j] = np.full(len(codes[j]), len(NOTES) + extra.index(note), dtype=codes[j].dtype)
    out["note"] = strings(tuple(NOTES) + tuple(extra)).take(np.concatenate(codes))
    out.update({k: np.concatenate([h[k] for h in cols_of]) for k in FLOATS + ("atol",) if k in cols_of[0]})
    df = _frame(out, meta)
    return df.iloc[np.lexsort(causal_key(df))].reset_index(drop=True)


def constant(v, n):
    """A column holding ``v`` n times, typed as ``df[k] = v`` would type it."""
    if isinstance(v, str):
        return strings((v,)).take(np.zeros(n, dtype=np.intp))
    return np.full(n, v)


def site_column(layer, sites):
    """Each row's site name from its layer number (layer 0, network-wide: empty)."""
    layer = np.asarray(layer)
    top = int(layer.max()) if len(layer) else 0
    names = list(sites or [])
    names += [f"layer{i}" for i in range(len(names) + 1, top + 1)]
    return strings(("",) + tuple(names)).take(layer)


@functools.lru_cache(maxsize=512)
def strings(values):
    """A pandas string array of ``values`` (a tuple), made once: making one costs more
    than taking from it."""
    return pd.array(list(values), dtype="str")


BACKWARD = {"delta": 0, "error_prev": 2}  # grad_<param> rank 1, between them


def causal_key(df):
    """Sort keys (last is primary) that put each step's rows in the order the values
    are computed: forward (each site's value, from the input up; then output, then loss); backward from the last layer down and
    from the last time step back, delta then grad_* then error_prev; then the update,
    each layer's optimizer state before its parameters. The first failing row is then
    where a divergence starts."""
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
    base = [q.split(".")[0] for q in names]  # delta.1 is delta; weight.exp_avg is state
    forward = np.array([b == "value" for b in base], dtype=bool)[codes]
    backward = np.array([b in BACKWARD or q.startswith("grad_") for q, b in zip(names, base)], dtype=bool)[codes]
    rank = np.array([BACKWARD.get(b, 1) for b in base], dtype=np.int64)[codes]
    first = np.array([q == "output" or q.startswith("optimizer_state") or ("." in q and b not in BACKWARD)
                      for q, b in zip(names, base)], dtype=bool)[codes]
    phase = np.where(forward, 0, np.where(layer == 0, 1, np.where(backward, 2, 3)))
    back = phase == 2
    rank = np.where(back, rank, np.where(first, 0, 1))  # network-wide: output, loss; update: state, parameter
    return (rank, np.where(back, -time, time), np.where(back, -layer, layer), phase, step)
