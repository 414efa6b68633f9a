"""Results independent of chunking: every column of the report is bit-identical for
any chunk size (a chunk of at most 8 steps used to sum the norms on another path)."""
import pandas as pd
import pytest

from bpcheck.compare import run


@pytest.mark.parametrize("case,dtype,mode", [("trask", "float32", "lockstep"), ("sigmoid-bias", "float32", "free")])
def test_every_column_is_bit_identical_for_any_chunk(case, dtype, mode):
    base = run(case, steps=60, dtype=dtype, mode=mode, chunk=2048)
    for chunk in (7, 9):
        other = run(case, steps=60, dtype=dtype, mode=mode, chunk=chunk)
        pd.testing.assert_frame_equal(other, base, check_exact=True, obj=f"chunk {chunk}")
