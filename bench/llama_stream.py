"""One llama.cpp stream, in a process of its own: the serving benchmark's CPU ceiling.

Its own process because llama.cpp's OpenMP threads and torch's do not share one process well
(it crashed there), and so that neither warms the other's caches. Imports no torch.
Prints one JSON line: {"tokens": n, "seconds": s, "ttft": [s]}.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--prompt-ids", required=True, help="JSON list of token ids")
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--top-p", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    opts = parser.parse_args()

    from llama_cpp import Llama

    llm = Llama(model_path=opts.gguf, n_ctx=1024, n_threads=opts.threads, verbose=False)
    ids = json.loads(opts.prompt_ids)

    def reply(seed: int) -> dict:
        llm.set_seed(seed)
        start = time.perf_counter()
        first, tokens = None, 0
        for token in llm.generate(
            ids, temp=opts.temperature, top_p=opts.top_p, top_k=0, reset=True
        ):
            tokens += 1
            if first is None:
                first = time.perf_counter()
            if token == llm.token_eos() or tokens >= opts.new_tokens:
                break
        end = time.perf_counter()
        return {"tokens": tokens, "seconds": end - start, "ttft": [(first or end) - start]}

    reply(opts.seed + 1)  # warm-up: first-call allocations are not serving speed
    print(json.dumps(reply(opts.seed)))


if __name__ == "__main__":
    main()
