"""What makes one stream decode faster on this CPU: the serving benchmark's "try what gets there".

One reply of `new_tokens` tokens (no early stop), batch 1 and batch 8, through attune's KV-cached
sampling loop (`generation.stream_tokens`) on variants of the base model, alternated per repeat:
- fp32: as served today (the GGUF's weights dequantized to fp32).
- bf16: weights and activations in bfloat16 (this CPU reports AVX512-BF16).
- int8 dynamic: torch's dynamic int8 quantization of every nn.Linear (weights int8, activations
  quantized per step, per tensor).
- fp32 + torch.compile: the model's forward compiled by inductor (dynamic shapes, so the growing
  KV cache does not recompile every step); compile time reported apart.
- int8 weight-only / int4+int8 weight-only: `assistant.quantized`'s layers, weights as integers
  (per-channel int8; int4 in groups of 32 where a layer is on the GGUF's own 4-bit grid, int8
  elsewhere: the CPU default), activations bf16 inside the matmul only.
- fp32 + LoRA: one user's adapter (attune's shape, peft), for the adapter's cost.
Each variant's mean per-token KL from fp32 (on fp32's own greedy replies) says what it costs in
output quality.
Tokens/s excludes nothing (prefill, sampling and Python included), as a user would see it.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assistant import generation
from assistant.config import GenerationConfig, ModelConfig
from assistant.model import LoadedModel, load
from assistant.quantized import WeightBits, quantize_linears
from bench import report
from online_rl.policy import LoraSettings

PROMPT = "Write a long story about a dragon who learns to bake bread."


@dataclass(frozen=True)
class VariantSettings:
    """new_tokens: tokens per reply (fixed); batches: rows per reply measured; repeats:
    alternated rounds of all variants (median); compile_warmup: replies run once before timing
    (the first pays inductor's compile)."""

    new_tokens: int = 64
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 3
    warmup: int = 1
    lora: LoraSettings = field(default_factory=LoraSettings)


def tokens_per_s(model: Any, loaded: LoadedModel, batch: int, s: VariantSettings) -> float:
    tok = loaded.tokenizer
    ids = generation.prompt_token_ids(tok, [{"role": "user", "content": PROMPT}], None, 1024)
    settings = GenerationConfig(max_new_tokens=s.new_tokens, temperature=0.7, top_p=0.95, seed=0)
    start = time.perf_counter()
    steps = sum(
        1
        for _ in generation.stream_tokens(
            generation.bind_forward(model),
            [ids] * batch,
            settings,
            list(range(batch)),
            set(),  # no EOS: every variant decodes exactly new_tokens steps
            tok.pad_token_id,
            loaded.device,
        )
    )
    return steps * batch / (time.perf_counter() - start)


def greedy_reply(loaded: LoadedModel, s: VariantSettings) -> tuple[torch.Tensor, int]:
    """The fp32 model's own greedy reply to PROMPT, with the prompt: the text KL is taken on."""
    tok = loaded.tokenizer
    ids = generation.prompt_token_ids(tok, [{"role": "user", "content": PROMPT}], None, 1024)
    settings = GenerationConfig(max_new_tokens=s.new_tokens, temperature=0.0, seed=0)
    steps = generation.stream_tokens(
        generation.bind_forward(loaded.model), [ids], settings, [0], set(), 0, loaded.device
    )
    reply = [int(t) for t in steps]
    return torch.tensor([ids + reply]), len(ids)


@torch.inference_mode()
def reply_log_probs(model: Any, text: torch.Tensor, prompt: int) -> torch.Tensor:
    """Next-token log-probs over the reply's positions (any adapter switched off)."""
    context = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with context:
        logits = model(input_ids=text, attention_mask=torch.ones_like(text)).logits
    return torch.log_softmax(logits[0, prompt - 1 : -1].float(), -1)


def kl_from(reference: torch.Tensor, model: Any, text: torch.Tensor, prompt: int) -> float:
    """Mean per-token KL(fp32 || variant) in nats: what a variant changes in the output."""
    variant = reply_log_probs(model, text, prompt)
    return float((reference.exp() * (reference - variant)).sum(-1).mean())


def with_lora(model: nn.Module, s: VariantSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(
        model,
        LoraConfig(
            r=s.lora.r,
            lora_alpha=s.lora.alpha,
            target_modules=list(s.lora.target_modules),
            init_lora_weights=False,
        ),
    )
    return peft.eval()


def int8_dynamic(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def weight_only(model: nn.Module, bits: WeightBits) -> nn.Module:
    quantize_linears(model, bits)
    return model


def compiled(model: nn.Module) -> nn.Module:
    model.forward = torch.compile(model.forward, dynamic=True)
    return model


def variants(s: VariantSettings) -> dict[str, Callable[[nn.Module], nn.Module]]:
    return {
        "fp32": lambda m: m,
        "fp32 + LoRA": lambda m: with_lora(m, s),
        "bf16": lambda m: m.to(torch.bfloat16),
        "int8 dynamic": int8_dynamic,
        "fp32 + torch.compile": compiled,
        "int8 weight-only": lambda m: weight_only(m, "int8"),
        "int4+int8 weight-only (CPU default)": lambda m: weight_only(m, "auto"),
    }


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench decode-variants")
    defaults = VariantSettings()
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    opts = parser.parse_args(options)
    s = VariantSettings(new_tokens=opts.new_tokens, repeats=opts.repeats)
    cache = Path(args.model_cache or Path(args.data_dir) / "models")
    loaded = load(ModelConfig(name=args.model, quantize="none", device="cpu"), cache)
    chosen = {k: v for k, v in variants(s).items() if not opts.only or k in opts.only}

    text, prompt = greedy_reply(loaded, s)
    reference = reply_log_probs(loaded.model, text, prompt)
    models: dict[str, nn.Module] = {}
    kl: dict[str, float] = {}
    setup_seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, make in chosen.items():
        start = time.perf_counter()
        try:
            model = make(copy.deepcopy(loaded.model)).eval()
            for _ in range(s.warmup):
                for batch in s.batches:
                    tokens_per_s(model, loaded, batch, s)
        except Exception as e:  # a variant this stack cannot run is a finding, not a crash
            failures[name] = f"{type(e).__name__}: {e}"[:500]
            print(f"  {name}: failed: {failures[name]}", flush=True)
            continue
        models[name] = model
        setup_seconds[name] = round(time.perf_counter() - start, 1)
        kl[name] = kl_from(reference, model, text, prompt)

    measured: dict[str, dict[int, list[float]]] = {n: {b: [] for b in s.batches} for n in models}
    for _ in range(s.repeats):
        for name, model in models.items():
            for batch in s.batches:
                measured[name][batch].append(tokens_per_s(model, loaded, batch, s))
            print(f"  {name}: {[round(v[-1], 1) for v in measured[name].values()]}", flush=True)

    base = {b: report.median(measured["fp32"][b]) for b in s.batches} if "fp32" in models else {}
    rows = []
    for name in models:
        med = {b: report.median(measured[name][b]) for b in s.batches}
        rows.append(
            [name]
            + [round(med[b], 1) for b in s.batches]
            + [f"{med[s.batches[0]] / base[s.batches[0]]:.2f}x" if base else "-"]
            + [f"{kl[name]:.4f}", setup_seconds[name]]
        )
    rows += [[name, *["failed"] * len(s.batches), "-", "-", "-"] for name in failures]
    headers = [
        "variant",
        *[f"tok/s batch {b}" for b in s.batches],
        "vs fp32 (batch 1)",
        "KL from fp32 (nats/token)",
        "setup s",
    ]
    command = f"attune bench decode-variants --new-tokens {s.new_tokens} --repeats {s.repeats}"
    report.write(
        "decode_variants",
        command,
        headers,
        rows,
        {"settings": asdict(s), "repeats": measured, "kl_from_fp32": kl, "failures": failures},
    )
    report.bar_plot(
        report.RESULTS / "decode_variants.png",
        f"Decoding variants, {s.new_tokens} tokens (median of {s.repeats})",
        list(models),
        {f"batch {b}": [report.median(measured[n][b]) for n in models] for b in s.batches},
        "tokens / s",
    )
    return 0
