"""Seed 002: linear backprop by the chain rule, on scalars.

    x = 2w + 3b,   y = 2b + 1,   z = x * y,   delta_z = z - target

The seed moves w and/or b so that z moves by delta_z, to first order:
``delta_p = share * delta_z / factor_p`` with ``factor_p = dz/dp``, where
``share`` charges delta_z in equal parts to the parameters that move. The
factor is kept from the first step ("fixed", the chord method) or recomputed
each step ("new", Newton's method). The "loss" of this system is delta_z, so
that every gradient the runner compares is a derivative of z.
"""
import torch

RUNS = {  # (vary, recompute) -> the seed's heading for that run
    ("b", False): "single variable: b -----",
    ("b", True): "single variable new: b -----",
    ("w", False): "single variable: w -----",
    ("w", True): "single variable new: w -----",
    ("wb", False): "double variable: w, b -----",
    ("wb", True): "double variable new: w, b -----",
}


class ChainRule:
    def __init__(self, w, b, vary="b", recompute=False):
        self.params = [{"w": w, "b": b}]
        self.vary, self.recompute = vary, recompute  # vary: "b", "w" or "wb"
        self.share = 1.0 / len(vary)  # the seed charges half of delta_z to each of w and b
        self.factor = {}

    def step(self, inputs, target):  # the graph has no input: ``inputs`` is an empty placeholder
        w, b = self.params[0]["w"], self.params[0]["b"]
        x = 2 * w + 3 * b  # x = 2w + 3b
        y = 2 * b + 1  # y = 2b + 1
        z = x * y  # z = x y
        delta_z = z - target  # how far z is from the target: the "loss"
        dz_dw = 2 * y  # dz/dw = dz/dx * dx/dw = y * 2
        dz_db = 3 * y + 2 * x  # dz/db = dz/dx * dx/db + dz/dy * dy/db = y*3 + x*2 (two paths)
        layer = {"delta": torch.ones_like(z), "grad_w": dz_dw, "grad_b": dz_db}  # delta = d(delta_z)/dz = 1
        return {"loss": delta_z, "output": z, "layers": [layer], "w": w.clone(), "b": b.clone()}

    def update(self, trace):
        p, g, applied = self.params[0], trace["layers"][0], {}
        for n in self.vary:
            if self.recompute or n not in self.factor:
                self.factor[n] = g[f"grad_{n}"].clone()  # factor_n = dz/dn, now or at the first step
            applied[n] = self.share * trace["loss"] / self.factor[n]  # delta_n = share * delta_z / factor_n
            p[n].sub_(applied[n])  # n -= delta_n
        trace["applied"] = applied  # for trace_line

    def state(self):
        return [dict(self.factor)] if self.factor else None

    def trace_line(self, step, trace, stopped):
        """The seed's table, 6 decimals: w, b, z, delta_z; then what the update did, or done and the finals."""
        lines = [RUNS[self.vary, self.recompute]] if step == 1 else []
        lines.append(f"w={float(trace['w']):.6f},b={float(trace['b']):.6f},z={float(trace['output']):.6f},"
                     f"delta_z={float(trace['loss']):.6f}")
        order = [n for n in "bw" if n in self.vary]  # the seed prints b before w
        if stopped:
            lines.append("done!")
            lines += [f"final {n}={float(self.params[0][n]):.6f}" for n in order]
        else:
            parts = [f"factor_{n}={float(self.factor[n]):.6f}" for n in order] if self.recompute else []
            parts += [f"delta_{n}={float(trace['applied'][n]):.6f}" for n in order]
            lines.append(", ".join(parts))
        return "\n".join(lines)
