"""The one exception type for bad input. The CLI prints its message on one line and exits 2."""


class UsageError(ValueError):
    """Bad input to bpcheck: an unknown case or option, a bad tolerance, shapes that
    don't match, a missing GPU, an unwritable path. Nothing has been written."""


class Unbatchable(Exception):
    """A reference that cannot be evaluated in batches (torch.func.vmap); the runner then
    steps it one state at a time and names the reason in ``report.attrs["engine"]``."""


class DataExhausted(Exception):
    """Per-step data (``Setup.batch``) has no batch for this step: the run ends there."""
