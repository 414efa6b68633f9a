"""The Elman RNN as nn.RNN(nonlinearity="tanh", batch_first=True) and an nn.Linear readout.

Where each reference value comes from (all from autograd, none derived by hand):

- loss, output, every parameter gradient, and the readout's delta / error_prev:
  autograd through nn.RNN's own forward over the whole sequence (its fused
  kernel), then the readout, ``torch.autograd.grad`` on the module's parameters
  and on the readout's input and output.
- the per-time ``("delta", t)`` = dL/dz_t and ``("error_prev", t)`` = dL/dx_t:
  nn.RNN exposes neither its pre-activations z_t nor a hook per time step (and
  dL/dh_t caught from an nn.RNNCell would be the gradient after tanh, not delta).
  So the same recurrence is unrolled on nn.RNN's *own* parameter tensors with
  torch ops, ``z_t = F.linear(x_t, W_ih, b_ih) + F.linear(h_{t-1}, W_hh, b_hh)``,
  ``h_t = tanh(z_t)`` (the cell nn.RNN documents), and ``torch.autograd.grad`` of
  that graph's loss with respect to each z_t and to x gives them.

The manual side has to match both graphs, so a slip in the unrolled graph could
not hide; tests/test_conv_rnn.py also checks that the unrolled graph's output and
parameter gradients equal nn.RNN's to rounding.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .layout import to_manual
from .mlp import LOSS_FNS
from .optim import seed_form, torch_optimizer
from .side import Reference


class ElmanModule(nn.Module):
    def __init__(self, n_in, hidden, n_out, dtype, device):
        super().__init__()
        self.rnn = nn.RNN(n_in, hidden, nonlinearity="tanh", batch_first=True, dtype=dtype, device=device)
        self.readout = nn.Linear(hidden, n_out, dtype=dtype, device=device)

    def forward(self, x):
        """nn.RNN's own forward: x (B, T, in) -> (y (B, T, out), H (B, T, hidden)), h_0 = 0."""
        H, _ = self.rnn(x)
        return self.readout(H), H

    def unrolled(self, x):
        """The same recurrence step by step on nn.RNN's parameters: -> (y, [z_1, ..., z_T])."""
        r = self.rnn
        h, zs, hs = x.new_zeros(x.shape[0], r.hidden_size), [], []
        for t in range(x.shape[1]):
            z = F.linear(x[:, t], r.weight_ih_l0, r.bias_ih_l0) + F.linear(h, r.weight_hh_l0, r.bias_hh_l0)
            h = torch.tanh(z)
            zs.append(z)
            hs.append(h)
        return self.readout(torch.stack(hs, 1)), zs


class ElmanReference(Reference):
    """Reference for manual.rnn.Elman: layer 1 the nn.RNN, layer 2 the readout."""

    def __init__(self, module, loss_fn, optimizer, seed_state=True):
        super().__init__(module, [module.rnn, module.readout], loss_fn, optimizer, seed_state)

    def step(self, x, t):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y, H = self.module(x)
            loss = self.loss_fn(y, t)
            plist = [p for ps in self._params for p in ps.values()]
            grads = torch.autograd.grad(loss, plist + [y, H])
            y2, zs = self.module.unrolled(x)
            per_time = torch.autograd.grad(self.loss_fn(y2, t), zs + [x])
        pgrads, (dy, dH) = iter(grads[:len(plist)]), grads[len(plist):]
        dx = per_time[-1]  # (B, T, in)
        rec = {}
        for s in range(len(zs), 0, -1):  # time 1 is the first input
            rec[("delta", s)] = per_time[s - 1]
            rec[("error_prev", s)] = dx[:, s - 1]
        layers = [rec, {"delta": dy, "error_prev": dH}]
        for layer, ps, q in zip(self.layers, self._params, layers):
            for name, p in ps.items():
                g = next(pgrads)
                p.grad = g
                q[f"grad_{name}"] = to_manual(layer, name, g)
        return {"loss": loss.detach(), "output": y.detach(), "layers": layers}


def build_elman(W_xh, W_hh, b_ih, b_hh, W_hy, b_y, loss="mse", optimizer="sgd", lr=1.0, **opt_kw):
    """Weights in the manual layout (W_xh (in, H), W_hh (H, H), W_hy (H, out)); converted in Reference.load."""
    module = ElmanModule(W_xh.shape[0], W_xh.shape[1], W_hy.shape[1], W_xh.dtype, W_xh.device)
    ref = ElmanReference(module, LOSS_FNS[loss], torch_optimizer(optimizer, list(module.parameters()), lr, **opt_kw),
                         seed_form(optimizer, opt_kw))
    ref.load([{"weight_ih_l0": W_xh, "weight_hh_l0": W_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh},
              {"weight": W_hy, "bias": b_y}])
    return ref
