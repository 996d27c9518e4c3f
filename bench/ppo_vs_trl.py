"""PPO step throughput: attune's PPO vs TRL's PPOTrainer on the same model, prompts and sizes.

Both sides train the same LoRA shape (attune's `LoraSettings`: r 16, alpha 32, q/k/v/o) on the
same base (default SmolLM2-135M-Instruct, fp32, CPU), from the same tokenized chat prompts
(`--prompts` questions of bench/data/prompts.json, each sampled `--samples` times: a batch of
16 by default, as a round's rollouts), with the same response length (64 here; a round's default
is 96), PPO epochs (1), minibatch (8), temperature (0.7, top_p 1), learning rate, KL, clip and
GAE settings (attune's `PPOConfig`), stopping at EOS on both sides.

One attune step = the round's own PPO iteration, the public `online_rl.ppo.ppo_iteration` the
round calls: sample the rollouts with the trainable LoRA policy, one base pass for reference
log-probs and reward features, score them with a reward head on those features (a `UserReward`
with fixed random weights: the throughput does not depend on what it learned), the safety
screen (a linear classifier over the texts), `ppo_update` (LoRA + the small value head on the
policy's hidden state) and the adaptive KL coefficient. Not in it: fitting the reward heads,
the warm start, best-of-n distillation, the gate and saving (not PPO).

One TRL step = one iteration of `PPOTrainer.train()`: `generate` with the LoRA policy, a
reference pass (the same policy with its adapter disabled), a value-model pass, a reward-model
pass, GAE, then the PPO epochs over minibatches, and its logging and garbage collection. TRL's
design differs, and the differences are part of what is measured: its reward model and value
model are separate full models (`AutoModelForSequenceClassification`, num_labels 1, loaded from
the same folder, score heads randomly initialised), and the value model is trained in full
(all its weights) beside the policy's LoRA; attune's reward head and value head are small heads
on the base's own features, so one base pass serves both the reference and the reward. TRL does
not clip gradients in PPO (attune clips to 1.0). TRL is given a pad token other than EOS
(SmolLM2's pad is its EOS, `<|im_end|>`, which TRL's masks would take for padding inside every
chat prompt); gradient checkpointing (TRL's default) is off, as attune does not use it.

Fairness: each side runs in its own subprocess (no shared memory or threads) with the same
`torch.set_num_threads`; the parent alternates attune, TRL, attune, TRL for `--repeats`; each
child runs `--warmup` untimed steps, then `--steps` timed ones. Per repeat the median step time;
reported, the median over repeats. samples/s = batch / seconds per step. Both sides check that
their LoRA weights moved (a benchmark of a no-op would be worthless). Target: attune >= 3x TRL's
samples/s. Nothing here asserts a timing.

The parent needs only attune; `trl` is imported in the TRL child alone (it is a peer in
bench/peers.txt, installed by `make bench-env`, never a dependency of attune).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import report

NAME = "ppo-vs-trl"
RESULT_NAME = "ppo_vs_trl"
SIDES = ("attune", "trl")
# where an attune step's time goes (`ppo_iteration`'s clocks)
PHASES = ("sampling", "base pass + scores", "old pass", "minibatches")
PROMPTS_FILE = Path(__file__).parent / "data" / "prompts.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Every number of the benchmark; PPO hyperparameters not listed are attune's defaults
    (`online_rl.ppo.PPOConfig`), handed to TRL as they are.

    prompts, samples: distinct prompts per step and samples of each (batch = their product,
        as a round's `rollout_prompts` x `samples_per_prompt`); the same batch every step.
    response_length: new tokens at most per reply (attune's max_new_tokens, TRL's
        response_length); both stop early when every row has sampled EOS.
    epochs, minibatch: PPO epochs over the batch, rows per optimizer step.
    repeats: attune/TRL pairs of child processes, alternated.
    warmup, steps: untimed then timed PPO steps per child.
    threads: torch threads in each child (default: every core).
    seed: which prompts, the sampling seeds, the random reward heads.
    target_ratio: the goal, attune's samples/s over TRL's (a line on the plot, not a check).
    trl_pad_token: TRL's pad token, an existing special token that no prompt contains.
    child_timeout_s: a child that runs longer is killed and the benchmark fails.
    """

    prompts: int = 4
    samples: int = 4
    response_length: int = 64
    epochs: int = 1
    minibatch: int = 8
    repeats: int = 3
    warmup: int = 1
    steps: int = 3
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    target_ratio: float = 3.0
    trl_pad_token: str = "<|endoftext|>"
    child_timeout_s: float = 1800.0

    @property
    def batch(self) -> int:
        return self.prompts * self.samples


