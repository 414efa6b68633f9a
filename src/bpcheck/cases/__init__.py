"""The case registry. Each module here registers its cases on import."""
from bpcheck.compare.core.errors import UsageError

CASES = {}


def register(case):
    """Add ``case``; its ``build`` checks option values against ``case.options`` (cases/options.py)."""
    from .options import checked

    CASES[case.name] = checked(case)
    return case


def get_case(name):
    """A registered case by name, or a user's case given as ``FILE.py:NAME``."""
    if name not in CASES and ".py:" in name:
        from .user import load_case

        return load_case(name)
    if name not in CASES:
        raise UsageError(f"unknown case {name!r}; `bpcheck list` shows the cases")
    return CASES[name]


def correct_cases():
    """The cases `bpcheck run all` runs: every case but the -as-written demonstrations."""
    return [c for c in CASES.values() if not c.as_written]


from . import mlp  # noqa: E402,F401  (registers trask, relu-sigmoid, sigmoid-bias, mlp)
from . import seed003  # noqa: E402,F401  (registers sigmoid221-sgd, sigmoid221-rmsprop and their -as-written)
from . import seed002  # noqa: E402,F401  (registers chain-rule)
from . import seed000_as_written  # noqa: E402,F401  (registers relu-sigmoid-as-written, sigmoid-bias-as-written)
from . import conv, rnn  # noqa: E402,F401  (registers conv, cnn, rnn)
