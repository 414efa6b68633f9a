"""An Elman RNN with a linear readout, and backprop through time, as seed 000's three formulas.

Forward, for t = 1..T with h_0 = 0 (time 1 is the first input, x_t = x[:, t-1]):

    z_t = x_t @ W_xh + h_{t-1} @ W_hh + b_ih + b_hh
    h_t = tanh(z_t)
    y_t = h_t @ W_hy + b_y                      (the readout, at every time step)

The seeds' single bias b is split in two, ``b = b_ih + b_hh``, because nn.RNN keeps
two; z is linear in each with coefficient 1, so both get the same gradient.
Parameters keep nn.RNN's names (``weight_ih_l0`` ...) so that the report names the
reference's parameters; the weights are in the seeds' layout, W_xh (in, H) and
W_hh (H, H), and reference/layout.py transposes them for nn.RNN.

Backward runs from the last time step back. At time t, the error on h_t has two
parts, the readout's and the *carry* from time t+1:

    error_h_t  = error_H[:, t] + carry_{t+1}            carry_{T+1} = 0
    delta_t    = (1 - h_t^2) * error_h_t                (formula 1)
    dW_xh     += x_t.T @ delta_t,  dW_hh += h_{t-1}.T @ delta_t,  db += sum delta_t   (formula 3)
    error_prev_t = delta_t @ W_xh.T                     (formula 2, to the input x_t)
    carry_t    = delta_t @ W_hh.T                       (formula 2, to h_{t-1}: the BPTT carry)

Per-time quantities are reported under ``(quantity, t)`` keys.
"""
import torch

from .losses import LOSSES
from .optim import SGD


class Elman:
    def __init__(self, W_xh, W_hh, b_ih, b_hh, W_hy, b_y, loss="mse", optimizer=None):
        """W_xh (in, H), W_hh (H, H), b_ih and b_hh (H,), W_hy (H, out), b_y (out,)."""
        self.params = [
            {"weight_ih_l0": W_xh, "weight_hh_l0": W_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh},
            {"weight": W_hy, "bias": b_y},
        ]
        self.loss = LOSSES[loss]() if isinstance(loss, str) else loss
        self.optimizer = optimizer if optimizer is not None else SGD(1.0)

    def forward(self, x):
        """x (B, T, in) -> y (B, T, out); keeps hs = [h_0, h_1, ..., h_T]."""
        p, r = self.params[0], self.params[1]
        self.x = x
        h = x.new_zeros(x.shape[0], p["weight_hh_l0"].shape[0])  # h_0 = 0: (B, H)
        self.hs = [h]
        for t in range(1, x.shape[1] + 1):
            # (B, in) @ (in, H) + (B, H) @ (H, H) -> (B, H)
            z = x[:, t - 1] @ p["weight_ih_l0"] + h @ p["weight_hh_l0"] + p["bias_ih_l0"] + p["bias_hh_l0"]
            h = torch.tanh(z)
            self.hs.append(h)
        self.H = torch.stack(self.hs[1:], 1)  # (B, T, H)
        return self.H @ r["weight"] + r["bias"]  # (B, T, H) @ (H, out) -> (B, T, out)

    def carry(self, delta):
        """dL/dh_{t-1} through the recurrence: carry = delta_t @ W_hh.T."""
        return delta @ self.params[0]["weight_hh_l0"].T  # (B, H) @ (H, H) -> (B, H)

    def step(self, x, t):
        y = self.forward(x)
        p, r = self.params[0], self.params[1]
        B, T, H = self.H.shape
        # readout (layer 2), every time step at once; identity activation, so delta = error
        delta_y = self.loss.error(y, t)  # delta = dL/dy: (B, T, out)
        dW_hy = self.H.reshape(B * T, H).T @ delta_y.reshape(B * T, -1)  # (H, B*T) @ (B*T, out) -> (H, out)
        error_H = delta_y @ r["weight"].T  # (B, T, out) @ (out, H) -> (B, T, H)
        readout = {"delta": delta_y, "error_prev": error_H, "grad_weight": dW_hy, "grad_bias": delta_y.sum((0, 1))}
        # recurrent layer (layer 1), back through time
        rec = {}
        dW_xh, dW_hh = torch.zeros_like(p["weight_ih_l0"]), torch.zeros_like(p["weight_hh_l0"])
        db = torch.zeros_like(p["bias_ih_l0"])
        carry = torch.zeros_like(self.hs[0])  # nothing flows back into h_T from the future
        for s in range(T, 0, -1):
            h, h_prev, x_s = self.hs[s], self.hs[s - 1], x[:, s - 1]
            error_h = error_H[:, s - 1] + carry  # dL/dh_t = readout's part + the carry from t+1
            delta = (1 - h * h) * error_h  # delta_t = tanh'(z_t) * error_h_t = (1 - h_t^2) * error_h_t
            dW_xh += x_s.T @ delta  # (in, B) @ (B, H) -> (in, H)
            dW_hh += h_prev.T @ delta  # (H, B) @ (B, H) -> (H, H)
            db += delta.sum(0)  # db = sum of delta_t over the batch
            rec[("delta", s)] = delta
            rec[("error_prev", s)] = delta @ p["weight_ih_l0"].T  # (B, H) @ (H, in) -> (B, in)
            carry = self.carry(delta)
        rec.update(grad_weight_ih_l0=dW_xh, grad_weight_hh_l0=dW_hh, grad_bias_ih_l0=db, grad_bias_hh_l0=db.clone())
        return {"loss": self.loss.value(y, t), "output": y, "layers": [rec, readout]}

    def update(self, trace):
        grads = [{n: g[f"grad_{n}"] for n in p} for p, g in zip(self.params, trace["layers"])]
        self.optimizer.step(self.params, grads)

    def state(self):
        return self.optimizer.state()
