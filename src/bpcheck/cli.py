"""The ``bpcheck`` command.

Exit codes: 0 every row passed; 1 a row failed; 2 bad input (one line on stderr,
nothing written); 3 the report could not be written (a full disk, an I/O error: one
line on stderr, the previous file untouched); 128 + signal when interrupted (130
SIGINT, 143 SIGTERM), after writing every finished step and printing the summary of
what ran. Reports appear atomically (compare/io/writer.py, docs/reliability.md).

``-o KEY=VALUE`` passes an option to the case's ``build`` (``-o hidden=8``,
``-o "sizes=(4, 8, 3)"``). VALUE is a Python literal, or a bare word taken as a string
(``-o loss=bce``); anything else (``-o "weights=[[1, 2]"``) is refused, naming the option. Options are checked by the same code as the Python API
(bpcheck.compare.core.checks), so both give the same message for the same bad input.
A case's options, with their defaults (from its build's signature) and meanings
(``Case.options``), are listed by ``bpcheck list``; ``bpcheck list CASE`` and ``bpcheck run
CASE --help`` show one case in full (bpcheck/cases/options.py). A value of the wrong kind
is refused naming the option, the value and the kind it takes.

Messages: every error and every interruption is one line on stderr (``say``); stdout holds
the summary only. A flag that would do nothing in the combination given (``--per-seed``
without ``--seeds``, ``--tf32`` off CUDA float32, ``--print-trace``/``--straightforward``
with ``--seeds``) is refused like any bad input. ``run`` and ``report`` print through one
function (bpcheck.report.print_report), so ``report`` prints what ``run`` printed.
"""
import argparse
import ast
import contextlib
import os
import re
import sys

import pandas as pd

from bpcheck.compare.diagnosis import settings
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.diagnosis.settings import numerics


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


class CaseHelp(argparse.Action):
    """``bpcheck run CASE --help``: run's help, then CASE's options (the case given before --help)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        name = getattr(namespace, "case", None)
        if name and name != "all":
            from bpcheck.cases import get_case
            from bpcheck.cases.options import describe

            print("\ncase " + describe(get_case(name), full=True))
        parser.exit()


class Once(argparse.Action):
    """Store a value; the same option again with another value is a conflict."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given", {})
        value = True if self.nargs == 0 else values
        if self.dest in seen and seen[self.dest] != value:
            raise UsageError(f"conflicting values for {option_string}: {seen[self.dest]!r} and {value!r}")
        seen[self.dest] = value
        setattr(namespace, self.dest, value)


