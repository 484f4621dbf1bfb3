"""Benchmarks: each runs this project beside a reference on the same machine and reports ratios."""
