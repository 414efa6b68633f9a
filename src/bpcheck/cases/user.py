"""A case from the user's own file: ``bpcheck run path/to/file.py:NAME``.

The file is imported as a module; ``NAME`` must be a ``bpcheck.compare.Case``.
Every problem (no such file, no such name, not a Case, an error while importing,
the file's own ``sys.exit()`` or ``KeyboardInterrupt``) is a UsageError naming the file.
"""
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
    return case
