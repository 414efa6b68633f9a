"""A learner's "every intermediate by hand" exercise, checked site by site.

A character-level MLP: Embedding -> concat -> Linear -> BatchNorm -> tanh -> Linear ->
cross-entropy, trained with Adam on mini-batches of integer tokens. The reference writes
its BatchNorm and its loss one op at a time and tags each intermediate with
``bpcheck.tap``; autograd then supplies dL/d(every tap). The manual side derives each of
those gradients by hand, applies Adam, and keeps BatchNorm's running statistics, and
bpcheck compares all of it: every tap's value and gradient, every parameter gradient, the
parameters after Adam, Adam's moments and the running statistics.

Run it: ``python examples/every_intermediate.py``, or ``bpcheck run examples/every_intermediate.py:CASE``.
"""
import torch
from torch import nn

import bpcheck
from bpcheck.manual.optim import Adam

V, E, CTX, H, B = 27, 10, 3, 64, 32  # vocabulary, embedding size, context, hidden units, batch
EPS, MOMENTUM, LR = 1e-5, 0.1, 1e-2


class BatchNorm(nn.Module):
    """BatchNorm1d in training mode, one op per line so that each result can be tapped."""

    def __init__(self, n):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        tap = bpcheck.tap
        bnmeani = tap("bnmeani", x.mean(0, keepdim=True))
        bndiff = tap("bndiff", x - bnmeani)
        bndiff2 = tap("bndiff2", bndiff ** 2)
        bnvar = tap("bnvar", bndiff2.sum(0, keepdim=True) / (x.shape[0] - 1))  # Bessel: n - 1
        bnvar_inv = tap("bnvar_inv", (bnvar + EPS) ** -0.5)
        bnraw = tap("bnraw", bndiff * bnvar_inv)
        with torch.no_grad():
            self.running_mean.mul_(1 - MOMENTUM).add_(MOMENTUM * bnmeani[0])
            self.running_var.mul_(1 - MOMENTUM).add_(MOMENTUM * bnvar[0])
        return self.weight * bnraw + self.bias


class Reference(nn.Module):
    def __init__(self):
        super().__init__()
        # fc1 has no bias: BatchNorm subtracts the mean, so dL/db1 is 0 up to rounding, and Adam would
        # scale that rounding up to a full step of either sign (a float32 run would fail on noise)
        self.emb, self.fc1, self.bn, self.fc2 = nn.Embedding(V, E), nn.Linear(CTX * E, H, bias=False), BatchNorm(H), nn.Linear(H, V)

    def forward(self, X):
        embcat = bpcheck.tap("embcat", self.emb(X).view(X.shape[0], -1))
        hpreact = self.bn(self.fc1(embcat))
        return self.fc2(torch.tanh(hpreact))


def cross_entropy(logits, Y):
    """The loss one op at a time, each tapped (the manual side derives each gradient)."""
    tap = bpcheck.tap
    logit_maxes = tap("logit_maxes", logits.max(1, keepdim=True).values)
    norm_logits = tap("norm_logits", logits - logit_maxes)
    counts = tap("counts", norm_logits.exp())
    counts_sum = tap("counts_sum", counts.sum(1, keepdim=True))
    counts_sum_inv = tap("counts_sum_inv", counts_sum ** -1)
    probs = tap("probs", counts * counts_sum_inv)
    logprobs = tap("logprobs", probs.log())
    return -logprobs[torch.arange(logits.shape[0]), Y].mean()


