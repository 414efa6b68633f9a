"""A hand-written LSTM, one matrix per gate, checked against nn.LSTM and nn.LSTMCell.

The manual side keeps eight matrices and eight biases (W_ii, W_hi, b_ii, b_hi for
the input gate, likewise f, g, o), in the manual layout ``x @ W`` (W_i*: (in, H),
W_h*: (H, H)). torch packs them into ``weight_ih_l0`` (4H, in), rows in gate order
i, f, g, o, and multiplies by the transpose; ``gate_maps`` declares each manual
matrix as a view of its rows, ``w[k*H:(k+1)*H].T``, and bpcheck checks that the
views cover every element once. A Linear readout on the last hidden state follows
(nn.Linear's weight is shown as (H, out) by default: no map needed).

Sites and quantities compared (names from the reference's ``named_modules()``):

- ``lstm`` (nn.LSTM, one call): ``delta.0`` = dL/d(output sequence) (B, T, H), zero
  except at the last time; ``error_prev`` = dL/dx (B, T, in); ``grad_W_if`` etc.
  (``delta.1``, ``delta.2`` = dL/d(h_n, c_n) are offered and zero here: not reported.)
- ``cell`` (nn.LSTMCell, called T times in the reference's forward): per call
  (time 1..T) ``delta.0`` = dL/dh_t and ``delta.1`` = dL/dc_t (the cell's two
  outputs; dL/dc_t is the total, through h_t = o * tanh(c_t) of the same call too,
  since autograd differentiates the tensor c_t wherever it is used),
  ``error_prev.0/.1/.2`` = dL/d(x_t, h_{t-1}, c_{t-1}) through that call (at time 1
  only ``.0``: the zero state is a constant); the gradients summed over the calls.
- ``fc``: delta = dL/dy, error_prev = dL/dh_T, grad_weight, grad_bias.

Loss half_sse (dL/dy = y - t); SGD, applied by bpcheck (the manual side has no
update(), so bpcheck applies ``W -= lr * dW`` to every manual tensor, through the
views on the reference side too).

Run: python examples/lstm_gates.py, or bpcheck run examples/lstm_gates.py:lstm (and :cell)
(tests/test_sites.py runs it, and breaks it)
"""
import torch
from torch import nn

import bpcheck

GATES = "ifgo"  # torch's order of the gates in weight_ih's rows


def sigmoid(z):
    return 1 / (1 + torch.exp(-z))


