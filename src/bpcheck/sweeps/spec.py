"""A sweep's SPEC: the axes, their values, and the cells they make.

A SPEC is a TOML file (stdlib ``tomllib``), a YAML file (``.yaml``/``.yml``; needs
PyYAML, ``pip install "bpcheck[yaml]"``) or the same structure as a dict:

```toml
[run]                 # every cell: keywords of bpcheck.compare.run, or the case's options
steps = 20
[axes]                # one cell per combination of these values (the last axis varies fastest)
case = ["trask", "mlp", "cases.py:MYNET"]
mode = ["lockstep", "free"]
dtype = ["float64", "float32"]
hidden = [4, 8]       # not a run keyword: a case option (as `bpcheck run -o hidden=4`)
```

Decisions:

- A key is a run keyword (``RUN_KEYS``) or else a case option; ``case`` is required.
  A key may sit in ``[run]`` or in ``[axes]``, not both.
- Lists among a case option's values become tuples (``sizes = [[4, 8, 3]]`` gives
  ``sizes=(4, 8, 3)``), as ``-o "sizes=(4, 8, 3)"`` does on the command line.
- ``FILE.py:NAME`` cases are found relative to the SPEC's folder; the cell keeps the
  text as written (its parameters and id do not depend on where the sweep runs).
- A cell's id is the SHA-1 of its parameters (canonical JSON), 12 hex digits: the
  same parameters give the same id in any SPEC, so ``--resume`` and an extended
  SPEC find finished cells by what they ran, not by their position.
- Everything that can be checked without running a cell is checked here, once per
  cell, and a problem is one ``UsageError`` (exit 2): unknown keys, empty axes,
  run keywords' values (mode, dtype, tolerances, steps, seed, chunk), case names and
  the options each case takes. The device's type is checked, not its presence: a
  ``cuda`` cell may run on another node (Ray); where no GPU is found it is an ERROR cell.
"""
import hashlib
import itertools
import json
import os
from dataclasses import dataclass

from bpcheck.compare.core.errors import UsageError

RUN_KEYS = ("case", "steps", "mode", "device", "dtype", "seed", "rtol", "atol", "chunk", "stop_on_nonfinite", "fast")
SECTIONS = ("run", "axes")


@dataclass
class Cell:
    n: int  # position in the SPEC's grid, from 0
    id: str  # SHA-1 of params, 12 hex digits
    params: dict  # as the SPEC gives them: the summary's columns
    case: str  # the case to run: a name, or FILE.py:NAME with FILE resolved

    def call(self):
        """(run keywords, case options) for bpcheck.compare.run."""
        kw = {k: v for k, v in self.params.items() if k in RUN_KEYS}
        kw["case"] = self.case
        options = {k: _tuples(v) for k, v in self.params.items() if k not in RUN_KEYS}
        return kw, options

    @property
    def cuda(self):
        return str(self.params.get("device", "cpu")).startswith("cuda")


def cell_id(params):
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load(spec):
    """SPEC path or dict -> (the SPEC as a dict, its folder)."""
    if isinstance(spec, dict):
        return spec, os.getcwd()
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise UsageError(f"sweep spec {path} " + ("is not a file" if os.path.exists(path) else "does not exist"))
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the tomli backport (a dependency there)
                import tomli as tomllib
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        elif ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError(f"reading {path} needs PyYAML: pip install \"bpcheck[yaml]\" (or write the spec as TOML)") from None
            with open(path) as fh:
                data = yaml.safe_load(fh)
        else:
            raise UsageError(f"sweep spec {path}: unknown type {ext!r} (use .toml, .yaml or .yml)")
    except UsageError:
        raise
    except Exception as e:  # the parsers' own errors: one line, naming the file
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"sweep spec {path} cannot be read: {why}") from None
    if not isinstance(data, dict):
        raise UsageError(f"sweep spec {path} must be a table with [run] and [axes]")
    return data, os.path.dirname(os.path.abspath(path))


def parse(spec):
    """SPEC -> [Cell], every cell checked (see the module docstring); UsageError otherwise."""
    data, folder = load(spec)
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise UsageError(f"sweep spec: unknown section(s) {', '.join(map(repr, unknown))} (known: run, axes)")
    fixed, axes = data.get("run", {}), data.get("axes", {})
    for name, sec in (("run", fixed), ("axes", axes)):
        if not isinstance(sec, dict):
            raise UsageError(f"sweep spec: [{name}] must be a table of KEY = VALUE")
    both = sorted(set(fixed) & set(axes))
    if both:
        raise UsageError(f"sweep spec: {', '.join(both)} given in both [run] and [axes]")
    for k, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"sweep spec: axis {k!r} must be a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            raise UsageError(f"sweep spec: axis {k!r} repeats a value")
    if "case" not in fixed and "case" not in axes:
        raise UsageError("sweep spec: no case (give case = \"NAME\" in [run] or a list in [axes])")
    names = list(axes)
    cells, cases = [], {}
    for n, combo in enumerate(itertools.product(*(axes[k] for k in names))):
        params = {**fixed, **dict(zip(names, combo))}
        case = _case_path(params["case"], folder)
        cell = Cell(n, cell_id(params), params, case)
        _check(cell, cases)
        cells.append(cell)
    return cells


def _case_path(case, folder):
    if not isinstance(case, str):
        raise UsageError(f"sweep spec: case must be a name or FILE.py:NAME, got {case!r}")
    path, sep, name = case.rpartition(":")
    if sep and path.endswith(".py") and not os.path.isabs(path):
        return os.path.join(folder, path) + ":" + name
    return case


def _check(cell, cases):
    from bpcheck.cases import get_case
    from bpcheck.compare.core.checks import check_case_options, check_run_options

    kw, options = cell.call()
    where = f"sweep spec, cell {_label(cell.params)}"
    try:
        if cell.case not in cases:
            cases[cell.case] = get_case(cell.case)
        device = kw.get("device", "cpu")
        if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
            raise UsageError(f"device {device!r} is not supported (cpu or cuda)")
        check_run_options(kw.get("steps"), kw.get("mode", "lockstep"), "cpu", kw.get("dtype", "float64"),
                          kw.get("rtol"), kw.get("atol"), seed=kw.get("seed"), chunk=kw.get("chunk", 1))
        for k in ("stop_on_nonfinite", "fast"):
            if k in kw and not isinstance(kw[k], bool):
                raise UsageError(f"{k} must be true or false, got {kw[k]!r}")
        check_case_options(cases[cell.case], options)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _label(params):
    return " ".join(f"{k}={v}" for k, v in params.items())


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v