class Manual:
    """Forward and backward by hand; Adam from bpcheck.manual; running statistics kept."""

    def __init__(self, ref):
        w = {n: p.detach().clone() for n, p in ref.named_parameters()}
        self.params = {"emb": {"weight": w["emb.weight"]},
                       "fc1": {"weight": w["fc1.weight"].T.contiguous()},  # (in, out)
                       "bn": {"weight": w["bn.weight"], "bias": w["bn.bias"]},
                       "fc2": {"weight": w["fc2.weight"].T.contiguous(), "bias": w["fc2.bias"]}}
        self.running = {"running_mean": torch.zeros_like(w["bn.bias"]), "running_var": torch.ones_like(w["bn.bias"])}
        self.adam = Adam(LR)

    @property
    def buffers(self):
        return {"bn": self.running}

    def step(self, X, Y):
        C, W1 = self.params["emb"]["weight"], self.params["fc1"]["weight"]
        g, be = self.params["bn"]["weight"], self.params["bn"]["bias"]
        W2, b2 = self.params["fc2"]["weight"], self.params["fc2"]["bias"]
        n = X.shape[0]
        # forward
        emb = C[X]  # (n, CTX, E)
        embcat = emb.view(n, -1)  # (n, CTX*E)
        hprebn = embcat @ W1  # (n, CTX*E) @ (CTX*E, H) -> (n, H)
        bnmeani = hprebn.mean(0, keepdim=True)
        bndiff = hprebn - bnmeani
        bndiff2 = bndiff ** 2
        bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)
        bnvar_inv = (bnvar + EPS) ** -0.5
        bnraw = bndiff * bnvar_inv
        hpreact = g * bnraw + be
        h = torch.tanh(hpreact)
        logits = h @ W2 + b2  # (n, H) @ (H, V) -> (n, V)
        logit_maxes = logits.max(1, keepdim=True).values
        norm_logits = logits - logit_maxes
        counts = norm_logits.exp()
        counts_sum = counts.sum(1, keepdim=True)
        counts_sum_inv = counts_sum ** -1
        probs = counts * counts_sum_inv
        logprobs = probs.log()
        loss = -logprobs[torch.arange(n), Y].mean()
        # backward, every intermediate
        dlogprobs = torch.zeros_like(logprobs)
        dlogprobs[torch.arange(n), Y] = -1.0 / n  # dL/dlogprobs = -1/n at each target
        dprobs = dlogprobs / probs  # d log p = dp / p
        dcounts_sum_inv = (dprobs * counts).sum(1, keepdim=True)  # broadcast over the row: sum
        dcounts = dprobs * counts_sum_inv
        dcounts_sum = dcounts_sum_inv * -counts_sum ** -2  # d(1/s) = -1/s^2
        dcounts = dcounts + dcounts_sum  # counts also feed counts_sum: add, broadcast
        dnorm_logits = dcounts * counts  # d exp(u) = exp(u) du
        dlogit_maxes = -dnorm_logits.sum(1, keepdim=True)
        dlogits = dnorm_logits.clone()
        dlogits[torch.arange(n), logits.argmax(1)] += dlogit_maxes[:, 0]  # max routes to its argmax
        dh = dlogits @ W2.T  # (n, V) @ (V, H) -> (n, H)
        dW2 = h.T @ dlogits  # (H, n) @ (n, V) -> (H, V)
        db2 = dlogits.sum(0)
        dhpreact = (1 - h ** 2) * dh  # tanh' = 1 - tanh^2
        dg = (bnraw * dhpreact).sum(0)
        dbe = dhpreact.sum(0)
        dbnraw = g * dhpreact
        dbndiff = bnvar_inv * dbnraw
        dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
        dbnvar = -0.5 * (bnvar + EPS) ** -1.5 * dbnvar_inv
        dbndiff2 = torch.ones_like(bndiff2) / (n - 1) * dbnvar
        dbndiff = dbndiff + 2 * bndiff * dbndiff2  # bndiff feeds bnraw and bndiff2
        dbnmeani = -dbndiff.sum(0, keepdim=True)
        dhprebn = dbndiff + dbnmeani / n  # every row feeds the mean
        dembcat = dhprebn @ W1.T  # (n, H) @ (H, CTX*E) -> (n, CTX*E)
        dW1 = embcat.T @ dhprebn  # (CTX*E, n) @ (n, H) -> (CTX*E, H)
        demb = dembcat.view(emb.shape)
        dC = torch.zeros_like(C)
        dC.index_add_(0, X.reshape(-1), demb.reshape(-1, E))  # dC[X[k, j]] += demb[k, j]
        self.cache = (bnmeani, bnvar)
        taps = dict(embcat=(embcat, dembcat), bnmeani=(bnmeani, dbnmeani), bndiff=(bndiff, dbndiff),
                    bndiff2=(bndiff2, dbndiff2), bnvar=(bnvar, dbnvar), bnvar_inv=(bnvar_inv, dbnvar_inv),
                    bnraw=(bnraw, dbnraw), logit_maxes=(logit_maxes, dlogit_maxes),
                    norm_logits=(norm_logits, dnorm_logits), counts=(counts, dcounts), counts_sum=(counts_sum, dcounts_sum),
                    counts_sum_inv=(counts_sum_inv, dcounts_sum_inv), probs=(probs, dprobs), logprobs=(logprobs, dlogprobs))
        sites = {f"tap:{k}": {"value": v, "delta": d} for k, (v, d) in taps.items()}
        sites.update({"emb": {"grad_weight": dC}, "fc1": {"grad_weight": dW1, "delta": dhprebn},
                      "bn": {"grad_weight": dg, "grad_bias": dbe, "delta": dhpreact},
                      "fc2": {"grad_weight": dW2, "grad_bias": db2, "delta": dlogits}})
        return {"loss": loss, "output": logits, "sites": sites}

    def update(self, trace):
        bnmeani, bnvar = self.cache
        running = self.running
        running["running_mean"].mul_(1 - MOMENTUM).add_(MOMENTUM * bnmeani[0])
        running["running_var"].mul_(1 - MOMENTUM).add_(MOMENTUM * bnvar[0])
        sites = trace["sites"]
        self.adam.step(self.params, {s: {n: sites[s][f"grad_{n}"] for n in p} for s, p in self.params.items()})

    def state(self):
        return self.adam.state()


def data(seed=0, batches=8):
    """Random token windows and next tokens, one mini-batch per step (integers)."""
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randint(0, V, (batches * B, CTX), generator=g), torch.randint(0, V, (batches * B,), generator=g)
    return [(X[i * B:(i + 1) * B], Y[i * B:(i + 1) * B]) for i in range(batches)]


def build(dtype=torch.float64, device="cpu", manual=Manual):
    torch.manual_seed(0)
    ref = Reference().to(dtype=dtype, device=device)
    return dict(manual=manual(ref), reference=ref, inputs=data(), loss=cross_entropy,
                optimizer=lambda ps: torch.optim.Adam(ps, lr=LR))


CASE = bpcheck.case("every-intermediate", build, steps=8)

if __name__ == "__main__":
    report = bpcheck.assert_backprop_close(**build(), steps=8)
    print(f"PASS: {len(report)} rows, {report['site'].nunique()} sites, every one within tolerance")
