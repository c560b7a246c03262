"""Benchmarks: side-by-side timings written to benchmarks/results/*.json."""
