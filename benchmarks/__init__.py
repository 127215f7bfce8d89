"""Ratio benchmarks behind `make bench` (benchmarks/run.py); results in BENCHMARKS.md."""