@dataclass
class Job:
    """What a child needs: the settings, the model folder and the prompt rows as token ids."""

    side: str
    settings: Settings
    model_dir: str
    data_dir: str
    prompt_ids: list[list[int]]
    training_precision: str  # attune's (`--training-precision`); TRL's side runs fp32


@dataclass
class SideResult:
    """One child's measurements (step seconds of the timed steps; the rest over all steps)."""

    side: str
    step_seconds: list[float]
    warmup_seconds: list[float]
    reply_tokens: list[float]  # mean reply length per step, EOS included when sampled
    decode_steps: list[int]  # generated width per step (the longest reply)
    eos_share: list[float]  # share of replies that ended with EOS, per step
    load_seconds: float  # loading the models and setting up, imports excluded
    lora_change: float  # max |change| of any LoRA weight over the run: > 0 means it trained
    peak_rss_mb: float
    threads: int  # torch's thread count at the end (nothing may have changed it)
    notes: dict[str, Any] = field(default_factory=dict)


# shared ------------------------------------------------------------------------------------------


def attune_ppo_config(s: Settings) -> Any:
    """attune's PPO settings for this benchmark: its defaults with the benchmark's sizes."""
    from online_rl.ppo import PPOConfig

    return PPOConfig(max_new_tokens=s.response_length, epochs=s.epochs, minibatch_size=s.minibatch)


def lora_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def max_change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """Largest absolute change of the snapshotted weights (0.0: nothing trained)."""
    now = dict(model.named_parameters())
    return max((now[n].detach() - p).abs().max().item() for n, p in before.items())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reply_lengths(responses: torch.Tensor, eos_id: int) -> tuple[list[int], list[bool]]:
    """Tokens up to and including the first EOS (or the whole width), and whether EOS came."""
    hit = responses == eos_id
    ended = hit.any(-1)
    lengths = torch.where(ended, hit.int().argmax(-1) + 1, responses.shape[1])
    return lengths.tolist(), ended.tolist()


# attune's side -----------------------------------------------------------------------------------


def random_reward(dim: int) -> Any:
    """A reward head with fixed random weights (unit-variance scores on unit-variance features):
    attune's scoring cost, without fitting a head on clicks first."""
    from online_rl.reward import RewardHead, Standardizer, UserReward

    population = RewardHead(dim)
    torch.nn.init.normal_(population.net.weight, std=dim**-0.5)
    return UserReward(Standardizer(dim), population, RewardHead(dim))


def attune_side(job: Job) -> SideResult:
    """The round's PPO iteration (`online_rl.ppo.ppo_iteration`), step after step, on a fresh
    trainable LoRA."""
    from bench.fresh import open_fresh
    from online_rl.config import TrainingConfig
    from online_rl.policy import LoraSettings
    from online_rl.ppo import ppo_iteration

    s = job.settings
    ppo = attune_ppo_config(s)
    started = time.perf_counter()
    where = argparse.Namespace(
        data_dir=job.data_dir,
        model=job.model_dir,
        quantize="none",
        device="cpu",
        model_cache=None,
        training_precision=job.training_precision,
    )
    config = TrainingConfig(ppo=ppo, lora=LoraSettings())
    asst = open_fresh(where, NAME, training=config)
    policy = asst.trainer.worker.policy
    policy.start_from(None)  # a fresh adapter and value head, as a new user's first round
    load_seconds = time.perf_counter() - started
    torch.manual_seed(s.seed)
    spec = config.reward.features
    head = random_reward(spec.width(asst.base.model.config.hidden_size))
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters() + list(policy.value_head.parameters()),
        lr=ppo.learning_rate,
        weight_decay=0.0,
    )
    before = lora_snapshot(policy.peft)
    rng = random.Random(s.seed)
    prompts = job.prompt_ids
    no_provocation = torch.zeros(len(prompts), dtype=torch.bool)
    kl_coef = ppo.kl_coef
    seconds, tokens, widths, eos, skipped = [], [], [], [], 0.0
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    for _ in range(s.warmup + s.steps):
        seeds = [rng.randrange(2**31) for _ in prompts]
        clock = time.perf_counter()
        it = ppo_iteration(
            policy,
            asst.base,
            optimizer,
            prompts,
            seeds,
            no_provocation,
            lambda x, _texts: head.score(x),
            kl_coef,
            ppo,
            config.safety,
            spec,
        )
        seconds.append(time.perf_counter() - clock)
        assert it.stats is not None
        old_pass = it.stats["seconds_old_pass"]
        spent = (it.seconds_sampling, it.seconds_scoring, old_pass, it.seconds_update - old_pass)
        for phase, s_ in zip(PHASES, spent, strict=True):
            phases[phase].append(s_)
        kl_coef = it.kl_coef
        tokens.append(sum(map(len, it.replies)) / len(it.replies))
        widths.append(max(map(len, it.replies)))
        eos.append(it.finished.float().mean().item())
        skipped += it.stats["skipped_minibatches"]
    dtype = str(asst.base.training_dtype).removeprefix("torch.")
    asst.close()
    return SideResult(
        "attune",
        seconds[s.warmup :],
        seconds[: s.warmup],
        tokens,
        widths,
        eos,
        load_seconds,
        max_change(before, policy.peft),
        peak_rss_mb(),
        torch.get_num_threads(),
        {
            "skipped_minibatches": skipped,
            "final_kl_coef": kl_coef,
            "training_dtype": dtype,
            "phase_seconds": {p: v[s.warmup :] for p, v in phases.items()},
        },
    )


