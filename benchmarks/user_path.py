"""The user path on a wide network: ``python benchmarks/user_path.py [steps] [dtype]``.

A hand-written 784-1024-1024-10 ReLU net with a softmax cross-entropy on labels (the manual
side, plain tensors) against the same ``nn.Sequential``, SGD lr 0.01, batch 64. Times, side by
side in one process: the manual side alone, the reference alone (forward, backward, SGD),
and ``assert_backprop_close`` in lockstep, under the default rule and under the torch rule,
each once untimed first; prints check / (manual + reference) with the machine's load."""
import os
import sys
import time

import torch
from torch import nn

from bpcheck.testing import assert_backprop_close

SIZES = (784, 1024, 1024, 10)


class Wide:
    """z = x @ W + b per layer, W (in, out); ReLU hidden layers, logits out."""

    def __init__(self, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.params = [{"weight": torch.randn(i, o, generator=g, dtype=dtype) / i ** 0.5,
                        "bias": torch.zeros(o, dtype=dtype)} for i, o in zip(SIZES, SIZES[1:])]

    def step(self, x, t):
        hs, h = [x], x
        for i, p in enumerate(self.params):
            z = h @ p["weight"] + p["bias"]  # (B, in) @ (in, out) -> (B, out)
            h = z.clamp_min(0) if i < len(self.params) - 1 else z
            hs.append(h)
        p = torch.softmax(h, 1)
        loss = -torch.log(p[torch.arange(len(t)), t]).mean()
        delta = p.clone()
        delta[torch.arange(len(t)), t] -= 1
        delta /= len(t)  # dL/dz of the logits: (softmax - onehot) / B
        layers = []
        for i in reversed(range(len(self.params))):
            W = self.params[i]["weight"]
            q = {"delta": delta, "grad_weight": hs[i].T @ delta, "grad_bias": delta.sum(0)}  # (in, B) @ (B, out)
            if i > 0:
                q["error_prev"] = delta @ W.T  # (B, out) @ (out, in) -> (B, in)
                delta = q["error_prev"] * (hs[i] > 0)  # ReLU' on the layer below
            layers.insert(0, q)
        return {"loss": loss, "output": h, "layers": layers}


def reference(manual):
    net = nn.Sequential(*[m for i, o in zip(SIZES, SIZES[1:]) for m in (nn.Linear(i, o), nn.ReLU())][:-1])
    with torch.no_grad():
        for lin, p in zip(net[::2], manual.params):
            lin.weight.copy_(p["weight"].T)
            lin.bias.copy_(p["bias"])
    return net.to(manual.params[0]["weight"].dtype)


def main(steps=20, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(64, 784, generator=g, dtype=dtype), torch.randint(0, 10, (64,), generator=g)
    times = {}

    def timed(name, f):
        start = time.perf_counter()
        f()
        times[name] = time.perf_counter() - start

    @torch.no_grad()
    def manual_alone():
        m = Wide(dtype)
        for _ in range(steps):
            tr = m.step(x, t)
            for p, q in zip(m.params, tr["layers"]):
                p["weight"] -= 0.01 * q["grad_weight"]
                p["bias"] -= 0.01 * q["grad_bias"]

    def reference_alone():
        net = reference(Wide(dtype))
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), t).backward()
            opt.step()

    def check(tolerance):
        def f():
            m = Wide(dtype)
            assert_backprop_close(m, reference(m), x, t, loss="cross_entropy", optimizer=0.01, steps=steps,
                                  dtype=dtype, tolerance=tolerance)
        return f

    fns = (("manual", manual_alone), ("reference", reference_alone), ("check", check(None)),
           ("check torch rule", check("torch")))
    for _, f in fns:  # warm-up: imports (torch.optim pulls in torch._dynamo) and first-call costs
        f()
    for name, f in fns:
        timed(name, f)
    sides = times["manual"] + times["reference"]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"user path, {'-'.join(map(str, SIZES))} ReLU, batch 64, {str(dtype)[6:]}, {steps} steps; load {load}")
    print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    print(f"  check / (manual + reference): {times['check'] / sides:.2f}; torch rule: "
          f"{times['check torch rule'] / sides:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20, getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32)
