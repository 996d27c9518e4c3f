"""Benchmarks: each prints a table and writes JSON under bench/results/.

`attune bench NAME` runs one; the README shows the latest results and the command.
"""

from bench.quantize import run as quantize

BENCHMARKS = {"quantize": quantize}
