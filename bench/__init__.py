"""Benchmarks: each prints a table and writes JSON under bench/results/.

`attune bench NAME [OPTIONS]` runs one (`attune bench NAME --help` lists its options); the
README shows the latest results and the command.
"""

from bench.chat_during_training import run as chat_during_training
from bench.load import run as load
from bench.personalize import run as personalize
from bench.quantize import run as quantize

BENCHMARKS = {
    "quantize": quantize,
    "personalize": personalize,
    "chat-during-training": chat_during_training,
    "load": load,
}