# TRL's side --------------------------------------------------------------------------------------


def trl_config(s: Settings, output_dir: str) -> Any:
    """TRL's PPOConfig with attune's numbers: one optimizer step per minibatch of `minibatch`
    rows (TRL: local batch = per_device x grad_accum; minibatch = batch / num_mini_batches)."""
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig

    ppo = attune_ppo_config(s)
    return TRLPPOConfig(
        output_dir=output_dir,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        num_sample_generations=0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=s.seed,
        per_device_train_batch_size=s.batch,
        gradient_accumulation_steps=1,
        num_mini_batches=s.batch // s.minibatch,
        local_rollout_forward_batch_size=s.batch,
        total_episodes=s.batch * (s.warmup + s.steps),
        num_ppo_epochs=ppo.epochs,
        response_length=ppo.max_new_tokens,
        temperature=ppo.temperature,
        stop_token="eos",
        learning_rate=ppo.learning_rate,
        lr_scheduler_type="constant",  # attune's AdamW runs at a constant rate too
        weight_decay=0.0,
        kl_coef=ppo.kl_coef,
        kl_estimator=ppo.kl_estimator,
        cliprange=ppo.clip_range,
        cliprange_value=ppo.value_clip_range,
        vf_coef=ppo.value_coef,
        gamma=ppo.gamma,
        lam=ppo.lam,
        missing_eos_penalty=ppo.missing_eos_penalty,
    )


def record_generations(module: Any, eos_id: int, log: list[tuple[list[int], list[bool]]]) -> None:
    """Wrap TRL's module-level `batch_generation` to note each step's reply lengths (it still
    runs unchanged; only its output is read)."""
    original: Callable[..., Any] = module.batch_generation

    def recorded(model, queries, *rest, **kwargs):
        query_responses, logits = original(model, queries, *rest, **kwargs)
        log.append(reply_lengths(query_responses[:, queries.shape[1] :], eos_id))
        return query_responses, logits

    module.batch_generation = recorded


