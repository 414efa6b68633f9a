"""A case from the user's own file: ``bpcheck run path/to/file.py:NAME``.

The file is imported as a module; ``NAME`` must be a ``bpcheck.compare.Case``.
Every problem (no such file, no such name, not a Case, an error while importing,
the file's own ``sys.exit()`` or ``KeyboardInterrupt``) is a UsageError naming the file;
so is an exception the case's ``build`` raises, named with the file, the case and the
exception (``bpcheck run f.py:CASE``: one line, exit 2).
"""
import dataclasses
import functools
import importlib.util
import os

from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case
from bpcheck.compare.io.interrupt import Interrupted


def load_case(spec):
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise UsageError(f"unknown case {spec!r}: no file {path} (a case file is given as FILE.py:NAME)")
    mod_name = "bpcheck_user_case_" + os.path.splitext(os.path.basename(path))[0]
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Interrupted:  # a real Ctrl-C while importing: the CLI answers it
        raise
    except SystemExit as e:  # the file's own sys.exit(): never the command's exit status
        raise UsageError(f"cannot load case file {path}: it called sys.exit({e.code!r}) while being imported") from None
    except KeyboardInterrupt:
        raise UsageError(f"cannot load case file {path}: it raised KeyboardInterrupt while being imported") from None
    except Exception as e:  # the user's file: report it in one line
        raise UsageError(f"cannot load case file {path}: {type(e).__name__}: {e}") from None
    case = getattr(module, name, None)
    if case is None:
        raise UsageError(f"case file {path} has no {name!r}")
    if not isinstance(case, Case):
        raise UsageError(f"{path}:{name} is a {type(case).__name__}, not a bpcheck Case")
    return dataclasses.replace(case, build=naming(case.build, path, name))


def naming(build, path, name):
    """``build`` with its exceptions (but a UsageError, which already says what is wrong,
    and an interrupt) raised again as one UsageError naming the file and the case."""

    @functools.wraps(build)
    def build_named(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except (UsageError, KeyboardInterrupt, MemoryError):
            raise
        except SystemExit as e:  # the build's own sys.exit(): never the command's exit status
            raise UsageError(f"case {path}:{name}: its build called sys.exit({e.code!r})") from None
        except Exception as e:  # noqa: BLE001 (the user's code: its failure is bad input)
            text = str(e).strip().splitlines()
            why = type(e).__name__ + (f": {text[0]}" if text else "")
            raise UsageError(f"case {path}:{name}: its build failed ({why})") from None

    return build_named
