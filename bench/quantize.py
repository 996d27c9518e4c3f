"""fp32 vs bitsandbytes NF4 base on this machine: which should `--quantize auto` pick?

Measures, alternating the two (A B A B) and taking the median of the repeats:
generation tokens/s at batch 1 and batch 8 (fixed length, no early stop) and the seconds of
one LoRA training step (forward + backward, batch 8 x 128 tokens).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from assistant import generation
from assistant.config import GenerationConfig, ModelConfig
from assistant.model import LoadedModel, load
from bench import report

NEW_TOKENS = 64
TRAIN_BATCH, TRAIN_TOKENS = 8, 128
PROMPT = "Give me three tips for sleeping better."


def generation_tokens_per_s(loaded: LoadedModel, batch: int) -> float:
    tok = loaded.tokenizer
    ids = generation.prompt_token_ids(tok, [{"role": "user", "content": PROMPT}], None, 1024)
    settings = GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=1.0, seed=0)
    start = time.perf_counter()
    steps = sum(
        1
        for _ in generation.stream_tokens(
            generation.bind_forward(loaded.model),
            [ids] * batch,
            settings,
            list(range(batch)),
            set(),
            tok.pad_token_id,
            loaded.device,
        )
    )
    return steps * batch / (time.perf_counter() - start)


def train_step_seconds(loaded: LoadedModel) -> float:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        loaded.model,
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    model.train()
    ids = torch.randint(100, 1000, (TRAIN_BATCH, TRAIN_TOKENS), device=loaded.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    model.unload()
    return statistics.median(times[1:])


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench quantize")
    parser.add_argument("--repeats", type=int, default=3)
    args.repeats = parser.parse_args(options).repeats
    cache = Path(args.model_cache) if args.model_cache else Path(args.data_dir) / "models"
    results: dict[str, dict[str, list[float]]] = {"none": {}, "4bit": {}}
    for _ in range(args.repeats):
        for quantize in ("none", "4bit"):
            loaded = load(
                ModelConfig(name=args.model, quantize=quantize, device=args.device), cache
            )
            row = results[quantize]
            row.setdefault("gen_tok_s_batch1", []).append(generation_tokens_per_s(loaded, 1))
            row.setdefault("gen_tok_s_batch8", []).append(generation_tokens_per_s(loaded, 8))
            row.setdefault("train_step_s", []).append(train_step_seconds(loaded))
            del loaded
    medians = {q: {k: statistics.median(v) for k, v in row.items()} for q, row in results.items()}
    print(f"{'base':<8}{'gen tok/s b1':>14}{'gen tok/s b8':>14}{'train step s':>14}")
    for q, m in medians.items():
        print(
            f"{q:<8}{m['gen_tok_s_batch1']:>14.1f}{m['gen_tok_s_batch8']:>14.1f}{m['train_step_s']:>14.2f}"
        )
    report.RESULTS.mkdir(exist_ok=True)
    out = report.RESULTS / "quantize.json"
    out.write_text(
        json.dumps(
            {
                "command": f"attune bench quantize --repeats {args.repeats}",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}",
                "model": args.model,
                "device": args.device,
                "repeats": results,
                "median": medians,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0