class ManualLSTM:
    """LSTM + Linear readout, forward and backward through time by hand.

    ``site`` is the reference's name for the recurrent module: "lstm" (nn.LSTM, one call,
    whole-sequence quantities) or "cell" (nn.LSTMCell, one call per time step)."""

    def __init__(self, n_in, H, n_out, site="lstm", dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *shape: (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1) / H ** 0.5  # noqa: E731
        lstm = {}
        for k in GATES:
            lstm |= {f"W_i{k}": r(n_in, H), f"W_h{k}": r(H, H), f"b_i{k}": r(H), f"b_h{k}": r(H)}
        self.params = {site: lstm, "fc": {"weight": r(H, n_out), "bias": r(n_out)}}
        self.site, self.H = site, H

    def step(self, x, t):
        p, fc = self.params[self.site], self.params["fc"]
        B, T, _ = x.shape
        h = c = x.new_zeros(B, self.H)
        hs, cs, gates = [h], [c], []
        for s in range(T):
            # z_k = x_s W_ik + b_ik + h W_hk + b_hk: (B, in) @ (in, H) + (B, H) @ (H, H) -> (B, H)
            z = {k: x[:, s] @ p[f"W_i{k}"] + p[f"b_i{k}"] + h @ p[f"W_h{k}"] + p[f"b_h{k}"] for k in GATES}
            i, f, g, o = sigmoid(z["i"]), sigmoid(z["f"]), torch.tanh(z["g"]), sigmoid(z["o"])
            c = f * c + i * g  # c_s = f * c_{s-1} + i * g
            h = o * torch.tanh(c)  # h_s = o * tanh(c_s)
            hs.append(h), cs.append(c), gates.append((i, f, g, o))
        y = h @ fc["weight"] + fc["bias"]  # (B, H) @ (H, out) -> (B, out)
        error = y - t  # dL/dy for half_sse
        dW_fc = h.T @ error  # (H, B) @ (B, out) -> (H, out)
        dh = error @ fc["weight"].T  # dL/dh_T: (B, out) @ (out, H) -> (B, H)

        grads = {n: torch.zeros_like(v) for n, v in p.items()}
        dc = torch.zeros_like(h)  # dL/dc_s from step s+1 (none after the last step)
        dx, dout = torch.zeros_like(x), torch.zeros(B, T, self.H, dtype=x.dtype)
        dout[:, -1] = dh  # only h_T reaches the loss through the output sequence
        per_call = {}
        for s in reversed(range(T)):
            i, f, g, o = gates[s]
            call = s + 1
            tc = torch.tanh(cs[s + 1])
            dc = dc + dh * o * (1 - tc ** 2)  # dc_s += dh_s * o * tanh'(c_s)
            per_call[("delta.0", call)], per_call[("delta.1", call)] = dh, dc  # dL/d(h_s, c_s), the cell's outputs
            # dz_k = dL/d(gate k's pre-activation): sigma' = s(1-s), tanh' = 1 - g^2
            dz = {"i": dc * g * i * (1 - i), "f": dc * cs[s] * f * (1 - f),
                  "g": dc * i * (1 - g ** 2), "o": dh * tc * o * (1 - o)}
            for k in GATES:
                grads[f"W_i{k}"] += x[:, s].T @ dz[k]  # (in, B) @ (B, H) -> (in, H)
                grads[f"W_h{k}"] += hs[s].T @ dz[k]  # (H, B) @ (B, H) -> (H, H)
                grads[f"b_i{k}"] += dz[k].sum(0)
                grads[f"b_h{k}"] += dz[k].sum(0)
            dx[:, s] = sum(dz[k] @ p[f"W_i{k}"].T for k in GATES)  # (B, H) @ (H, in) -> (B, in)
            dh = sum(dz[k] @ p[f"W_h{k}"].T for k in GATES)  # dL/dh_{s-1}: (B, H) @ (H, H) -> (B, H)
            dc = dc * f  # dL/dc_{s-1} = dc_s * f
            per_call[("error_prev.0", call)] = dx[:, s]
            if s > 0:  # h_0 and c_0 are constants: the reference has no error_prev.1/.2 at time 1
                per_call[("error_prev.1", call)], per_call[("error_prev.2", call)] = dh, dc

        rec = {f"grad_{n}": v for n, v in grads.items()}
        rec |= per_call if self.site == "cell" else {"delta.0": dout, "error_prev": dx}
        return {"loss": 0.5 * (error ** 2).sum(), "output": y, "sites": {
            self.site: rec,
            "fc": {"delta": error, "error_prev": error @ fc["weight"].T,
                   "grad_weight": dW_fc, "grad_bias": error.sum(0)}}}


def gate_maps(site, H, suffix=""):
    """Each manual gate tensor as a view of torch's packed one: rows k*H:(k+1)*H, transposed."""
    maps = {}
    for k, gate in enumerate(GATES):
        rows = slice(k * H, (k + 1) * H)
        maps[f"{site}.W_i{gate}"] = (f"weight_ih{suffix}", lambda w, r=rows: w[r].T)  # (4H, in) -> (in, H)
        maps[f"{site}.W_h{gate}"] = (f"weight_hh{suffix}", lambda w, r=rows: w[r].T)  # (4H, H) -> (H, H)
        maps[f"{site}.b_i{gate}"] = (f"bias_ih{suffix}", lambda b, r=rows: b[r])
        maps[f"{site}.b_h{gate}"] = (f"bias_hh{suffix}", lambda b, r=rows: b[r])
    return maps


class LSTMNet(nn.Module):
    """The reference: nn.LSTM over the sequence, Linear on the last hidden state."""

    def __init__(self, n_in, H, n_out):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(n_in, H, batch_first=True), nn.Linear(H, n_out)

    def forward(self, x):
        out, _ = self.lstm(x)  # out: (B, T, H)
        return self.fc(out[:, -1])


class CellNet(nn.Module):
    """The reference: nn.LSTMCell stepped over time in forward (one site, T calls)."""

    def __init__(self, n_in, H, n_out):
        super().__init__()
        self.cell, self.fc = nn.LSTMCell(n_in, H), nn.Linear(H, n_out)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for s in range(x.shape[1]):
            h, c = self.cell(x[:, s], (h, c))
        return self.fc(h)


def build(dtype, device, reference="lstm", manual_class=ManualLSTM, B=4, T=5, n_in=3, H=6, n_out=2):
    """assert_backprop_close's arguments, fresh for every run (bpcheck.case calls this)."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(B, T, n_in, generator=g), torch.randn(B, n_out, generator=g)
    if reference == "lstm":
        ref, maps = LSTMNet(n_in, H, n_out), gate_maps("lstm", H, "_l0")
    else:
        ref, maps = CellNet(n_in, H, n_out), gate_maps("cell", H)
    return {"manual": manual_class(n_in, H, n_out, site=reference, dtype=dtype), "reference": ref,
            "inputs": x, "targets": t, "loss": "half_sse", "optimizer": 0.1, "maps": maps}


# bpcheck run examples/lstm_gates.py:lstm   (and :cell)
lstm = bpcheck.case("lstm", build, steps=3, description="per-gate manual LSTM vs nn.LSTM")
cell = bpcheck.case("cell", lambda dtype, device: build(dtype, device, "cell"), steps=3,
                    description="per-gate manual LSTM vs nn.LSTMCell stepped over time")


def check(reference="lstm", manual_class=ManualLSTM, steps=3):
    return bpcheck.assert_backprop_close(**build(torch.float64, "cpu", reference, manual_class), steps=steps,
                                         name=f"lstm-gates-{reference}")


if __name__ == "__main__":
    for kind in ("lstm", "cell"):
        report = check(kind)
        print(f"PASS {kind}: {len(report)} rows, largest difference {report['max_abs_diff'].max():.2e}")