def trl_side(job: Job) -> SideResult:
    """TRL's PPOTrainer.train() for warmup + steps iterations, each timed by a callback."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_module

    from online_rl.policy import LoraSettings

    class StepClock(TrainerCallback):
        """Timestamps at train begin and at every step's end: their differences are steps."""

        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    s = job.settings
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir, padding_side="left")
    if s.trl_pad_token not in tokenizer.get_vocab():
        raise SystemExit(f"{s.trl_pad_token!r} is not a token of this model: set trl_pad_token")
    tokenizer.pad_token = s.trl_pad_token
    if tokenizer.pad_token_id == tokenizer.eos_token_id or any(
        tokenizer.pad_token_id in row for row in job.prompt_ids
    ):
        raise SystemExit("TRL's pad token must be neither EOS nor in any prompt")
    fp32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(job.model_dir, **fp32)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(s.seed)  # the score heads of both: fixed random weights
    value_model, reward_model = (
        AutoModelForSequenceClassification.from_pretrained(job.model_dir, num_labels=1, **fp32)
        for _ in range(2)
    )
    for model in (value_model, reward_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraSettings()
    clock = StepClock()
    generations: list[tuple[list[int], list[bool]]] = []
    record_generations(trl_module, tokenizer.eos_token_id, generations)
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as output_dir:
        trainer = PPOTrainer(
            args=trl_config(s, output_dir),
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # with peft: the policy with its adapter disabled
            reward_model=reward_model,
            train_dataset=Dataset.from_dict({"input_ids": job.prompt_ids}),
            value_model=value_model,
            callbacks=[clock],
            peft_config=LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=0.0,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        load_seconds = time.perf_counter() - started
        before = lora_snapshot(trainer.model.policy)
        value_before = {n: p.detach().clone() for n, p in value_model.named_parameters()}
        trainer.train()
    seconds = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    if len(seconds) != s.warmup + s.steps:
        raise RuntimeError(f"TRL ran {len(seconds)} steps, not {s.warmup + s.steps}")
    return SideResult(
        "trl",
        seconds[s.warmup :],
        seconds[: s.warmup],
        [sum(lengths) / len(lengths) for lengths, _ in generations],
        [max(lengths) for lengths, _ in generations],
        [sum(ended) / len(ended) for _, ended in generations],
        load_seconds,
        max_change(before, trainer.model.policy),
        peak_rss_mb(),
        torch.get_num_threads(),
        {"value_model_change": max_change(value_before, value_model)},
    )


# the parent --------------------------------------------------------------------------------------


OPTIONS = {  # the Settings a run may change, with their --help
    "prompts": "distinct prompts per step",
    "samples": "samples of each prompt (batch = prompts x samples)",
    "response_length": "new tokens at most per reply",
    "epochs": "PPO epochs per step",
    "minibatch": "rows per optimizer step (divides the batch)",
    "repeats": "attune/TRL pairs, alternated",
    "warmup": "untimed steps per child",
    "steps": "timed steps per child",
    "threads": "torch threads in each child",
    "seed": "prompts, sampling seeds, random reward heads",
}


def parse(options: list[str]) -> tuple[Settings, argparse.Namespace]:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog=f"attune bench {NAME}", description=__doc__.split("\n\n")[0]
    )
    for name, text in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--results-dir",
        default=str(report.RESULTS),
        help="where the JSON and the PNG go (default: %(default)s)",
    )
    opts = parser.parse_args(options)
    settings = Settings(**{k: v for k, v in vars(opts).items() if k != "results_dir"})
    if settings.batch % settings.minibatch:
        parser.error(f"the batch ({settings.batch}) must be a multiple of --minibatch")
    return settings, opts


def prompt_rows(model_dir: str, s: Settings) -> tuple[list[str], list[list[int]]]:
    """The benchmark's prompts as the round tokenizes them (chat template, no system prompt
    of attune's own), each repeated `samples` times."""
    from transformers import AutoTokenizer

    from assistant import generation
    from assistant.config import ChatConfig

    questions = json.loads(PROMPTS_FILE.read_text())["train"]
    picked = random.Random(s.seed).sample(questions, s.prompts)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = ChatConfig()
    budget = chat.context_tokens - s.response_length
    ids = [
        generation.prompt_token_ids(
            tokenizer, [{"role": "user", "content": q}], chat.system_prompt, budget
        )
        for q in picked
    ]
    return picked, [p for p in ids for _ in range(s.samples)]


