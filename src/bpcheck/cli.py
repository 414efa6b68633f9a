"""The ``bpcheck`` command. Exit codes: 0 every row passed, 1 a row failed, 2 bad input."""
import argparse
import sys

import pandas as pd

from bpcheck.compare.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def build_parser():
    p = Parser(prog="bpcheck", description="Cross-check hand-derived backprop against autograd.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("list", help="list the cases")
    r = sub.add_parser("run", help="run a case (or all) and compare it with autograd")
    r.add_argument("case", help="a case name from `bpcheck list`, or all")
    r.add_argument("--steps", type=int, help="number of steps (default: the case's)")
    r.add_argument("--mode", choices=["lockstep", "free"], default="lockstep")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--dtype", default="float64", help="float64 (default), float32, float16 or bfloat16")
    r.add_argument("--csv", help="write the report to this CSV file")
    r.add_argument("--force", action="store_true", help="overwrite an existing CSV")
    r.add_argument("--seed", type=int, help="seed for the case's initial weights and data")
    r.add_argument("--rtol", type=float, help="relative tolerance (give --atol too)")
    r.add_argument("--atol", type=float, help="absolute tolerance (give --rtol too)")
    r.add_argument("--parquet", help="write the report to this Parquet file (a --csv path ending .parquet does too)")
    r.add_argument("--seeds", type=int, help="run N copies seeded --seed..--seed+N-1 (default from 0) stacked together")
    r.add_argument("--per-seed", choices=["rows", "worst"], default="rows",
                   help="with --seeds: every row (default), or each seed's worst row per quantity")
    r.add_argument("--straightforward", action="store_true",
                   help="step both sides in turn, one autograd call per step (the reference path; slow)")
    return p


def cmd_list(args):
    from bpcheck.cases import CASES

    width = max(map(len, CASES))
    for c in CASES.values():
        mark = "  [as written: demonstrates a departure, expected to fail]" if c.as_written else ""
        print(f"{c.name:<{width}}  {c.description}{mark}")
    return 0


def cmd_run(args):
    from bpcheck.cases import correct_cases, get_case
    from bpcheck.compare.runner import run
    from bpcheck.compare.summary import format_summary
    from bpcheck.compare.writer import ReportWriter

    cases = correct_cases() if args.case == "all" else [get_case(args.case)]
    opts = dict(steps=args.steps, mode=args.mode, device=args.device, dtype=args.dtype,
                seed=args.seed, rtol=args.rtol, atol=args.atol, fast=not args.straightforward)
    if args.seeds is not None:
        opts.update(seeds=args.seeds, per_seed=args.per_seed)
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    if args.csv and args.parquet:
        raise UsageError("give --csv or --parquet, not both")
    if args.parquet:
        writer = ReportWriter(args.parquet, args.force, parquet=True)
    else:
        writer = ReportWriter(args.csv, args.force) if args.csv else None
    frames, stopped = [], {}
    try:
        for case in cases:
            df = run(case, csv=writer, **opts)
            frames.append(df)
            stopped.update(df.attrs.get("stopped", {}))
    finally:
        if writer:
            writer.close()
    report = pd.concat(frames, ignore_index=True)
    print(format_summary(report, stopped))
    return 0 if report["passed"].all() else 1


COMMANDS = {"list": cmd_list, "run": cmd_run}


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"bpcheck: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
