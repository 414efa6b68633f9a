"""The comparison: one runner, one tolerance table, one CSV schema."""
from bpcheck.compare.core.errors import UsageError
from bpcheck.compare.core.protocol import Case, Setup
from bpcheck.compare.core.runner import run
from bpcheck.compare.core.schema import COLUMNS
from bpcheck.compare.core.tolerances import TOLERANCES, tolerance

__all__ = ["UsageError", "Case", "Setup", "run", "COLUMNS", "TOLERANCES", "tolerance"]