def build_parser():
    p = Parser(prog="bpcheck", description="Cross-check hand-derived backprop against autograd.")
    p.add_argument("--version", action="version", version=f"bpcheck {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    ls = sub.add_parser("list", help="list the cases and their options (-o NAME=VALUE), or one case in full")
    ls.add_argument("case", nargs="?", help="a case name or FILE.py:NAME: its options, defaults and meanings in full")
    r = sub.add_parser("run", help="run a case (or all) and compare it with autograd", add_help=False,
                       epilog="A case's own options (-o NAME=VALUE): bpcheck run CASE --help, or bpcheck list CASE.")
    r.add_argument("-h", "--help", action=CaseHelp, help="show this help and, after a CASE, the case's options")
    r.add_argument("case", help="a case name from `bpcheck list`, all, or FILE.py:NAME (a Case in your file)")
    r.add_argument("--steps", action=Once, help="number of steps (default: the case's)")
    r.add_argument("--mode", action=Once, default="lockstep", help="lockstep (default) or free")
    r.add_argument("--device", action=Once, default="cpu", help="cpu or cuda")
    r.add_argument("--dtype", action=Once, default="float64", help="float64 (default), float32, float16 or bfloat16")
    r.add_argument("--csv", action=Once, help="write the report to this CSV file, chunk by chunk")
    r.add_argument("--force", action=Once, nargs=0, default=False, help="overwrite the existing file of --csv, --parquet or --plot")
    r.add_argument("--seed", action=Once, help="seed for the case's initial weights and data")
    r.add_argument("--tolerance", action=Once, default=None,
                   help="the rule by name: yardstick (default: measured rounding) or torch (torch.testing's table)")
    r.add_argument("--rtol", action=Once, help="relative tolerance (give --atol too)")
    r.add_argument("--atol", action=Once, help="absolute tolerance (give --rtol too)")
    r.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the case's build (repeatable); VALUE is a Python literal or a bare word (a string)")
    r.add_argument("--chunk", action=Once, default="2048", help="steps compared and written at a time (default 2048)")
    r.add_argument("--stop-on-nonfinite", action=Once, nargs=0, default=False,
                   help="end the run at the first step with a NaN or Inf (default: go on)")
    r.add_argument("--print-trace", action="store_true",
                   help="print the manual side's trace lines, as the seed prints them (cases that define them)")
    r.add_argument("--plot", action=Once, metavar="PATH", help="also draw the report to this image (PNG, SVG, PDF...)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--parquet", action=Once, help="write the report to this Parquet file (a --csv path ending .parquet does too)")
    r.add_argument("--seeds", action=Once, help="run N copies seeded --seed..--seed+N-1 (default from 0) stacked together")
    r.add_argument("--per-seed", action=Once, choices=["rows", "worst"], default="rows",
                   help="with --seeds: every row (default), or each seed's worst row per quantity")
    r.add_argument("--straightforward", action="store_true",
                   help="step both sides in turn, one autograd call per step (the reference path; slow)")
    add_numerics(r)
    pl = sub.add_parser("plot", help="draw a report CSV: max difference per step, one axes per layer")
    pl.add_argument("report", help="a CSV written by bpcheck run --csv, or a sweep's OUT_DIR")
    pl.add_argument("-o", "--output", required=True, metavar="PATH", help="the image to write (PNG, SVG, PDF...)")
    pl.add_argument("--force", action="store_true", help="overwrite an existing image")
    rp = sub.add_parser("report", help="print the summary of a report CSV again")
    rp.add_argument("report", help="a CSV written by bpcheck run --csv, or a sweep's OUT_DIR")
    d = sub.add_parser("devices", help="run a case under two device:dtype configurations against a float64 CPU truth")
    d.add_argument("case", help="a case name from `bpcheck list`")
    for side in ("a", "b"):
        d.add_argument(f"--{side}", required=True, metavar="DEVICE:DTYPE",
                       help="e.g. cpu:float64, cuda:float32; options after a colon: threads=N,tf32=on|off,deterministic=on|off")
    d.add_argument("--steps", type=int, help="number of steps (default: the case's, at most 1000)")
    d.add_argument("--mode", choices=["lockstep", "free"], default="lockstep")
    d.add_argument("--repeat", type=int, default=1, help="run each side N times; the spread is the nondeterminism floor")
    d.add_argument("--csv", help="write the report to this CSV file")
    d.add_argument("--force", action="store_true", help="overwrite an existing CSV")
    d.add_argument("--seed", type=int, help="seed for the case's initial weights and data")
    add_numerics(d)
    from bpcheck.sweeps.command import add_parser as add_sweep

    add_sweep(sub)
    return p


def version():
    """The installed distribution's version (importlib.metadata), the one pyproject.toml gives."""
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("bpcheck")
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        return "(not installed)"


def add_numerics(p):
    p.add_argument("--tf32", choices=["on", "off"], help="TF32 for float32 CUDA matmuls and convolutions (default: as torch has it)")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")




def number(text, kind):
    """The CLI's text as a number when it is one, else unchanged, so that the API's
    check names the bad value with the same message."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        return text


BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.+=/:-]*")  # a word, a=b, a/b: no brackets, quotes, commas


def parse_options(items):
    """["k=v", ...] -> {k: v}: v by ast.literal_eval (3, 1e-7, True, None, (4, 8)), or a bare
    word (``bce``, ``relu``, ``rmsprop``) as a string; anything else is a UsageError."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"option {item!r} is not KEY=VALUE")
        if key in out:
            raise UsageError(f"option {key!r} given twice")
        text = text.strip()
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            if not BARE_WORD.fullmatch(text):
                why = type(e).__name__ if not isinstance(e, SyntaxError) else f"SyntaxError: {e.msg}"
                raise UsageError(f"option {key}: {text!r} is not a Python literal ({why}); "
                                 f"quote a string as {key}='...'") from None
            out[key] = text
    return out


def resolve_dtype_early(dtype):
    from bpcheck.compare.core.runner import resolve_dtype

    return resolve_dtype(dtype)


def cmd_list(args):
    """Every case with its options and their defaults; ``list CASE``: one case in full."""
    from bpcheck.cases import CASES, get_case
    from bpcheck.cases.options import describe

    if args.case is not None:
        print(describe(get_case(args.case), full=True))
        return 0
    print("\n\n".join(describe(c) for c in CASES.values()))
    print("\nbpcheck list CASE (or bpcheck run CASE --help) shows one case in full.")
    return 0


def cmd_run(args):
    from bpcheck.cases import correct_cases, get_case
    from bpcheck.cases.options import check_values
    from bpcheck.compare.core.checks import case_option_names, check_case_options, check_run_options
    from bpcheck.compare.io.interrupt import Interrupted
    from bpcheck.compare.core.runner import run
    from bpcheck.report import ATTRS, print_report
    from bpcheck.compare.io.keep import as_summary
    from bpcheck.compare.io.writer import ReportWriter, check_distinct, check_output_path

    options = parse_options(args.option)
    check_combinations(args)
    cases = correct_cases() if args.case == "all" else [get_case(args.case)]
    opts = dict(steps=number(args.steps, int), mode=args.mode, device=args.device, dtype=args.dtype,
                seed=number(args.seed, int), rtol=number(args.rtol, float), atol=number(args.atol, float),
                chunk=number(args.chunk, int), stop_on_nonfinite=args.stop_on_nonfinite, tolerance=args.tolerance,
                on_trace=print if args.print_trace else None, fast=not args.straightforward)
    if args.seeds is not None:
        from bpcheck.compare.engines.seeds import check as check_seeds

        opts.update(seeds=number(args.seeds, int), per_seed=args.per_seed)
        check_seeds(opts["seeds"], opts["per_seed"], opts["mode"])
    if args.csv is not None and args.parquet is not None:
        raise UsageError("give --csv or --parquet, not both")
    out = args.csv if args.csv is not None else args.parquet
    # every check before anything is built or written
    check_run_options(opts["steps"], opts["mode"], opts["device"], opts["dtype"], opts["rtol"], opts["atol"],
                      out, args.force and (out is not None or args.plot is None), opts["seed"], opts["chunk"])
    from bpcheck.compare.core.tolerances import rule as tolerance_rule

    tolerance_rule(resolve_dtype_early(opts["dtype"]), opts["tolerance"], opts["rtol"], opts["atol"])
    for case in cases:  # every case must take every option, before anything is written
        if "help" in options and "help" not in (case_option_names(case) or ()):
            raise UsageError(f"-o passes options to the case's build; `bpcheck run {args.case} --help` lists them")
        check_case_options(case, options)
        check_values(case, options)
    if out is not None:
        check_output_path(out, args.force)
    if args.plot is not None:
        from bpcheck.plot import check_image_path

        check_image_path(args.plot, args.force)
    check_distinct({"--csv": args.csv, "--parquet": args.parquet, "--plot": args.plot})
    if len(cases) == 1 and opts["seed"] is not None and opts.get("seeds") is None:
        check_seed_matters(cases[0], opts, options)
    if args.print_trace and not any(traces(case, opts, options) for case in cases):
        raise UsageError(f"--print-trace does nothing for {args.case}: no manual side there has a trace_line "
                         f"(the seed-002 and seed-003 cases print one: chain-rule, sigmoid221-...)")
    if len(cases) > 1:  # `all`: a case that refuses an option value must fail before the first writes
        for case in cases:
            try:
                built(case, opts, options)
            except UsageError as e:
                raise UsageError(f"case {case.name}: {e}" if not str(e).startswith("case ") else str(e)) from None
    from bpcheck.progress import progress_bar

    writer = None
    if out is not None:  # claimed now: a second run on the same path is refused before it computes
        writer = ReportWriter(out, args.force, parquet=True if args.parquet is not None else None)
    frames, attrs, interrupted = [], {k: {} for k in ATTRS}, None
    with writer if writer is not None else contextlib.nullcontext():  # renamed into place, or discarded on error
        with numerics(args.tf32, args.deterministic or None):
            for case in cases:
                try:
                    with progress_bar(opts["steps"] or case.steps, case.name, args.quiet) as tick:
                        df = run(case, csv=writer, progress=tick, **opts, **options)
                except Interrupted as e:
                    interrupted, df = e, e.report
                if df is not None and len(df):
                    frames.append(df)
                for k in attrs:
                    attrs[k].update(df.attrs.get(k, {}) if df is not None else {})
                if interrupted:
                    break
            if writer is not None:  # what `bpcheck report` needs to print the same (bpcheck.report)
                writer.summary = attrs
                if interrupted:
                    writer.interrupted()
    if any("_rows" in f for f in frames):  # summaries (compare.io.keep) beside full reports
        frames = [as_summary(f) for f in frames]
    report = pd.concat(frames, ignore_index=True) if frames else None
    if report is not None:
        print_report(report, attrs)
        if args.plot is not None and not interrupted:
            from bpcheck.plot import save_plot

            drawn = report if "_rows" not in report else read_back(out, args.parquet is not None)
            save_plot(drawn, args.plot, force=args.force)  # checked before the run
            print(f"plot: {args.plot}")
    if interrupted:
        where = f"; {out} holds every finished step" if out is not None else ""
        if report is None:  # the run ended before its first step
            where = "; no step had finished" + (f", {out} was not written" if out is not None else "")
        if args.plot is not None:  # the plot is of a whole run
            where += f"; {args.plot} was not drawn"
        say(f"interrupted by {interrupted.signame}{where}")
        return interrupted.exit_code
    return 0 if report["passed"].all() else 1


def check_seed_matters(case, opts, options):
    """Refuse ``--seed N`` for a case whose build gives the same weights and data for every
    seed (conv, the seed-003 nets, a FILE.py case whose build takes no seed): it would do
    nothing. Built with N and N xor 1 (in range whatever N) and compared."""
    a, b = (built(case, opts, options, seed) for seed in (opts["seed"], opts["seed"] ^ 1))
    if _same(_drawn(a), _drawn(b)):
        raise UsageError(f"--seed {opts['seed']} does nothing for case {case.name}: its build gives the same "
                         f"weights and data for every seed")


def traces(case, opts, options):
    """Whether the case's manual side prints a trace (has ``trace_line``, compare.core.runner)."""
    return callable(getattr(built(case, opts, options).manual, "trace_line", None))


def built(case, opts, options, seed=None):
    """The case's Setup, built as the run will build it (with ``seed``, default the run's),
    for the checks made before anything runs or is written."""
    from bpcheck.compare.core.checks import checked_build
    from bpcheck.compare.core.runner import build, resolve_device, resolve_dtype

    return checked_build(build, case, resolve_dtype(opts["dtype"]), resolve_device(opts["device"]),
                         opts["seed"] if seed is None else seed, options)


def _drawn(setup):
    """What a seed may draw: the manual side's initial parameters, x and t."""
    params = [v for p in getattr(setup.manual, "params", None) or [] for v in p.values()]
    return params + [setup.x, setup.t]


def _same(a, b):
    import torch

    def tensor(v):
        return v if torch.is_tensor(v) else torch.as_tensor(v) if v is not None else None

    pairs = [(tensor(x), tensor(y)) for x, y in zip(a, b)]
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and
                                    x.shape == y.shape and torch.equal(x, y)) for x, y in pairs)


