"""The ``bpcheck`` command.

Exit codes: 0 every row passed; 1 a row failed; 2 bad input (one line on stderr,
nothing written); 128 + signal when interrupted (130 SIGINT, 143 SIGTERM), after
writing every finished step and printing the summary of what ran.

``bpcheck run CASE --NAME VALUE`` passes any option that is not one of run's own to
the case's ``build`` (``--hidden 8``, ``--sizes 4,8,3``, ``--x @x.npy``); see
``case_options``. Options are checked by the same code as the Python API
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
    # no abbreviations: an unknown --NAME is a case option, never taken for a prefix of run's own
    r = sub.add_parser("run", help="run a case (or all) and compare it with autograd", allow_abbrev=False)
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


def parse_value(text, name="value"):
    """A case option's value: ``@FILE.npy`` loads an array; else a Python literal
    (``8``, ``0.5``, ``(4, 8, 3)``, ``[[0., 1.]]``); else comma-separated items
    (``relu,sigmoid``); else the text itself."""
    if text.startswith("@"):
        import numpy as np

        try:
            return np.load(text[1:], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read array file {text[1:]}: {e}") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text[:1] in "[({":
            raise UsageError(f"--{name}: cannot read {text!r} as a literal (numbers, lists, tuples)") from None
    if "," in text:
        return tuple(parse_value(p, name) for p in text.split(",") if p)
    return text


def case_options(extra):
    """``--name value``, ``--name=value`` and bare ``--flag`` (True) -> {name: value}."""
    opts, i = {}, 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or tok == "--":
            raise UsageError(f"unexpected argument {tok!r}")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            nxt = extra[i + 1] if i + 1 < len(extra) else None
            if nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            else:
                value = None
        key = name.replace("-", "_")
        val = True if value is None else parse_value(value, name)
        if key in opts and not _same(opts[key], val):
            raise UsageError(f"conflicting values for --{name}: {opts[key]!r} and {val!r}")
        opts[key] = val
        i += 1
    return opts


def _same(a, b):
    try:
        return bool(a == b)
    except ValueError:  # arrays
        return False


def cmd_list(args, extra):
    from bpcheck.cases import CASES

    width = max(map(len, CASES))
    for c in CASES.values():
        mark = "  [as written: demonstrates a departure, expected to fail]" if c.as_written else ""
        print(f"{c.name:<{width}}  {c.description}{mark}")
    return 0


def cmd_run(args, extra):
    from bpcheck.cases import correct_cases, get_case
    from bpcheck.compare.checks import check_case_options, check_run_options
    from bpcheck.compare.interrupt import Interrupted
    from bpcheck.compare.runner import run
    from bpcheck.compare.summary import format_summary
    from bpcheck.compare.writer import ReportWriter

    options = case_options(extra)
    if args.case == "all" and options:
        raise UsageError(f"case options (--{next(iter(options))}) apply to one case, not to all")
    cases = correct_cases() if args.case == "all" else [get_case(args.case)]
    opts = dict(steps=number(args.steps, int), mode=args.mode, device=args.device, dtype=args.dtype,
                seed=number(args.seed, int), rtol=number(args.rtol, float), atol=number(args.atol, float),
                chunk=number(args.chunk, int), stop_on_nonfinite=args.stop_on_nonfinite)
    # every check before anything is built or written
    check_run_options(opts["steps"], opts["mode"], opts["device"], opts["dtype"], opts["rtol"], opts["atol"],
                      args.csv, args.force, opts["seed"], opts["chunk"])
    for case in cases:
        check_case_options(case, options)
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
            args, extra = build_parser().parse_known_args(argv)
            if extra and args.command != "run":
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
            return COMMANDS[args.command](args, extra)
    except UsageError as e:
        print(f"bpcheck: error: {e}", file=sys.stderr)
        return 2
    except interrupt.Interrupted as e:  # before a run began: nothing was written
        print(f"interrupted by {e.signame}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `bpcheck run ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
