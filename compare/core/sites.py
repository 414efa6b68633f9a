"""Named sites on the manual side, and the rule that nothing is dropped silently.

A manual side may name its quantities by **site** instead of by layer number:

    params   {site: {name: tensor}}                    (updated in place)
    step(x, t) -> {"loss", "output", "sites": {site: {quantity: tensor}}}
    state()  {site: {param: {state name: tensor}}}     (optional; torch's state names)
    buffers  {site: {name: tensor}}                    (optional; read after update)

Sites are the reference's (bpcheck.reference.side): module paths and ``tap:<name>``.
``ManualSide`` turns such a side, or a side in the list form (``params`` and
``trace["layers"]`` as lists from the input up), into the runner's numbered form: site
k of the reference is layer k. numpy arrays are taken as tensors without a copy (a
manual side written in numpy gets numpy inputs); every tensor must have the run's
floating dtype and device, else UsageError names it.

``check_keys`` compares what the two sides report at the first step. A manual quantity
the reference has no counterpart for, and a reference parameter, optimizer state,
buffer or tap the manual side does not report, is a UsageError naming them, or, with
``unmatched="row"``, an explicit row (note ``unmatched:...``, no numbers, counted apart
in the summary). The reference's ``delta``, ``error_prev``, ``value`` and ``grad_*`` at
module sites are offered, not required: the manual side reports what it has.
"""
import numpy as np
import pandas as pd
import torch

from .errors import UsageError
from .schema import COLUMNS

UNMATCHED = ("error", "row")
OFFERED = ("delta", "error_prev", "value", "grad_")


def site_names(reference):
    """The reference's site names in layer order (``layer1``, ``layer2``, ... where it has none)."""
    names = getattr(reference, "sites", None)
    return list(names) if names is not None else [f"layer{i}" for i in range(1, len(reference.params) + 1)]


def unmatched_rows(one_sided, step, meta):
    """One explicit row per one-sided quantity (``unmatched="row"``): no numbers, passed,
    note ``unmatched:manual only`` or ``unmatched:reference only``."""
    rows = []
    for keys, side in zip(one_sided, ("manual", "reference")):
        for layer, time, q in keys:
            row = {c: meta[c] for c in COLUMNS if c in meta}
            sites = meta["sites"]
            row.update(step=int(step), layer=layer, time=time, quantity=q, index="", passed=True,
                       site=sites[layer - 1] if 0 < layer <= len(sites) else "",
                       note=f"unmatched:{side} only", max_abs_diff=np.nan, max_rel_diff=np.nan,
                       manual_norm=np.nan, reference_norm=np.nan)
            rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["time"] = df["time"].astype("Int64")
    return df


def label(sites, key):
    """``site.quantity[time]`` for messages: fc2.grad_weight, tap:bnvar.delta[3], loss."""
    layer, time, q = key
    site = sites[layer - 1] if 0 < layer <= len(sites) else None
    name = q if site is None else f"{site}.{q}"
    return name if time is None else f"{name}[{time}]"


def required(sites, key):
    """Whether the manual side must report this reference quantity."""
    layer, _, q = key
    site = sites[layer - 1] if 0 < layer <= len(sites) else ""
    if site.startswith("tap:"):
        return q == "delta"
    return not q.startswith(OFFERED) and not q.startswith("_")


def one_sided(manual_keys, reference_keys, sites):
    """(manual keys the reference lacks, required reference keys the manual lacks)."""
    m, r = set(manual_keys), set(reference_keys)
    only_m = sorted((k for k in m - r if not k[2].startswith("_")), key=str)
    only_r = sorted((k for k in r - m if required(sites, k)), key=str)
    return only_m, only_r


def near(manual_only, reference_keys, sites):
    """Labels of the reference's keys at the same site as a one-sided manual key and of the
    same quantity but for its ``.k`` suffix or time: what the user probably meant."""
    wanted = {(layer, q.split(".")[0]) for layer, _, q in manual_only}
    alike = {k for k in reference_keys if (k[0], k[2].split(".")[0]) in wanted} - set(manual_only)
    return [label(sites, k) for k in sorted(alike, key=lambda k: (k[0], k[2], k[1] or 0))]


