"""Benchmarks: each prints a table and writes JSON (and, most, a PNG plot) under bench/results/.

`attune bench NAME [OPTIONS]` runs one (`attune bench NAME --help` lists its options); the
README shows the latest results and the command. Modules are imported only when their benchmark
runs: some need packages of the benchmark environment (`make bench-env`) that the app does not.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

# name -> the module whose run(args, options) runs it
BENCHMARKS = {
    "quantize": "bench.quantize",
    "personalize": "bench.personalize",
    "chat-during-training": "bench.chat_during_training",
    "load": "bench.load",
    "ppo-vs-trl": "bench.ppo_vs_trl",
    "serving": "bench.serving",
    "decode-variants": "bench.decode_variants",
    "adaptation": "bench.adaptation",
    "footprint": "bench.footprint",
    "gate": "bench.gate",
    "heads": "bench.heads",
    "compare": "bench.compare",
    "oracle": "bench.oracle",
    "round-sampling": "bench.round_sampling",
    "overview": "bench.overview",
    "cluster": "bench.cluster",
}


def runner(name: str) -> Callable[[argparse.Namespace, list[str]], int]:
    return importlib.import_module(BENCHMARKS[name]).run
