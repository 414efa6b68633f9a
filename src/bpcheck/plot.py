"""Plots of a report: for each layer, each quantity's margin against the step.

``plot_report(df)`` returns a matplotlib Figure (Agg canvas, no pyplot, no display): one
subfigure per run (case, mode, device, dtype, seed), its title the run's verdict (PASS, or
FAIL with the first failing row in report order, the one ``bpcheck report`` names: step,
layer, quantity, margin and |m - r|), and in it one
axes per layer (layer 0: loss and output; a named site's panel is titled by the site),
at most ``COLUMNS`` to a row. Each axes is titled PASS or FAIL and shows

- y = ``margin`` = max |m - r| / (atol + rtol |r|), on a log scale, one line per
  quantity (for a recurrent layer, the max over time steps). The margin is the
  verdict in units of the row's own allowance, so the tolerance is one line at
  margin 1 in every panel, whatever atol and rtol each row got (the yardstick gives
  each step and quantity its own atol): a row passes exactly when it is at or below
  it and both sides are finite. Plotting |m - r| against one dashed atol would
  draw passing rows above the line and failing rows below it.
- failing quantities each in their own strong colour and marker, a marker on each
  failed step, named in the legend with their count of failed steps; the panel's
  first failure is annotated with its step, margin and |m - r|. In a failing panel
  the quantities that pass are thin grey lines, named in one legend entry.
- exact zeros (margin 0: m == r) cannot sit on a log axis. They are not drawn as
  the line dropping to a floor (a "barcode" on a clean run) but as a rug of ticks in
  a grey strip at the bottom, one row per quantity, and counted in its legend entry;
  the quantity's line joins its non-zero steps.
- non-finite margins (NaN or Inf on a side, a shape mismatch) and margins above
  ``CEILING`` (1e100; matplotlib's tick formatter overflows on limits near the float
  range) are drawn as the quantity's marker in a strip at the top, "NaN/Inf".
- the legend sits outside the axes, at its right, so it never covers the line.

``save_plot(df, path, force)`` checks the path first (UsageError: nothing written).
"""
import os

import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.io.writer import check_output_path

RUN = ["case", "mode", "device", "dtype", "seed"]
CEILING = 1e100
COLUMNS = 4  # panels per row of a run's grid
PASSING = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
FAILING = ["red", "darkviolet", "darkorange", "magenta", "saddlebrown", "crimson", "goldenrod", "black"]
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]
ZERO_ROW = 0.035  # height of one quantity's row of the zero rug, in axes fraction
FLOOR = 30  # margins below 1e-30 (nothing but noise) fall below the axes
TOP = 0.93  # axes fraction above which the NaN/Inf strip lies


def image_formats():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return FigureCanvasAgg(Figure()).get_supported_filetypes()


def check_image_path(path, force=False):
    """Refuse, before any work, a plot path that cannot or should not be written."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = image_formats()
    if ext not in formats:
        known = ", ".join(sorted(formats))
        raise UsageError(f"cannot write plot {path}: unknown image type {ext!r} (use one of {known})")
    check_output_path(path, force, what="plot ")
    return path


def failing_style(k):
    """(colour, marker) of the k-th failing quantity of a panel: distinct pairs for k < 64."""
    return FAILING[k % len(FAILING)], MARKERS[(k + k // len(FAILING)) % len(MARKERS)]


def passing_style(k):
    """(colour, linestyle) of the k-th quantity of a passing panel: distinct pairs for k < 27."""
    return PASSING[k % len(PASSING)], ("-", ":", "-.")[k // len(PASSING) % 3]


def verdict(passed):
    return "PASS" if passed else "FAIL"


def panel_name(layer, site):
    """Layer 0 holds loss and output; a named site (fc2, tap:bnvar) names its panel."""
    if layer == 0:
        return "loss and output"
    site = site if isinstance(site, str) else ""
    return f"layer {layer}" if site in ("", f"layer{layer}") else f"{site} (layer {layer})"


def run_title(run, part, first):
    """The run's headline: its name and verdict, and for a failure where and by how much."""
    case, mode, device, dtype, seed = run
    seed = "default seed" if int(seed) < 0 else f"seed {seed}"  # -1: the case's own
    head = f"{case} ({mode}, {device}, {dtype}, {seed}): "
    if first is None:
        return head + f"PASS, {len(part)} rows, every margin <= 1"
    failed = int((~part["passed"].astype(bool)).sum())
    return head + (f"FAIL, {failed} of {len(part)} rows; first failure: step {int(first['step'])}, "
                   f"{panel_name(int(first['layer']), first['site'])}, {first['quantity']}, "
                   f"margin {first['margin']:.3g}, |m - r| {first['max_abs_diff']:.3g}")


