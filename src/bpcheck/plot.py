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
    import tempfile

    from bpcheck.compare.io.writer import PARTIAL, OutputError, replace_atomically

    path = check_image_path(path, force)
    fig = plot_report(df)
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