def check_keys(manual_keys, reference_keys, sites, unmatched="error"):
    """Raise UsageError for one-sided quantities, unless ``unmatched == "row"``; return them."""
    only_m, only_r = one_sided(manual_keys, reference_keys, sites)
    if (only_m or only_r) and unmatched != "row":
        parts = []
        if only_m:
            alike = near(only_m, reference_keys, sites)
            parts.append(f"the manual side reports {', '.join(label(sites, k) for k in only_m[:8])}"
                         f"{' ...' if len(only_m) > 8 else ''}, which the reference has no counterpart for"
                         + (f" (it has {', '.join(alike[:8])}{' ...' if len(alike) > 8 else ''}: a tuple's k-th "
                            "tensor is quantity.k, a module called several times gives (quantity, time))"
                            if alike else ""))
        if only_r:
            parts.append(f"the reference has {', '.join(label(sites, k) for k in only_r[:8])}"
                         f"{' ...' if len(only_r) > 8 else ''}, which the manual side does not report")
        raise UsageError("; ".join(parts) + " (reference sites: " + ", ".join(sites) +
                         "; pass unmatched='row' to list them as rows instead)")
    return only_m, only_r


class ManualSide:
    """A manual side in the runner's numbered form (see the module docstring).

    ``sites``: the reference's site names, in its order. ``update``: the update to
    apply when the side has no ``update`` of its own (bpcheck's default), or None."""

    def __init__(self, side, sites, dtype, device, update=None):
        self.side, self.sites, self.dtype, self.device, self._update = side, list(sites), dtype, device, update
        self.named = isinstance(side.params, dict)
        self.numpy = any(isinstance(v, np.ndarray) for p in self._raw_params() for v in p.values())
        if self.named:
            unknown = sorted(set(side.params) - set(self.sites))
            if unknown:
                raise UsageError(f"the manual side's params name sites {', '.join(unknown)}, which the reference "
                                 f"does not have (its sites: {', '.join(self.sites)})")
        elif len(side.params) != len(self.sites):
            raise UsageError(f"manual side has {len(side.params)} layers, reference side has {len(self.sites)}")
        self.params  # checks every parameter's dtype and device now

    @property
    def params(self):
        """Parameters per site, read afresh (a side may rebind them), as tensors of the run."""
        return [{n: self.tensor(v, f"{site}.{n}") for n, v in p.items()}
                for site, p in zip(self.sites, self._per_site(self.side.params))]

    def _raw_params(self):
        p = self.side.params
        return list(p.values()) if isinstance(p, dict) else list(p)

    def _per_site(self, by_site):
        """A site-keyed dict (or the list form) -> a list aligned with ``self.sites``."""
        if by_site is None:
            return None
        if not self.named:
            return list(by_site)
        unknown = sorted(set(by_site) - set(self.sites))
        if unknown:
            raise UsageError(f"the manual side reports sites {', '.join(unknown)}, which the reference does not "
                             f"have (its sites: {', '.join(self.sites)})")
        return [by_site.get(s, {}) for s in self.sites]

    def tensor(self, v, name):
        """A manual value as a tensor of the run (numpy without a copy); UsageError otherwise."""
        if isinstance(v, np.ndarray) or isinstance(v, np.generic):
            v = torch.from_numpy(np.asarray(v))
        elif isinstance(v, float) and name == "loss":
            v = torch.tensor(v, dtype=self.dtype, device=self.device)
        if not isinstance(v, torch.Tensor):
            raise UsageError(f"the manual side's {name} is a {type(v).__name__}, not a tensor or numpy array")
        if v.is_floating_point() and v.dtype != self.dtype or v.device.type != self.device.type:
            raise UsageError(f"the manual side's {name} is {str(v.dtype).replace('torch.', '')} on {v.device}, "
                             f"but the run is {str(self.dtype).replace('torch.', '')} on {self.device}")
        return v

    def step(self, x, t):
        if self.numpy:
            x, t = x.cpu().numpy(), t.cpu().numpy()
        raw = self.side.step(x, t)
        if not isinstance(raw, dict) or "loss" not in raw or "output" not in raw:
            raise UsageError("the manual side's step(x, t) must return a dict with 'loss', 'output' and "
                             f"'layers' (a list) or 'sites' (a dict); got {_shape_of(raw)}")
        if self.named and not isinstance(raw.get("sites"), dict):
            raise UsageError(f"the manual side names its params by site, so its trace needs 'sites': "
                             f"{{site: {{quantity: tensor}}}}; got {_shape_of(raw)}")
        if not self.named and not isinstance(raw.get("layers"), list):
            raise UsageError(f"the manual side's trace needs 'layers', a list of dicts, one per layer; got {_shape_of(raw)}")
        per_site = self._per_site(raw["sites"] if self.named else raw["layers"])
        if not self.named and len(per_site) != len(self.sites):
            raise UsageError(f"the manual side's trace has {len(per_site)} layers, the reference {len(self.sites)}")
        layers = []
        for site, q in zip(self.sites, per_site):
            if not isinstance(q, dict):
                raise UsageError(f"the manual side's trace for {site} is a {type(q).__name__}, not a dict")
            layers.append({k: v if _side_info(k) else self.tensor(v, f"{site}.{_name(k)}") for k, v in q.items()})
        trace = {k: v for k, v in raw.items() if k not in ("sites", "layers")}
        trace.update(loss=self.tensor(raw["loss"], "loss"), output=self.tensor(raw["output"], "output"),
                     layers=layers, _raw=raw)
        if raw.get("pre") is not None:
            trace["pre"] = self._pre(raw["pre"])
        return trace

    def _pre(self, pre):
        """The trace's ``pre`` (pre-activations entering a kink at 0, compare.engines.kinks) as
        the runner's list: per site, the z the site outputs, or None. Named form: a dict
        ``{site: z}``; list form: one entry (or None) per layer."""
        if self.named:
            if not isinstance(pre, dict):
                raise UsageError(f"the manual side names its sites, so its trace's 'pre' must be {{site: z}}, "
                                 f"got {type(pre).__name__}")
            unknown = sorted(set(pre) - set(self.sites))
            if unknown:
                raise UsageError(f"the manual side's 'pre' names sites {', '.join(unknown)}, which the reference "
                                 f"does not have (its sites: {', '.join(self.sites)})")
            pre = [pre.get(s) for s in self.sites]
        elif not isinstance(pre, (list, tuple)) or len(pre) != len(self.sites):
            raise UsageError(f"the manual side's trace 'pre' must be a list of {len(self.sites)} entries "
                             f"(a z or None per layer)")
        return [None if z is None else self.tensor(z, f"{site}.pre") for site, z in zip(self.sites, pre)]

    def update(self, trace):
        if self._update is not None:
            self._update(self.params, trace)
        else:
            self.side.update(trace["_raw"])

    def state(self):
        applied = getattr(self._update, "optimizer", None)  # bpcheck's update: its optimizer's state
        if applied is not None:
            st = applied.state()
        else:
            st = self._per_site(self.side.state() if hasattr(self.side, "state") else None)
        if st is None:
            return None
        return [{n: {k: self.tensor(v, f"{site}.{n}.{k}") for k, v in s.items()} if isinstance(s, dict)
                 else self.tensor(s, f"{site}.{n}") for n, s in p.items()} for site, p in zip(self.sites, st)]

    @property
    def buffers(self):
        b = self._per_site(getattr(self.side, "buffers", None))
        if b is None:
            return []
        return [{n: self.tensor(v, f"{site}.{n}") for n, v in p.items()} for site, p in zip(self.sites, b)]

    def __getattr__(self, name):  # trace_line, layer_backward: where the side has them
        return getattr(self.side, name)


def _side_info(k):
    return _name(k).startswith("_")


def _name(k):
    return k[0] if isinstance(k, tuple) else k


def _shape_of(v):
    if isinstance(v, dict):
        return "a dict with keys " + ", ".join(map(str, v))
    return f"a {type(v).__name__}"
