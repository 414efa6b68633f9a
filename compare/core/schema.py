"""The one CSV schema: the report's columns, in order.

One row per (case, step, layer, time, quantity):

- step: 1 is the first forward/backward; a parameter row at step t holds the value
  after the t-th update.
- layer: 1 is the weight layer nearest the input; 0 holds network-wide quantities
  (loss, output).
- site: the layer's name (compare.core.sites): a module path (``fc2``), a tap
  (``tap:bnvar``), ``(root)``, or ``layer<N>`` for the seed cases; empty for layer 0.
  In a run over named sites, ``layer`` numbers the sites in the order forward first
  reaches them.
- time: the time step for recurrent layers (or the call index of a site called
  several times per forward, from 1), empty otherwise.
- quantity: delta (dL/d pre-activation), error_prev (dL/d layer input),
  grad_<param>, <param> (after the update), optimizer_state[_<param>] (the seeds'
  RMSprop), <param>.<state> (optimizer state under torch's names: weight.exp_avg),
  <buffer> (running_mean, ...), value (a site's output), loss, output. A tuple's
  k-th tensor is ``delta.k`` / ``error_prev.k`` / ``value.k``.
- max_abs_diff, max_rel_diff: max |m - r| and max |m - r| / |r| (over r != 0).
- index: position of the largest |m - r| in the manual layout, as "i,j".
- manual_norm, reference_norm: 2-norms of each side's tensor.
- margin: max |m - r| / (atol + rtol |r|) over the elements: the worst element in units
  of its allowance (0 where m == r); a row passes when margin <= 1 (compare.core.tolerances).
- atol, rtol: the allowance ``atol + rtol |r|`` of every element. Under the default
  ``yardstick`` rule atol varies by row: K times the rounding the reference's probe
  measured for that step and quantity; rtol is a few units of roundoff.
- rule: the rule that decided the row: ``yardstick`` (default), ``torch``
  (torch.testing's defaults) or ``user`` (rtol and atol given).
- passed: every element has |m - r| <= atol + rtol |r|, and both sides are finite.
- note: why a row needs attention beyond the numbers (e.g. non-finite values).
- settings: the id of the numerics settings in force (compare/diagnosis/settings.py); the
  records are in ``<csv>.settings.json``. A row comparing two configurations
  carries both ids, "left/right".
- compare: what was compared with what, "left/right". ``m/r``: manual against
  reference (every ``bpcheck run`` row). ``bpcheck devices`` names each side
  ``<config>.m`` or ``<config>.r`` with config a, b, t (the float64 CPU ground
  truth) or a#2, a#3... (repeats), e.g. ``a.m/b.m``, ``b.r/t.r``. In such rows
  manual_norm and reference_norm are the norms of the left and right values.
"""
COLUMNS = (
    "case", "mode", "device", "dtype", "seed", "step", "layer", "site", "time", "quantity",
    "max_abs_diff", "max_rel_diff", "margin", "index", "manual_norm", "reference_norm",
    "atol", "rtol", "rule", "passed", "note", "settings", "compare",
)
