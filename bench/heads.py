"""The reward-head lab: how well does a head learn a taste from N clicks? Seconds per design.

1. A pool, built once under `<data-dir>/bench-heads-pool/` and reused: the base model's replies
   to `bench/data/heads_prompts.json` (160 everyday prompts in five kinds, none of them `bench
   personalize`'s), several seeds each, at the serving temperature and the rollouts' length,
   with every layer's hidden state the lab reads, pooled both ways (`online_rl.features`), and
   the replies' token ids (for lexical features).
2. Simulated users (`bench/tastes.py`) click as `bench personalize`'s do: a prompt, two of its
   pool replies, an A/B choice and a thumb on each; the noisy user flips 20% of its clicks.
   Clicks come from two thirds of the prompts; the rest are held out.
3. For each head design, taste and N: fit on the first N clicks (`online_rl.reward.fit_head`,
   the product's own fit), then on the held-out replies read the balanced accuracy of "liked"
   (score above the head's threshold) against the taste's yes/no test, and the pairwise
   accuracy on pairs of replies to one prompt that the taste's graded score orders. Mean and
   spread over random draws (which prompts are held out, which replies are clicked).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from assistant import Assistant
from assistant.generation import Sample, prompt_token_ids
from bench.report import RESULTS, bar_plot, write
from bench.tastes import ALL, Preference, clicks
from online_rl import pairs, reward
from online_rl.features import (
    LAST_TOKEN,
    MIDDLE_MEAN_AND_WORDS,
    FeatureSpec,
    layer_index,
    lexical,
    pooled,
)
from online_rl.policy import backbone_pass, make_batch
from online_rl.reward import RewardHead

PROMPTS = Path(__file__).parent / "data" / "heads_prompts.json"
POOL_USER = "bench-heads"
LAYERS = (4, 8, 12, 16, 20, 24, 27, 30)  # hidden-state indices kept (30: the last, normed)
POOLINGS = ("last", "mean")
SIZES = (8, 16, 32, 64)
MODES = ("random", "uncertain", "thompson")  # how a Compare's pair is chosen of 4
TASTES = tuple(n for n in ALL if n != "adversarial")  # offence is for red-team prompts


@dataclass
class Pool:
    """The lab's replies: which prompt each answers, the replies, their pooled hidden states
    (by (pooling, layer)) and their token ids."""

    prompt: list[int]
    samples: list[Sample]
    hidden: dict[tuple[str, int], torch.Tensor]
    reply_ids: list[list[int]]


def _prompts() -> list[str]:
    return [p for kind in json.loads(PROMPTS.read_text()).values() for p in kind]


def load_pool(folder: Path, settings: dict | None = None) -> Pool | None:
    """The pool on disk, if there is one (built with `settings`, when given)."""
    meta, tensors = folder / "pool.json", folder / "hidden.pt"
    if not (meta.exists() and tensors.exists()):
        return None
    data = json.loads(meta.read_text())
    if settings is not None and data["settings"] != settings:
        return None
    samples = [Sample(i, t, f) for i, t, f in zip(*data["samples"], strict=True)]
    hidden = {(p, int(k)): v for (p, k), v in torch.load(tensors).items()}
    return Pool(data["prompt"], samples, hidden, data["reply_ids"])


def build_pool(asst: Assistant, folder: Path, seeds: int, tokens: int, batch: int) -> Pool:
    """The pool, from disk when it was built with these settings, else sampled now."""
    settings = {"seeds": seeds, "max_new_tokens": tokens, "layers": list(LAYERS)}
    meta, tensors = folder / "pool.json", folder / "hidden.pt"
    cached = load_pool(folder, settings)
    if cached is not None:
        return cached
    prompts = _prompts()
    if POOL_USER not in {u.name for u in asst.users()}:
        asst.add_user(POOL_USER)
    asks = [(i, p) for s in range(seeds) for i, p in enumerate(prompts)]
    samples: list[Sample] = []
    for start in tqdm(range(0, len(asks), batch), desc="pool replies", unit="batch"):
        chunk = [p for _, p in asks[start : start + batch]]
        samples += asst.sample_replies(
            POOL_USER, chunk, max_new_tokens=tokens, temperature=0.7, seed=7_000 + start
        )
    tokenizer, base = asst.base.tokenizer, asst.base
    budget = asst.config.chat.context_tokens - tokens
    ids = [
        prompt_token_ids(
            tokenizer, [{"role": "user", "content": p}], asst.config.chat.system_prompt, budget
        )
        for p in prompts
    ]
    eos = tokenizer.eos_token_id
    reply_ids = [s.token_ids + ([eos] if s.finished else []) for s in samples]
    model = base.pristine if base.pristine is not None else base.model
    parts: dict[tuple[str, int], list[torch.Tensor]] = {
        (p, k): [] for p in POOLINGS for k in LAYERS
    }
    with torch.inference_mode():
        for start in tqdm(range(0, len(asks), 16), desc="pool features", unit="batch"):
            rows = range(start, min(start + 16, len(asks)))
            b = make_batch(
                [ids[asks[r][0]] for r in rows],
                [reply_ids[r] or [eos] for r in rows],
                tokenizer.pad_token_id,
                base.device,
            )
            states = backbone_pass(model, b).hidden_states
            for p, k in parts:
                parts[(p, k)].append(pooled(states[k], b.reply_mask, p).cpu())
    hidden = {key: torch.cat(v) for key, v in parts.items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({(p, str(k)): v for (p, k), v in hidden.items()}, tensors)
    meta.write_text(
        json.dumps(
            {
                "settings": settings,
                "prompt": [i for i, _ in asks],
                "samples": [
                    [s.token_ids for s in samples],
                    [s.text for s in samples],
                    [s.finished for s in samples],
                ],
                "reply_ids": reply_ids,
            }
        )
    )
    return Pool([i for i, _ in asks], samples, hidden, reply_ids)


# head designs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """A head: its features (`online_rl.features.FeatureSpec`, exactly what the product would
    compute), an optional low-rank basis (the top principal directions of the pool's
    standardised dense features: a basis learned from the population's replies, no labels),
    and its L2 pull toward "no opinion"."""

    name: str
    spec: FeatureSpec
    rank: int = 0
    l2: float = 1e-2
    balance_thumbs: bool = False
    threshold_folds: int = 0

    @property
    def config(self) -> reward.RewardConfig:
        return replace(
            reward.RewardConfig(),
            balance_thumbs=self.balance_thumbs,
            threshold_folds=self.threshold_folds,
        )


def design_matrix(pool: Pool, d: Design) -> torch.Tensor:
    """Every pool reply's inputs to the head under design `d`: dense parts standardised over
    the pool (as the product standardises over everyone's replies), lexical counts as they are."""
    depth = max(LAYERS)
    dense = torch.cat(
        [pool.hidden[(p, layer_index(k, depth) % (depth + 1))] for p, k in d.spec.parts], dim=1
    )
    z = reward.Standardizer(dense.shape[1]).fit(dense)(dense)
    if d.rank:
        _, _, v = torch.linalg.svd(z, full_matrices=False)
        z = z @ v[: d.rank].T
        z = reward.Standardizer(d.rank).fit(z)(z)
    if d.spec.lexical_dim:
        z = torch.cat(
            [z, d.spec.lexical_scale * lexical(pool.reply_ids, d.spec.lexical_dim)], dim=1
        )
    return z


MIDDLE_MEAN = FeatureSpec((("mean", 16),))
DESIGNS = [
    Design("today: last layer, last token", LAST_TOKEN),
    *(Design(f"layer {k}, mean", FeatureSpec((("mean", k),))) for k in (12, 16, 20, -1)),
    Design("layer 16 mean + last layer last token", FeatureSpec((("mean", 16), ("last", -1)))),
    Design("layer 16 mean, rank 32 (pool PCA)", MIDDLE_MEAN, rank=32),
    Design("layer 16 mean + words x3, l2 1", MIDDLE_MEAN_AND_WORDS, l2=1.0),
    Design("+ balanced thumbs", MIDDLE_MEAN_AND_WORDS, l2=1.0, balance_thumbs=True),
    Design(
        "+ cross-fitted threshold (default)",
        MIDDLE_MEAN_AND_WORDS,
        l2=1.0,
        balance_thumbs=True,
        threshold_folds=4,
    ),
]
CHOSEN = DESIGNS[-1]


# simulated users ----------------------------------------------------------------------------------


def labels(pool: Pool, pref: Preference) -> tuple[list[bool], list[float]]:
    return [pref.satisfied(s) for s in pool.samples], [pref.score(s) for s in pool.samples]


def simulate(
    pool: Pool, pref: Preference, train_prompts: set[int], n: int, rng: random.Random
) -> reward.Feedback:
    """The first n clicks of a user who asks train prompts and clicks two replies each."""
    by_prompt: dict[int, list[int]] = {}
    for i, p in enumerate(pool.prompt):
        if p in train_prompts:
            by_prompt.setdefault(p, []).append(i)
    prompts = sorted(by_prompt)
    fb = reward.Feedback()
    while len(fb) < n:
        a, b = rng.sample(by_prompt[rng.choice(prompts)], 2)
        winner, thumb_a, thumb_b = clicks(pref, pool.samples[a], pool.samples[b], rng)
        for event in (("pair", a, b, winner), ("thumb", a, thumb_a), ("thumb", b, thumb_b)):
            if len(fb) == n:
                break
            if event[0] == "pair":
                fb.pairs.append((event[1], event[2], event[3]))
            else:
                fb.thumbs.append((event[1], event[2]))
    return fb


def clicked_rows(x: torch.Tensor, fb: reward.Feedback) -> tuple[torch.Tensor, reward.Feedback]:
    """Only the rows the clicks touch, the clicks re-indexed to them (what a user's fit sees)."""
    rows = sorted({i for a, b, _ in fb.pairs for i in (a, b)} | {i for i, _ in fb.thumbs})
    at = {r: k for k, r in enumerate(rows)}
    return x[rows], reward.Feedback(
        [(at[a], at[b], o) for a, b, o in fb.pairs], [(at[i], t) for i, t in fb.thumbs]
    )


def balanced_accuracy(liked: torch.Tensor, truth: torch.Tensor) -> float | None:
    if truth.all() or not truth.any():
        return None
    tpr = liked[truth].float().mean().item()
    tnr = (~liked[~truth]).float().mean().item()
    return (tpr + tnr) / 2


def pair_accuracy(scores: torch.Tensor, graded: torch.Tensor, groups: list[list[int]]) -> float:
    right = total = 0.0
    for g in groups:
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                a, b = g[x], g[y]
                if graded[a] == graded[b]:
                    continue
                better, worse = (a, b) if graded[a] > graded[b] else (b, a)
                total += 1
                d = scores[better] - scores[worse]
                right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return right / total if total else float("nan")


def evaluate(
    pool: Pool, x: torch.Tensor, d: Design, taste: str, n: int, draws: int, seed: int
) -> tuple[list[float], list[float]]:
    """(balanced accuracies, pair accuracies) over `draws` random users of `taste`."""
    pref = ALL[taste]
    sat, graded = (torch.tensor(v) for v in labels(pool, pref))
    prompts = sorted(set(pool.prompt))
    balanced, pair_accuracies = [], []
    for k in range(draws):
        rng = random.Random(seed * 1000 + k)
        held = set(rng.sample(prompts, len(prompts) // 3))
        train = set(prompts) - held
        fb = simulate(pool, pref, train, n, rng)
        z, local = clicked_rows(x, fb)
        head, _ = reward.fit_liking(z, local, d.config, d.l2)
        scores = head(x).detach()
        liked = scores > head.threshold.detach()
        rows = torch.tensor([p in held for p in pool.prompt])
        b = balanced_accuracy(liked[rows], sat[rows])
        if b is not None:
            balanced.append(b)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(pool.prompt):
            if p in held:
                groups.setdefault(p, []).append(i)
        pair_accuracies.append(pair_accuracy(scores, graded, list(groups.values())))
    return balanced, pair_accuracies


# active pairs ---------------------------------------------------------------------------------


def pair_trial(
    pool: Pool,
    x: torch.Tensor,
    d: Design,
    pref: Preference,
    held: set[int],
    checkpoints: tuple[int, ...],
    k: int,
    mode: str,
    rng: random.Random,
) -> tuple[float, dict[int, RewardHead]]:
    """A user who answers Compares (A/B only), each showing two of k replies to a train
    prompt: the first two drawn, or the pair `online_rl.pairs` picks with the head fitted on
    the choices so far. (share of choices that named a winner, the head after each checkpoint's
    number of choices)"""
    by_prompt: dict[int, list[int]] = {}
    for i, p in enumerate(pool.prompt):
        if p not in held:
            by_prompt.setdefault(p, []).append(i)
    prompts = sorted(by_prompt)
    fb = reward.Feedback()
    head = reward.RewardHead(x.shape[1])
    decided, heads = 0, {}
    for n in range(1, max(checkpoints) + 1):
        candidates = rng.sample(by_prompt[rng.choice(prompts)], k)
        if mode == "random":
            a, b = candidates[:2]
        elif not fb.pairs:
            i, j = pairs.most_different(x[candidates])
            a, b = candidates[i], candidates[j]
        else:
            z, local = clicked_rows(x, fb)
            belief = pairs.posterior(head, z, local, d.config, d.l2)
            if mode == "thompson":
                gen = torch.Generator().manual_seed(rng.randrange(2**31))
                i, j = pairs.thompson(x[candidates], head, belief, gen)
            else:
                i, j = pairs.most_informative(x[candidates], head, belief)
            a, b = candidates[i], candidates[j]
        winner, _, _ = clicks(pref, pool.samples[a], pool.samples[b], rng)
        decided += winner in ("a", "b")
        fb.pairs.append((a, b, winner))
        head, _ = reward.fit_head(*clicked_rows(x, fb), d.config, d.l2)
        if n in checkpoints:
            heads[n] = head
    return decided / max(checkpoints), heads


def pair_lab(
    pool: Pool,
    x: torch.Tensor,
    d: Design,
    taste: str,
    checkpoints: tuple[int, ...],
    draws: int,
    seed: int,
) -> dict[str, dict[str, list[float]]]:
    """Random vs active pairs for one taste: informative share and held-out pair accuracy."""
    pref = ALL[taste]
    _, graded = (torch.tensor(v) for v in labels(pool, pref))
    prompts = sorted(set(pool.prompt))
    out: dict[str, dict[str, list[float]]] = {}
    for mode in MODES:
        cell: dict[str, list[float]] = {"informative": []}
        for k in range(draws):
            rng = random.Random(seed * 1000 + k)
            held = set(rng.sample(prompts, len(prompts) // 3))
            share, heads = pair_trial(pool, x, d, pref, held, checkpoints, 4, mode, rng)
            groups: dict[int, list[int]] = {}
            for i, p in enumerate(pool.prompt):
                if p in held:
                    groups.setdefault(p, []).append(i)
            cell["informative"].append(share)
            for n, head in heads.items():
                accuracy = pair_accuracy(head(x).detach(), graded, list(groups.values()))
                cell.setdefault(f"pair_accuracy_{n}", []).append(accuracy)
        out[mode] = cell
    return out


# the run -----------------------------------------------------------------------------------------


def spread(xs: list[float]) -> str:
    """mean ± standard deviation over draws."""
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} ± {sd:.2f}"


def run(args: argparse.Namespace, options: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attune bench heads")
    parser.add_argument("--seeds", type=int, default=10, help="pool replies per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="pool reply length")
    parser.add_argument("--batch", type=int, default=32, help="replies sampled at once")
    parser.add_argument("--draws", type=int, default=20, help="random users per cell")
    parser.add_argument("--designs", default="", help="comma-separated design names (all)")
    parser.add_argument("--tastes", default=",".join(TASTES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pairs",
        default="",
        metavar="DESIGN",
        help="instead of the head table: random vs active A/B pairs with this design's head",
    )
    parser.add_argument("--pair-draws", type=int, default=10, help="random users per cell")
    parser.add_argument("--out", default=str(RESULTS / "heads.json"))
    opts = parser.parse_args(options)
    folder = Path(args.data_dir) / "bench-heads-pool"
    cache = Path(args.model_cache) if args.model_cache else Path(args.data_dir) / "models"
    asst = Assistant.open(
        folder, model=args.model, quantize=args.quantize, device=args.device, model_cache=cache
    )
    try:
        pool = build_pool(asst, folder, opts.seeds, opts.max_new_tokens, opts.batch)
    finally:
        asst.close()
    tastes = opts.tastes.split(",")
    if opts.pairs:
        return run_pairs(pool, opts, options, tastes)
    sizes = [int(n) for n in opts.sizes.split(",")]
    chosen = set(opts.designs.split(",")) if opts.designs else None
    designs = [d for d in DESIGNS if chosen is None or d.name in chosen]
    base_rates = {t: statistics.mean(labels(pool, ALL[t])[0]) for t in tastes}
    for t, r in base_rates.items():
        print(f"  {t:<14} base rate {r:.3f}  ({ALL[t].kind})")
    rows, raw, seconds = [], {}, {}
    for d in designs:
        started = time.monotonic()
        x = design_matrix(pool, d)
        for t in tastes:
            cells = [evaluate(pool, x, d, t, n, opts.draws, opts.seed) for n in sizes]
            raw[f"{d.name} | {t}"] = {
                str(n): {"balanced": b, "pairs": p} for n, (b, p) in zip(sizes, cells, strict=True)
            }
            rows.append(
                [
                    d.name,
                    t,
                    f"{base_rates[t]:.2f}",
                    *(spread(b) for b, _ in cells),
                    *(spread(p) for _, p in cells),
                ]
            )
        seconds[d.name] = round(time.monotonic() - started, 1)
        print(f"  {d.name}: {seconds[d.name]} s", flush=True)
    headers = [
        "design",
        "taste",
        "base rate",
        *(f"balanced acc, {n} clicks" for n in sizes),
        *(f"pair acc, {n} clicks" for n in sizes),
    ]
    out = Path(opts.out)
    write(
        out.stem,
        f"attune bench heads {' '.join(options)}".strip(),
        headers,
        rows,
        {
            "pool": {"replies": len(pool.samples), "prompts": len(set(pool.prompt))},
            "base_rates": base_rates,
            "kinds": {t: ALL[t].kind for t in tastes},
            "draws": opts.draws,
            "seconds_per_design": seconds,
            "designs": {d.name: {**d.__dict__, "spec": d.spec.key} for d in designs},
            "raw": raw,
        },
        out.parent,
    )
    plot(out)
    return 0


def plot(result: Path) -> None:
    """Balanced accuracy after 32 and 64 clicks per taste: today's head against the default."""
    data = json.loads(result.read_text())
    first, last = DESIGNS[0].name, CHOSEN.name
    tastes = list(data["base_rates"])
    series = {}
    for name in (first, last):
        for n in ("32", "64"):
            cells = [data["raw"].get(f"{name} | {t}", {}).get(n) for t in tastes]
            if all(cells):
                label = "today" if name == first else "default"
                series[f"{label}, {n} clicks"] = [statistics.mean(c["balanced"]) for c in cells]
    if series:
        bar_plot(
            result.with_suffix(".png"),
            "held-out balanced accuracy of 'liked' (mean over random users)",
            [f"{t} ({data['base_rates'][t]:.0%})" for t in tastes],
            series,
            "balanced accuracy",
            target=0.8,
            target_label="target for 5-15% tastes at 64",
        )


def run_pairs(pool: Pool, opts: argparse.Namespace, options: list[str], tastes: list[str]) -> int:
    """The active-pairs table: per taste, random vs active pairs after 16 and 32 choices."""
    [design] = [d for d in DESIGNS if d.name == opts.pairs]
    x = design_matrix(pool, design)
    rows, raw = [], {}
    for t in tastes:
        started = time.monotonic()
        cell = pair_lab(pool, x, design, t, (16, 32), opts.pair_draws, opts.seed)
        raw[t] = cell
        for mode in MODES:
            c = cell[mode]
            rows.append(
                [
                    t,
                    mode,
                    spread(c["informative"]),
                    spread(c["pair_accuracy_16"]),
                    spread(c["pair_accuracy_32"]),
                ]
            )
        print(f"  {t}: {time.monotonic() - started:.1f} s", flush=True)
    out = Path(opts.out)
    write(
        out.stem,
        f"attune bench heads {' '.join(options)}".strip(),
        ["taste", "pairs", "informative share", "pair acc, 16 choices", "pair acc, 32 choices"],
        rows,
        {
            "design": {**design.__dict__, "spec": design.spec.key},
            "draws": opts.pair_draws,
            "candidates": 4,
            "raw": raw,
        },
        out.parent,
    )
    return 0