def run_child(job: Job) -> SideResult:
    """One side in a fresh interpreter; its result comes back as a JSON file."""
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-job-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(asdict(job)))
        command = [sys.executable, "-m", "bench.ppo_vs_trl", str(job_file), str(out_file)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
        subprocess.run(
            command, cwd=REPO_ROOT, env=env, check=True, timeout=job.settings.child_timeout_s
        )
        return SideResult(**json.loads(out_file.read_text()))


def summary(results: list[SideResult], batch: int) -> dict[str, float]:
    per_repeat = [report.median(r.step_seconds) for r in results]
    seconds = report.median(per_repeat)
    return {
        "seconds_per_step": seconds,
        "samples_per_s": batch / seconds,
        "reply_tokens": report.median([t for r in results for t in r.reply_tokens]),
        "decode_steps": report.median([w for r in results for w in r.decode_steps]),
        "eos_share": report.median([e for r in results for e in r.eos_share]),
    }


def phase_medians(results: list[SideResult]) -> dict[str, float]:
    """attune's seconds per phase of a step: the median over every timed step."""
    return {
        phase: report.median([x for r in results for x in r.notes["phase_seconds"][phase]])
        for phase in PHASES
    }


DIFFERENCES = [
    "reward: attune scores the base pass's own features with a small head (one base pass gives "
    "reference log-probs and reward features); TRL runs a separate full reward model",
    "value: attune's value head is one linear layer on the policy's hidden state; TRL's value "
    "model is a separate full model, trained in full (all weights) beside the policy's LoRA",
    "reference: both use the policy with its LoRA disabled",
    "precision: attune's step runs the base in its training precision (`--training-precision`; "
    "auto is a bf16 copy of the base on a CPU with AMX or AVX-512 BF16, LoRA and value head in "
    "fp32); TRL's side runs fp32, as its PPOTrainer does on a CPU by default",
    "sampling: attune's KV-cached loop (seed per row); TRL's model.generate",
    "gradient clipping: attune clips to max_grad_norm 1.0; TRL's PPO does not clip",
    "TRL is given pad token <|endoftext|> (SmolLM2's pad is its EOS <|im_end|>, which TRL's "
    "masks would take for padding inside the chat prompts); gradient checkpointing is off",
    "both stop sampling when every row has sampled EOS (else at the response length); compare "
    "reply_tokens and decode_steps",
]


def measure(
    settings: Settings,
    model_dir: str,
    data_dir: str,
    prompt_ids: list[list[int]],
    training_precision: str,
) -> dict[str, list[SideResult]]:
    """attune, TRL, attune, TRL ...: one child process each, `repeats` pairs."""
    results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
    for repeat in range(settings.repeats):
        for side in SIDES:
            job = Job(side, settings, model_dir, data_dir, prompt_ids, training_precision)
            result = run_child(job)
            results[side].append(result)
            print(
                f"repeat {repeat + 1}/{settings.repeats} {side}: "
                f"{report.median(result.step_seconds):.2f} s/step "
                f"(steps {', '.join(f'{x:.2f}' for x in result.step_seconds)}; "
                f"{report.median(result.reply_tokens):.0f} reply tokens; "
                f"LoRA change {result.lora_change:.2e})",
                flush=True,
            )
    if not all(r.lora_change > 0 for side in SIDES for r in results[side]):
        print("warning: a side's LoRA weights did not move: it did not train", file=sys.stderr)
    return results


def versions() -> dict[str, str]:
    """Library versions, read from the installed metadata (the parent never imports trl)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "trl", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run(args: argparse.Namespace, options: list[str]) -> int:
    from assistant.config import ModelConfig
    from assistant.model import resolve

    settings, opts = parse(options)
    started = time.monotonic()
    cache = Path(args.model_cache) if args.model_cache else Path(args.data_dir) / "models"
    model_dir = resolve(ModelConfig(name=args.model), cache)
    questions, prompt_ids = prompt_rows(model_dir, settings)
    results = measure(settings, model_dir, str(args.data_dir), prompt_ids, args.training_precision)
    torch.set_num_threads(settings.threads)  # so report.machine() records the children's count
    stats = {side: summary(results[side], settings.batch) for side in SIDES}
    ratio = stats["attune"]["samples_per_s"] / stats["trl"]["samples_per_s"]
    headers = ["side", "samples/s", "s/step", "x TRL", "reply tokens", "decode steps"]
    rows = [
        [
            side,
            stats[side]["samples_per_s"],
            stats[side]["seconds_per_step"],
            ratio if side == "attune" else 1.0,
            stats[side]["reply_tokens"],
            stats[side]["decode_steps"],
        ]
        for side in SIDES
    ]
    extra = {
        "model": model_dir,
        "settings": {**asdict(settings), "batch": settings.batch},
        "attune_ppo_config": asdict(attune_ppo_config(settings)),
        "prompts": questions,
        "ratio": ratio,
        "target_ratio": settings.target_ratio,
        "summary": stats,
        "repeats": {side: [asdict(r) for r in results[side]] for side in SIDES},
        "differences": DIFFERENCES,
        "versions": versions(),
        "dtype": {"attune": results["attune"][0].notes["training_dtype"], "trl": "float32"},
        "attune_phase_seconds": phase_medians(results["attune"]),
        "device": "cpu",
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out_dir = Path(opts.results_dir)
    report.write(
        RESULT_NAME, " ".join(["attune bench", NAME, *options]), headers, rows, extra, out_dir
    )
    trl_rate = stats["trl"]["samples_per_s"]
    report.bar_plot(
        out_dir / f"{RESULT_NAME}.png",
        f"PPO step throughput, batch {settings.batch}, {settings.response_length} tokens "
        f"(attune {ratio:.2f}x TRL)",
        ["attune", "TRL PPOTrainer"],
        {"samples/s": [stats["attune"]["samples_per_s"], trl_rate]},
        "samples/s (higher is better)",
        target=settings.target_ratio * trl_rate,
        target_label=f"target: {settings.target_ratio:g}x TRL",
    )
    return 0


def child_main(argv: list[str]) -> int:
    """`python -m bench.ppo_vs_trl JOB.json RESULT.json`: run one side, write its result."""
    job_file, out_file = map(Path, argv)
    raw = json.loads(job_file.read_text())
    job = Job(**{**raw, "settings": Settings(**raw["settings"])})
    torch.set_num_threads(job.settings.threads)
    side = {"attune": attune_side, "trl": trl_side}[job.side]
    result = side(job)
    out_file.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