def check_combinations(args):
    """Refuse run flags that would do nothing in the combination given (one line, exit 2)."""
    given = getattr(args, "_given", {})
    if "per_seed" in given and args.seeds is None:
        raise UsageError("--per-seed chooses the rows of a --seeds run: it needs --seeds N")
    if args.seeds is not None:
        for flag, on in (("--print-trace", args.print_trace), ("--straightforward", args.straightforward),
                         ("--stop-on-nonfinite", args.stop_on_nonfinite and args.per_seed == "worst")):
            if on:
                what = "--seeds --per-seed worst" if flag == "--stop-on-nonfinite" else "--seeds"
                raise UsageError(f"{flag} does nothing with {what} (the stacked copies run in one replay); "
                                 f"drop one of them")
    if args.tf32 is not None:
        import torch
        from bpcheck.compare.core.runner import resolve_device, resolve_dtype

        if resolve_device(args.device).type != "cuda" or resolve_dtype(args.dtype) != torch.float32:
            raise UsageError(f"--tf32 sets TF32 for float32 matmuls and convolutions on CUDA: it does nothing with "
                         f"--device {args.device} --dtype {args.dtype}")


def read_back(path, parquet):
    """The full report from its file, for a plot of a run that kept a summary in memory."""
    from bpcheck.report import read_report

    if parquet or path.lower().endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    return read_report(path)


