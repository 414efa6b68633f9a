"""The ``bpcheck`` command.

Exit codes: 0 every row passed; 1 a row failed; 2 bad input (one line on stderr,
nothing written); 128 + signal when interrupted (130 SIGINT, 143 SIGTERM), after
writing every finished step and printing the summary of what ran.

``-o KEY=VALUE`` passes an option to the case's ``build`` (``-o hidden=8``,
``-o "sizes=(4, 8, 3)"``). Options are checked by the same code as the Python API
(bpcheck.compare.checks), so both give the same message for the same bad input.
"""
import argparse
import ast
import os
import sys

import pandas as pd

from bpcheck.compare.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


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
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("list", help="list the cases")
    r = sub.add_parser("run", help="run a case (or all) and compare it with autograd")
    r.add_argument("case", help="a case name from `bpcheck list`, all, or FILE.py:NAME (a Case in your file)")
    r.add_argument("--steps", action=Once, help="number of steps (default: the case's)")
    r.add_argument("--mode", action=Once, default="lockstep", help="lockstep (default) or free")
    r.add_argument("--device", action=Once, default="cpu", help="cpu or cuda")
    r.add_argument("--dtype", action=Once, default="float64", help="float64 (default), float32, float16 or bfloat16")
    r.add_argument("--csv", action=Once, help="write the report to this CSV file, chunk by chunk")
    r.add_argument("--force", action=Once, nargs=0, default=False, help="overwrite an existing CSV")
    r.add_argument("--seed", action=Once, help="seed for the case's initial weights and data")
    r.add_argument("--rtol", action=Once, help="relative tolerance (give --atol too)")
    r.add_argument("--atol", action=Once, help="absolute tolerance (give --rtol too)")
    r.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the case's build (repeatable); VALUE is a Python literal, else a string")
    r.add_argument("--chunk", action=Once, default="2048", help="steps compared and written at a time (default 2048)")
    r.add_argument("--stop-on-nonfinite", action=Once, nargs=0, default=False,
                   help="end the run at the first step with a NaN or Inf (default: go on)")
    return p


def number(text, kind):
    """The CLI's text as a number when it is one, else unchanged, so that the API's
    check names the bad value with the same message."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        return text


def parse_options(items):
    """["k=v", ...] -> {k: v}: v by ast.literal_eval (3, 1e-7, True, None, (4, 8)), else the string itself."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"option {item!r} is not KEY=VALUE")
        if key in out:
            raise UsageError(f"option {key!r} given twice")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            out[key] = text
    return out


def cmd_list(args):
    from bpcheck.cases import CASES

    width = max(map(len, CASES))
    for c in CASES.values():
        mark = "  [as written: demonstrates a departure, expected to fail]" if c.as_written else ""
        print(f"{c.name:<{width}}  {c.description}{mark}")
    return 0


def cmd_run(args):
    from bpcheck.cases import correct_cases, get_case
    from bpcheck.compare.checks import check_case_options, check_run_options
    from bpcheck.compare.interrupt import Interrupted
    from bpcheck.compare.runner import run
    from bpcheck.compare.summary import format_summary
    from bpcheck.compare.writer import ReportWriter

    options = parse_options(args.option)
    cases = correct_cases() if args.case == "all" else [get_case(args.case)]
    opts = dict(steps=number(args.steps, int), mode=args.mode, device=args.device, dtype=args.dtype,
                seed=number(args.seed, int), rtol=number(args.rtol, float), atol=number(args.atol, float),
                chunk=number(args.chunk, int), stop_on_nonfinite=args.stop_on_nonfinite)
    # every check before anything is built or written
    check_run_options(opts["steps"], opts["mode"], opts["device"], opts["dtype"], opts["rtol"], opts["atol"],
                      args.csv, args.force, opts["seed"], opts["chunk"])
    for case in cases:  # every case must take every option, before anything is written
        check_case_options(case, options)
    if len(cases) > 1:  # `all`: a case that refuses an option value must fail before the first writes
        from bpcheck.compare.runner import build, resolve_device, resolve_dtype

        for case in cases:
            try:
                build(case, resolve_dtype(opts["dtype"]), resolve_device(opts["device"]), opts["seed"], options)
            except UsageError as e:
                raise UsageError(f"case {case.name}: {e}" if not str(e).startswith("case ") else str(e)) from None
    writer = ReportWriter(args.csv, args.force) if args.csv else None
    frames, attrs, interrupted = [], {"stopped": {}, "origin": {}, "halted": {}}, None
    try:
        for case in cases:
            try:
                df = run(case, csv=writer, **opts, **options)
            except Interrupted as e:
                interrupted, df = e, e.report
            if df is not None and len(df):
                frames.append(df)
            for k in attrs:
                attrs[k].update(df.attrs.get(k, {}) if df is not None else {})
            if interrupted:
                break
    finally:
        if writer:
            writer.close()
    report = pd.concat(frames, ignore_index=True) if frames else None
    if report is not None:
        print(format_summary(report, **attrs))
    if interrupted:
        where = f"; {args.csv} holds every finished step" if args.csv else ""
        print(f"interrupted by {interrupted.signame}{where}", flush=True)
        return interrupted.exit_code
    return 0 if report["passed"].all() else 1


COMMANDS = {"list": cmd_list, "run": cmd_run}


def main(argv=None):
    from bpcheck.compare import interrupt

    try:
        with interrupt.handled():
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"bpcheck: error: {e}", file=sys.stderr)
        return 2
    except interrupt.Interrupted as e:  # before a run began: nothing was written
        print(f"interrupted by {e.signame}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `bpcheck run ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
