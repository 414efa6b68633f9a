"""``bpcheck sweep``: a grid of runs, each cell one ``bpcheck.compare.run``.

- spec.py          the SPEC (TOML/YAML/dict) -> checked cells, each with a stable id
- cell.py          one cell in a worker: run it, summarise it (ERROR when it raises)
- executors/       where cells run: local.py (process pool, default), raycluster.py (--ray)
- dataset.py       OUT_DIR: a Parquet dataset partitioned by cell, written atomically
- summary.py       one record per cell, the summary table and its text
- driver.py        sweep(): spec -> executor -> dataset, resume, interrupts, progress
- command.py       the CLI: ``bpcheck sweep``, and ``report``/``plot`` of an OUT_DIR
"""


def sweep(spec, out, **options):
    """Run a sweep (bpcheck.sweeps.driver.sweep; imported on first use, so that the CLI
    starts without pyarrow and torch)."""
    from bpcheck.sweeps.driver import sweep as run_sweep

    return run_sweep(spec, out, **options)


__all__ = ["sweep"]