def cmd_plot(args):
    from bpcheck.plot import check_image_path, save_plot
    from bpcheck.report import read_report
    from bpcheck.sweeps import command as sweeps

    if sweeps.is_sweep_dir(args.report):  # a sweep's OUT_DIR: the grid view
        return sweeps.cmd_plot(args.report, args.output, args.force)

    check_image_path(args.output, args.force)
    save_plot(read_report(args.report), args.output, args.force)
    print(f"plot: {args.output}")
    return 0


def cmd_report(args):
    """The summary ``run`` printed, from the report and its sidecar (bpcheck.report)."""
    from bpcheck.report import print_report, read_report, read_summary
    from bpcheck.sweeps import command as sweeps

    if sweeps.is_sweep_dir(args.report):  # a sweep's OUT_DIR: its summary, one row per cell
        return sweeps.cmd_report(args.report)
    report = read_report(args.report)
    attrs = read_summary(args.report)
    print_report(report, attrs)
    return 0 if report["passed"].all() else 1


def cmd_devices(args):
    from bpcheck.compare.diagnosis.devices import FAILING, compare_devices, devices_table, format_devices
    from bpcheck.compare.io.writer import ReportWriter

    if args.force and args.csv is None:
        raise UsageError("--force overwrites a CSV: it needs --csv")
    if args.tf32 is not None and not any(side.strip().lower().startswith("cuda") for side in (args.a, args.b)):
        raise UsageError(f"--tf32 sets TF32 for float32 matmuls and convolutions on CUDA: it does nothing with "
                         f"--a {args.a} --b {args.b}")
    writer = ReportWriter(args.csv, args.force) if args.csv is not None else None  # checked and claimed before any run
    with writer if writer is not None else contextlib.nullcontext():
        df = compare_devices(args.case, args.a, args.b, steps=args.steps, mode=args.mode, seed=args.seed,
                             repeat=args.repeat, tf32=args.tf32, deterministic=args.deterministic or None)
        if writer:
            writer.write(df)
    print(format_devices(df))
    return 1 if devices_table(df)["verdict"].isin(FAILING).any() else 0


def cmd_sweep(args):
    from bpcheck.sweeps.command import cmd_sweep as sweep

    return sweep(args)


COMMANDS = {"list": cmd_list, "run": cmd_run, "plot": cmd_plot, "report": cmd_report, "devices": cmd_devices,
            "sweep": cmd_sweep}




def say(text):
    """An error or an interruption: one line on stderr, whatever the message held."""
    sys.stdout.flush()  # after what stdout already holds, when both go to one terminal
    print(" ".join(part.strip() for part in str(text).splitlines() if part.strip()), file=sys.stderr, flush=True)


def main(argv=None):
    from bpcheck.compare.io import interrupt
    from bpcheck.compare.io.writer import OutputError

    try:
        with interrupt.handled():
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except UsageError as e:
        say(f"bpcheck: error: {e}")
        return 2
    except OutputError as e:  # a full disk, an I/O error: the previous file is untouched
        say(f"bpcheck: error: {e.strerror or e}")
        return OutputError.exit_code
    except interrupt.Interrupted as e:  # before a run began: nothing was written
        say(f"interrupted by {e.signame}")
        return e.exit_code
    except BrokenPipeError:  # `bpcheck run ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
