"""The command line of sweeps: ``bpcheck sweep SPEC -o OUT_DIR``, and ``bpcheck report``
and ``bpcheck plot`` given an OUT_DIR. bpcheck.cli calls ``add_parser`` and dispatches
here; this module owns the options, the output and the exit codes:

0 every cell passed; 1 a cell failed, raised (ERROR) or was not finished (a worker died);
2 bad input (one line, nothing run or written); 130/143 interrupted (the finished cells
written, the summary printed).
"""
import os

from bpcheck.compare.core.errors import UsageError


def add_parser(sub):
    s = sub.add_parser("sweep", help="run a grid of runs (SPEC: TOML or YAML) into a Parquet dataset")
    s.add_argument("spec", help="the sweep's TOML (or YAML) file: [run] for every cell, [axes] to vary")
    s.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="the folder of the dataset (new, or with --resume)")
    s.add_argument("--resume", action="store_true", help="finish the sweep in OUT_DIR: run only the cells not finished")
    s.add_argument("--jobs", type=int, help="local pool: worker processes (default: the CPU count); --ray: CPUs of a local Ray")
    s.add_argument("--threads", type=int, help="torch threads per cell (default: CPUs / jobs, at least 1; --ray: 1)")
    s.add_argument("--ray", action="store_true", help="run cells as Ray tasks (pip install \"bpcheck[ray]\")")
    s.add_argument("--address", help="with --ray: join this cluster (auto, HOST:PORT, ray://HOST:PORT)")
    s.add_argument("--gpus-per-cell", type=float, default=1.0, help="with --ray: GPUs a CUDA cell asks for (default 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    return s


def cmd_sweep(args):
    from bpcheck.cli import say
    from bpcheck.compare.io.interrupt import Interrupted
    from bpcheck.sweeps.driver import sweep
    from bpcheck.sweeps.summary import exit_code, format_table

    if args.gpus_per_cell <= 0:
        raise UsageError(f"--gpus-per-cell must be positive, got {args.gpus_per_cell:g}")
    try:
        table = sweep(args.spec, args.out, jobs=args.jobs, ray=args.ray, address=args.address, resume=args.resume,
                      threads=args.threads, gpus_per_cell=args.gpus_per_cell, quiet=args.quiet)
    except Interrupted as e:
        table = e.report
        print(format_table(table))
        say(f"interrupted by {e.signame}; {_progress(table)} in {args.out}; "
            f"`bpcheck sweep {args.spec} -o {args.out} --resume` runs the rest")
        return e.exit_code
    a = table.attrs
    print(format_table(table))
    print(f"{a['ran']} cell(s) run in {a['seconds']:.1f} s on {a['executor']}"
          + (f", {a['skipped']} finished before" if a["skipped"] else "") + f"; dataset: {args.out}")
    if a["lost"]:
        say(f"a worker died: {len(a['lost'])} cell(s) in flight were not finished ({_progress(table)}); "
            f"`bpcheck sweep {args.spec} -o {args.out} --resume` runs them")
    return exit_code(table)


def _progress(table):
    n = int((table["status"] != "PENDING").sum())
    return f"{n} of {len(table)} cells finished"


def is_sweep_dir(path):
    from bpcheck.sweeps.dataset import is_sweep

    return is_sweep(os.fspath(path))


def load_summary(out):
    """The summary of OUT_DIR, rebuilt from its cell files (so it holds every cell finished
    even when the sweep was killed before writing summary.parquet)."""
    from bpcheck.sweeps import dataset, summary
    from bpcheck.sweeps.spec import Cell

    grid = dataset.read_grid(out)
    cells = [Cell(c["n"], c["cell"], c["params"], "") for c in grid["cells"]]
    return summary.table(dataset.records(out), cells)


def cmd_report(path):
    from bpcheck.sweeps.summary import exit_code, format_table

    table = load_summary(path)
    print(format_table(table))
    return exit_code(table)


def cmd_plot(path, output, force):
    from bpcheck.plot import check_image_path, save_sweep_plot
    from bpcheck.sweeps import dataset, summary

    check_image_path(output, force)
    grid = summary.grid(dataset.records(path))
    if grid.shape[1] == 0:
        raise UsageError(f"sweep {path} has no finished cell with rows to plot")
    save_sweep_plot(grid, output, force)
    print(f"plot: {output}")
    return 0
