"""Plots of a report: for each layer, the max difference against the step.

``plot_report(df)`` returns a matplotlib Figure (Agg canvas, no pyplot, no display):
one row of axes per run (case, mode, device, dtype, seed), one axes per layer
(layer 0: loss and output), and in each axes

- one line per quantity: ``max_abs_diff`` against ``step`` on a log y scale (for a
  recurrent layer, the max over time steps). Exact zeros cannot sit on a log axis:
  they are drawn at a floor a decade below the smallest value shown, named in the
  y label;
- non-finite differences (a diverged run's NaN and Inf) and differences above
  ``CEILING`` (1e100) are drawn at a ceiling a decade above the largest other value
  shown (at most ``CEILING``), named in the y label: a log axis cannot hold them, and
  matplotlib's tick formatter overflows on limits near the float range;
- the tolerance: a dashed line at ``atol``. A row passes when every element has
  ``|m - r| <= atol + rtol * |r|``, so the rtol term can lift a row's allowance
  above this line; the verdict itself is drawn too, as red crosses on failed rows.

``save_plot(df, path, force)`` checks the path first (UsageError: nothing written).
"""
import os

import numpy as np

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.io.writer import check_output_path

RUN = ["case", "mode", "device", "dtype", "seed"]
CEILING = 1e100


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


def _title(run, several):
    case, mode, device, dtype, seed = run
    return f"{case} ({mode}, {device}, {dtype})" if several else case


def plot_report(df):
    """The Figure for report ``df`` (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = list(df.groupby(RUN, sort=False))
    panels = []  # (row, column, run, layer, rows)
    for r, (run, part) in enumerate(runs):
        for c, layer in enumerate(sorted(part["layer"].unique())):
            panels.append((r, c, run, int(layer), part[part["layer"] == layer]))
    ncols = max(c for _, c, *_ in panels) + 1
    fig = Figure(figsize=(4.8 * ncols, 3.4 * len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    several = len(runs) > 1
    for r, c, run, layer, part in panels:
        ax = fig.add_subplot(len(runs), ncols, r * ncols + c + 1)
        _panel(ax, part, layer, _title(run, several))
    return fig


def _panel(ax, part, layer, title):
    g = part.groupby(["quantity", "step"], sort=False)
    diff = g["max_abs_diff"].max()  # max over time steps, where there are any
    passed = g["passed"].all()
    shown = diff.to_numpy(dtype=float)
    ordinary = (shown > 0) & (shown <= CEILING)  # (False for NaN and Inf)
    positive = shown[ordinary]
    atol, rtol = float(part["atol"].iloc[0]), float(part["rtol"].iloc[0])
    floor = 10 ** np.floor(np.log10(min(positive.min() if positive.size else atol, atol))) / 10
    top = max(positive.max() if positive.size else atol, atol)
    ceiling = min(10 ** (np.floor(np.log10(top)) + 1), CEILING)
    high = not np.all(ordinary | (shown == 0))

    def drawn(values):  # zeros at the floor, NaN, Inf and the huge at the ceiling
        values = np.asarray(values, dtype=float)
        return np.where(np.isfinite(values) & (values <= CEILING), np.maximum(values, floor), ceiling)

    many = part["step"].nunique() > 50
    for q in dict.fromkeys(part["quantity"]):
        d = diff.loc[q]
        ax.plot(d.index.to_numpy(), drawn(d.to_numpy(dtype=float)), label=q, marker=None if many else ".")
    ax.axhline(atol, color="black", linestyle="--", linewidth=1, label=f"atol {atol:g} (+ rtol {rtol:g}·|r|)")
    bad = ~passed
    if bad.any():
        steps = bad[bad].index.get_level_values("step").to_numpy()
        ax.plot(steps, drawn(diff[bad].to_numpy(dtype=float)), linestyle="none", marker="x",
                color="red", markersize=7, label="failed")
    ax.set_yscale("log")
    ax.set_title(f"{title}: " + ("loss and output" if layer == 0 else f"layer {layer}"), fontsize=10)
    ax.set_xlabel("step")
    above = f", NaN/Inf/>{CEILING:.0e} at {ceiling:.0e}" if high else ""
    ax.set_ylabel(f"max |manual - autograd|  (0 at {floor:.0e}{above})", fontsize=8)
    ax.legend(fontsize=7, loc="best")


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
