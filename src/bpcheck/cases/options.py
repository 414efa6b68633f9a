"""What each case option means and what value it takes.

A case lists its options in ``Case.options``, ``{name: Option(kind, meaning)}``; the
defaults are never written twice: they are read from the signature of ``build``.
``bpcheck list`` and ``bpcheck run CASE --help`` print them (``describe``), and
``register`` (cases/__init__.py) wraps ``build`` so that a value of the wrong kind is
refused before the build runs, in one line naming the case, the option, the value and
what it takes (``case trask: option hidden must be a positive integer, got 'abc'``),
from the CLI and the Python API alike. Values whose fault is only visible against
other values (an array's shape, one activation per layer) are the build's to check.
"""
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bpcheck.compare.core.checks import RESERVED
from bpcheck.compare.core.errors import UsageError


@dataclass(frozen=True)
class Kind:
    expected: str  # the words after "must be"
    accepts: Callable[[object], bool]


@dataclass(frozen=True)
class Option:
    kind: Kind
    meaning: str


def _int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE = Kind("a positive integer", lambda v: _int(v) and v >= 1)
NONNEGATIVE = Kind("a non-negative integer", lambda v: _int(v) and v >= 0)
NUMBER = Kind("a finite number", _number)
POSITIVE_NUMBER = Kind("a positive number", lambda v: _number(v) and v > 0)
FLAG = Kind("True or False", lambda v: isinstance(v, bool))
ARRAY = Kind("an array of floats (nested lists) or None", lambda v: True)  # shapes: the build's check
ARRAYS = Kind("a list of arrays of floats (one per layer) or None", lambda v: True)
SIZES = Kind("a tuple of at least 2 positive integers, e.g. (4, 16, 3)",
             lambda v: isinstance(v, (tuple, list)) and len(v) >= 2 and all(_int(a) and a >= 1 for a in v))
PER_AXIS = Kind("a non-negative integer or a tuple of them (one per spatial axis)",
                lambda v: _int(v) and v >= 0 or isinstance(v, (tuple, list)) and all(_int(a) and a >= 0 for a in v))
POSITIVE_PER_AXIS = Kind("a positive integer or a tuple of them (one per spatial axis)",
                         lambda v: _int(v) and v >= 1 or isinstance(v, (tuple, list)) and all(_int(a) and a >= 1 for a in v))


def one_of(*words):
    return Kind("one of " + ", ".join(map(repr, words)), lambda v: isinstance(v, str) and v in words)


def tuple_of(*words):
    return Kind("a tuple of names, one per layer, each one of " + ", ".join(words),
                lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(isinstance(a, str) and a in words for a in v))


def or_none(kind):
    return Kind(kind.expected + " or None", lambda v: v is None or kind.accepts(v))


def defaults(build):
    """{option: default} from ``build``'s signature (an option without a default: ``inspect.Parameter.empty``)."""
    params = inspect.signature(build).parameters.values()
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in RESERVED}


def takes_more(build):
    """True when ``build`` takes any keyword (``**kw``: the optimizer's own options)."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(build).parameters.values())


def check_values(case, options):
    """Refuse a value that its option's kind does not accept (UsageError naming all three)."""
    for name, value in options.items():
        opt = case.options.get(name)
        if isinstance(opt, Option) and not opt.kind.accepts(value):
            raise UsageError(f"case {case.name}: option {name} must be {opt.kind.expected}, got {value!r}")


def checked(case):
    """``case`` with its ``build`` checking option values first (``check_values``).
    ``functools.wraps`` keeps the signature, which names the options and their defaults."""
    build = case.build
    if not case.options or getattr(build, "checks_values", False):
        return case

    @functools.wraps(build)
    def build_checked(*args, **kwargs):
        check_values(case, {k: v for k, v in kwargs.items() if k not in RESERVED})
        return build(*args, **kwargs)

    build_checked.checks_values = True
    case.build = build_checked
    return case


def _default_text(v):
    if v is inspect.Parameter.empty:
        return "(required)"
    if isinstance(v, np.ndarray):
        return "(the case's own)"
    return repr(v)


def option_lines(case, full=False):
    """Per option ``name=default  meaning``; ``full``: the meaning on a line of its own,
    with the kind of value it takes."""
    from bpcheck.manual.optim import OPTIONS

    found = defaults(case.build)
    if not found:
        return ["    (no options)"]
    width = max(len(f"{k}={_default_text(v)}") for k, v in found.items())
    lines = []
    for name, default in found.items():
        opt = case.options.get(name)
        text = f"{name}={_default_text(default)}"
        if full:
            lines.append(f"    {text}")
            if isinstance(opt, Option):
                lines.append(f"        {opt.meaning} (takes {opt.kind.expected})")
        else:
            lines.append(f"    {text:<{width}}  {opt.meaning if isinstance(opt, Option) else ''}".rstrip())
    if takes_more(case.build):
        if "optimizer" not in found:
            lines.append("    ...and any other keyword its build takes")
        elif full:
            lines.append("    ...and the optimizer's own options:")
            lines += [f"        {k}: {', '.join(v)}" for k, v in OPTIONS.items()]
        else:
            lines.append("    ...and the optimizer's own options (momentum, betas, eps, ...)")
    return lines


def describe(case, full=False):
    """The case for ``bpcheck list``: its name, description and options; ``full`` adds its
    default steps and its build's docstring (the case's decisions)."""
    mark = "  [as written: demonstrates a departure, expected to fail]" if case.as_written else ""
    lines = [f"{case.name}  {case.description}{mark}"]
    if full:
        lines.append(f"  steps: {case.steps} by default (--steps N)")
        doc = inspect.getdoc(case.build)
        if doc:
            lines += ["  " + line if line else "" for line in doc.splitlines()]
        lines.append("  options (-o NAME=VALUE, VALUE a Python literal or a bare word; default after =):")
    lines += option_lines(case, full)
    return "\n".join(lines)


# Options several cases share.
X = Option(ARRAY, "the input batch, (batch, in); None: the case's own data")
T = Option(ARRAY, "the targets, (batch, out); None: the case's own")
WEIGHTS = Option(ARRAYS, "the initial weights, W (in, out) per layer; None: drawn from the seed")
BIASES = Option(ARRAYS, "the initial biases, (out,) per layer; None: the case's own")
HIDDEN = Option(POSITIVE, "hidden units")
LR = Option(NUMBER, "learning rate")