def plot_report(df):
    """The Figure for report ``df`` (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bpcheck.compare.diagnosis.summary import first_failure

    runs = list(df.groupby(RUN, sort=False))
    layers = [sorted(part["layer"].unique()) for _, part in runs]
    ncols = min(max(len(ls) for ls in layers), COLUMNS)
    nrows = [-(-len(ls) // ncols) for ls in layers]
    fig = Figure(figsize=(6.6 * ncols, 3.6 * sum(nrows) + 0.4 * len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    subs = fig.subfigures(len(runs), 1, height_ratios=nrows, squeeze=False)[:, 0]
    for sub, (run, part), ls, rows in zip(subs, runs, layers, nrows):
        first = first_failure(part)  # in the report's row order, as the summary names it
        sub.suptitle(run_title(run, part, first), fontsize=11, color="black" if first is None else "red",
                     ha="left", x=0.01)
        for i, layer in enumerate(ls):
            here = part[part["layer"] == layer]
            origin = first is not None and int(first["layer"]) == int(layer)
            _panel(sub.add_subplot(rows, ncols, i + 1), here, panel_name(int(layer), here["site"].iloc[0]), origin)
    return fig


def _panel(ax, part, name, origin):
    """One layer's axes; ``origin``: the run's first failure is in this layer."""
    failed_rows = part[~part["passed"].astype(bool)]
    part = part.assign(margin=part["margin"].fillna(np.inf))  # NaN: no number (a side not finite)
    g = part.groupby(["quantity", "step"], sort=False)
    margin, absdiff, passed = g["margin"].max(), g["max_abs_diff"].max(), g["passed"].all()  # max over time
    quantities = list(dict.fromkeys(part["quantity"]))
    failing = [q for q in quantities if not passed.loc[q].all()]
    zeros = [q for q in quantities if (margin.loc[q] == 0).any()]
    band, rug = _frame(ax, part["step"], margin.to_numpy(dtype=float), len(zeros))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, zorder=4, label="tolerance: margin 1 (above fails)")
    many = part["step"].nunique() > 40
    ok = [q for q in quantities if q not in failing]
    for q in quantities:
        m, bad = margin.loc[q], ~passed.loc[q].to_numpy()
        x, y = m.index.to_numpy(), m.to_numpy(dtype=float)
        line = np.isfinite(y) & (y > 0) & (y <= CEILING)
        nz = f" ({int((y == 0).sum())} exact 0)" if (y == 0).any() else ""
        if q in failing:
            k = failing.index(q)
            colour, marker = failing_style(k)
            st = dict(color=colour, linewidth=1.6, zorder=3 + (len(failing) - k) / len(failing))  # first on top
            ax.plot(x[line], y[line], label=f"{q}: FAIL at {bad.sum()} of {len(y)} steps{nz}", marker=marker,
                    markersize=5 if many else 6, markevery=[int(i) for i in np.flatnonzero(bad[line])], **st)
        elif failing:  # a passing quantity beside failing ones: grey, one legend entry for all
            marker, st = "x", dict(color="0.6", linewidth=0.9, zorder=2)
            ax.plot(x[line], y[line], label="passing: " + ", ".join(ok) if q == ok[0] else "_nolegend_", **st)
        else:
            colour, style = passing_style(quantities.index(q))
            marker, st = "x", dict(color=colour, linestyle=style, linewidth=1.2, zorder=2)
            ax.plot(x[line], y[line], label=q + nz, marker=None if many else ".", markersize=5, **st)
        z = y == 0
        if z.any():  # a rug row in the strip at the bottom, not a drop to a floor
            at = band - ZERO_ROW * (zeros.index(q) + 0.5)
            ax.plot(x[z], np.full(z.sum(), at), transform=rug, linestyle="none", marker="|", markersize=4.5,
                    color=st["color"], label="_nolegend_", gid=f"zeros:{q}")
        out = ~np.isfinite(y) | (y > CEILING)
        if out.any():  # NaN, Inf, huge: the quantity's marker in the strip at the top
            ax.plot(x[out], np.full(out.sum(), (TOP + 1) / 2), transform=rug, linestyle="none", marker=marker,
                    markersize=6, color=st["color"], label="_nolegend_", gid=f"high:{q}", zorder=st["zorder"])
    if not (margin > 0).any():
        ax.text(0.5, 0.5, f"every row exact: m == r at all {part['step'].nunique()} steps", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="0.3")
    if failing:
        row = failed_rows.iloc[0]  # the panel's first failure, in row order
        step, q = int(row["step"]), row["quantity"]
        _annotate(ax, step, q, margin.loc[(q, step)], absdiff.loc[(q, step)], origin)
    ax.set_title(f"{verdict(not failing)}: {name}", fontsize=10, color="red" if failing else "darkgreen",
                 fontweight="bold" if failing else "normal")
    ax.set_xlabel("step")
    ax.set_ylabel("margin = max |m - r| / (atol + rtol |r|)", fontsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _frame(ax, steps, values, zero_rows):
    """Scales, limits and strips of one axes. The y range, in decades: the data and the
    line at 1, a decade of room above (two with the NaN strip), the strip of zero rugs
    below; margins under 1e-FLOOR fall off the bottom. Returns the strip's height (axes
    fraction) and the transform of the strips (x in steps, y in axes fraction)."""
    shown = values[np.isfinite(values) & (values > 0) & (values <= CEILING)]
    high = not np.all(np.isfinite(values) & (values <= CEILING))
    lo = max(np.floor(np.log10(min(shown.min(), 1.0))) if shown.size else -1.0, -FLOOR)
    hi = (np.ceil(np.log10(max(shown.max(), 1.0))) if shown.size else 0.0) + (2 if high else 1)
    band = ZERO_ROW * zero_rows + (0.02 if zero_rows else 0.0)
    lo -= (hi - lo) * band / (1 - band) + 0.3
    ax.set_yscale("log")
    ax.set_ylim(10 ** lo, 10 ** hi)
    first, last = int(steps.min()), int(steps.max())
    ax.set_xlim(first - 0.5, last + 0.5)
    if last - first < 12:
        ax.set_xticks(range(first, last + 1))
    if zero_rows:
        ax.fill_between([0, 1], 0, band, transform=ax.transAxes, color="0.92", zorder=0, linewidth=0)
        ax.text(0.995, band, "exact 0 (m == r)", transform=ax.transAxes, ha="right", va="bottom", fontsize=6,
                color="0.35")
    if high:
        ax.fill_between([0, 1], TOP, 1, transform=ax.transAxes, color="mistyrose", zorder=0, linewidth=0)
        ax.text(0.995, 0.995, f"NaN/Inf or > {CEILING:.0e}", transform=ax.transAxes, ha="right", va="top",
                fontsize=6, color="darkred")
    return band, ax.get_xaxis_transform()


def _annotate(ax, step, q, m, d, origin):
    """Mark the panel's first failure: step, quantity, margin and |m - r|; the text lies
    towards the middle of the axes, away from the point."""
    m, d = float(m), float(d)
    finite = np.isfinite(m) and m <= CEILING
    lo, hi = np.log10(ax.get_ylim())
    height = (np.log10(m) - lo) / (hi - lo) if finite else (TOP + 1) / 2
    left, right = ax.get_xlim()
    east = step > (left + right) / 2
    what = "first failure of the run" if origin else "first failure here"
    ax.annotate(f"{what}: step {step}, {q}\nmargin {m:.3g}, |m - r| {d:.3g}", (step, height),
                xycoords=ax.get_xaxis_transform(), xytext=(-14 if east else 14, -26 if height > 0.5 else 26),
                textcoords="offset points", ha="right" if east else "left", va="top" if height > 0.5 else "bottom",
                fontsize=7, zorder=6, arrowprops=dict(arrowstyle="->", color="black", linewidth=0.8),
                bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="0.6", alpha=0.9))


def save_plot(df, path, force=False):
    """Draw ``df`` and write the image to ``path`` (its extension picks the format),
    through a temporary file in its folder renamed into place (compare.io.writer):
    the image appears whole or not at all."""
    path = check_image_path(path, force)
    return write_figure(plot_report(df), path, force)


def write_figure(fig, path, force):
    """Write ``fig`` to the checked ``path`` through a temporary file renamed into place."""
    import tempfile

    from bpcheck.compare.io.writer import PARTIAL, OutputError, replace_atomically

    real = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=os.path.basename(real) + ".", suffix=PARTIAL)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, dpi=100, format=os.path.splitext(path)[1].lstrip(".").lower())
        os.chmod(tmp, 0o666 & ~_umask())
        replace_atomically(tmp, real, force)
    except OSError as e:  # what the checks cannot see (a full disk, a read-only mount)
        if os.path.exists(tmp):
            os.remove(tmp)
        why = e.strerror or e
        raise OutputError(e.errno, f"cannot write plot {path}: {why}; the previous file is untouched") from None
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return fig


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plot_sweep(grid):
    """The grid view of a sweep (bpcheck.sweeps.summary.grid): one row per cell, one column
    per layer and quantity, each square coloured by log10 of the cell's worst margin there
    (max_abs_diff / atol): green below 0 (within atol), red above; grey where the cell has
    no such rows. Each row's label starts with its status (PASS, FAIL, ERROR); the
    verdict is the status, the colour only a scale (a row of large values passes above
    atol through the rtol term)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    values = grid.to_numpy(dtype=float)
    logs = np.log10(np.where(values > 0, values, np.nan))
    finite = logs[np.isfinite(logs)]
    low = min(finite.min() if finite.size else -1.0, -1.0) - 1  # exact zeros sit a decade below the least
    high = max(finite.max() if finite.size else 1.0, 1.0)
    logs = np.where(values == 0, low, logs)
    logs = np.where(np.isinf(values), high, logs)
    rows, cols = grid.shape
    label = max((len(str(i)) for i in grid.index), default=0) + 6 if rows <= 80 else 0
    fig = Figure(figsize=(min(3 + 0.45 * cols + 0.075 * label, 60), min(1.5 + 0.28 * rows, 200)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(logs), aspect="auto", cmap=cmap, interpolation="nearest",
                   norm=TwoSlopeNorm(vmin=low, vcenter=0.0, vmax=max(high, 1e-9)))
    fig.colorbar(im, ax=ax, label=f"log10(max |m - r| / atol)  (0 drawn at {low:.0f}; grey: no rows)")
    ax.set_xticks(range(cols), list(grid.columns), rotation=60, ha="right", fontsize=8)
    if rows <= 80:
        status = grid.attrs.get("status") or [""] * rows
        ax.set_yticks(range(rows), [f"{s:<5} {label}" for s, label in zip(status, grid.index)], fontsize=8,
                      family="monospace")
        for tick, s in zip(ax.get_yticklabels(), status):
            tick.set_color("red" if s in ("FAIL", "ERROR") else "black")
    ax.set_xlabel("layer and quantity")
    ax.set_title(f"sweep: {rows} cells", fontsize=10)
    return fig


def save_sweep_plot(grid, path, force=False):
    """Draw ``plot_sweep(grid)`` to ``path`` (checked first: UsageError, nothing written;
    then written whole or not at all, as save_plot writes)."""
    path = check_image_path(path, force)
    return write_figure(plot_sweep(grid), path, force)
