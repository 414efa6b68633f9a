"""A hand-written multi-head self-attention, checked against nn.MultiheadAttention.

torch packs the query, key and value projections into one ``in_proj_weight`` (3E, E)
and ``in_proj_bias`` (3E), rows in the order q, k, v, and multiplies by the
transpose. The manual side keeps ``W_q``, ``W_k``, ``W_v`` (E, E) in the manual
layout ``x @ W`` and three biases; ``maps`` declares each as a view of its rows of the
packed tensor, ``w[k*E:(k+1)*E].T``. The output projection is a submodule of its own,
``attn.out_proj`` (a Linear: its weight is shown as (E, E) transposed by default).
nn.MultiheadAttention never calls that submodule (it reads its weight directly), so
``attn.out_proj`` offers grad_weight and grad_bias, but no delta or error_prev.

The reference is called as ``attn(x, x, x, need_weights=False)``: three tensor inputs,
so the manual side reports ``error_prev.0``, ``.1``, ``.2`` = dL/d(query, key, value)
separately (bpcheck gives each argument its own node, even when they are one tensor).
The output is the tuple (y, None); its one tensor gives ``delta`` = dL/dy.

Loss mse (dL/dy = 2 (y - t) / y.numel()); SGD applied by bpcheck.

Run: python examples/attention.py, or bpcheck run examples/attention.py:attention
(tests/test_sites.py runs it, and breaks it)
"""
import torch
from torch import nn

import bpcheck

QKV = "qkv"  # torch's order of the projections in in_proj_weight's rows


class ManualAttention:
    def __init__(self, E, heads, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *shape: (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) / E ** 0.5  # noqa: E731
        self.params = {"attn": {f"W_{k}": r(E, E) for k in QKV} | {f"b_{k}": r(E) for k in QKV},
                       "attn.out_proj": {"weight": r(E, E), "bias": r(E)}}
        self.heads = heads

    def split(self, a):  # (B, T, E) -> (B, heads, T, d)
        B, T, E = a.shape
        return a.reshape(B, T, self.heads, E // self.heads).transpose(1, 2)

    def merge(self, a):  # (B, heads, T, d) -> (B, T, E)
        B, h, T, d = a.shape
        return a.transpose(1, 2).reshape(B, T, h * d)

    def step(self, x, t):
        p, out = self.params["attn"], self.params["attn.out_proj"]
        q, k, v = (self.split(x @ p[f"W_{n}"] + p[f"b_{n}"]) for n in QKV)  # (B, T, E) @ (E, E) -> (B, h, T, d)
        scale = q.shape[-1] ** -0.5
        s = q @ k.transpose(-1, -2) * scale  # (B, h, T, d) @ (B, h, d, T) -> (B, h, T, T)
        a = torch.softmax(s, dim=-1)  # attention weights, rows sum to 1
        o = self.merge(a @ v)  # (B, h, T, T) @ (B, h, T, d) -> (B, h, T, d) -> (B, T, E)
        y = o @ out["weight"] + out["bias"]  # (B, T, E) @ (E, E) -> (B, T, E)

        error = 2 * (y - t) / y.numel()  # dL/dy for mse
        do = error @ out["weight"].T  # (B, T, E) @ (E, E) -> (B, T, E)
        do_h = self.split(do)
        da = do_h @ v.transpose(-1, -2)  # (B, h, T, d) @ (B, h, d, T) -> (B, h, T, T)
        dv = a.transpose(-1, -2) @ do_h  # (B, h, T, T) @ (B, h, T, d) -> (B, h, T, d)
        ds = a * (da - (da * a).sum(-1, keepdim=True))  # softmax': a * (da - sum(da * a))
        dq = ds @ k * scale  # (B, h, T, T) @ (B, h, T, d) -> (B, h, T, d)
        dk = ds.transpose(-1, -2) @ q * scale  # (B, h, T, T) @ (B, h, T, d) -> (B, h, T, d)
        dz = {"q": self.merge(dq), "k": self.merge(dk), "v": self.merge(dv)}  # dL/d(projection outputs)

        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (B, T, E) -> (B*T, E)
        attn = {f"grad_W_{n}": flat(x).T @ flat(dz[n]) for n in QKV}  # (E, B*T) @ (B*T, E) -> (E, E)
        attn |= {f"grad_b_{n}": flat(dz[n]).sum(0) for n in QKV}
        attn |= {f"error_prev.{j}": dz[n] @ p[f"W_{n}"].T for j, n in enumerate(QKV)}  # dL/d(query, key, value)
        attn["delta"] = error
        return {"loss": ((y - t) ** 2).mean(), "output": y, "sites": {
            "attn": attn,
            "attn.out_proj": {"grad_weight": flat(o).T @ flat(error), "grad_bias": flat(error).sum(0)}}}


def qkv_maps(E):
    """W_q, W_k, W_v (and biases) as views of torch's packed in_proj: rows k*E:(k+1)*E."""
    maps = {}
    for j, n in enumerate(QKV):
        rows = slice(j * E, (j + 1) * E)
        maps[f"attn.W_{n}"] = ("in_proj_weight", lambda w, r=rows: w[r].T)  # (3E, E) -> (E, E), transposed
        maps[f"attn.b_{n}"] = ("in_proj_bias", lambda b, r=rows: b[r])
    return maps


class SelfAttention(nn.Module):
    def __init__(self, E, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, heads, batch_first=True)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)  # (B, T, E)
        return y


def build(dtype, device, manual_class=ManualAttention, B=3, T=5, E=8, heads=2):
    """assert_backprop_close's arguments, fresh for every run (bpcheck.case calls this)."""
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(B, T, E, generator=g), torch.randn(B, T, E, generator=g)
    return {"manual": manual_class(E, heads, dtype=dtype), "reference": SelfAttention(E, heads),
            "inputs": x, "targets": t, "loss": "mse", "optimizer": 0.5, "maps": qkv_maps(E)}


attention = bpcheck.case("attention", build, steps=3, description="manual attention vs nn.MultiheadAttention")


def check(manual_class=ManualAttention, steps=3):
    return bpcheck.assert_backprop_close(**build(torch.float64, "cpu", manual_class), steps=steps, name="attention")


if __name__ == "__main__":
    report = check()
    print(f"PASS: {len(report)} rows, largest difference {report['max_abs_diff'].max():.2e}")
