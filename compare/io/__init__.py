"""Input and output: report writers (CSV, Parquet) and clean interruption."""
