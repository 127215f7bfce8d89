"""softlabel-pipeline: run a teacher once, keep its top-k soft labels in Parquet, train many
students from them."""

__version__ = "0.1.0"
