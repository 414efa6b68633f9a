"""The comparison: one runner, one tolerance table, one CSV schema."""
from .errors import UsageError
from .protocol import Case, Setup
from .runner import run
from .schema import COLUMNS
from .tolerances import TOLERANCES, tolerance

__all__ = ["UsageError", "Case", "Setup", "run", "COLUMNS", "TOLERANCES", "tolerance"]
