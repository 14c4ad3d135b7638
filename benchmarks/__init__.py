"""Benchmarks for overlaystore (run ``python -m benchmarks <name> [--json]``).

Each benchmark builds its own synthetic data in a temporary directory and
reports latency percentiles next to a raw baseline (a dict lookup, a plain
file read), so figures can be compared across machines. See README.md for
recorded results.
"""
