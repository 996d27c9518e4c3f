"""What an assistant's replies are like, measured on their text — and how two versions differ,
in sentences a user reads ("answers about 40% shorter").

Each trait is a plain measurement of one reply (words, a heading, bold, a list, a question
back, "you", emoji, a refusal, an exclamation); a version's value is the mean over its replies.
Two versions are compared on replies to the same questions with the same seeds (the release
gate's pairs), so a difference is the version's, not the questions'. Never the model
describing itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

HEADING = re.compile(r"^\s{0,3}#{1,6}\s", re.M)
BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S", re.M)
YOU = re.compile(r"\b(?:you|your|yours|yourself)\b", re.I)
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f1e6-\U0001f1ff]")
REFUSAL = re.compile(
    r"\b(?:I can(?:'|no)t help|I can(?:'|no)t (?:do|provide|assist)|I'm (?:sorry|afraid),? but"
    r"|I am (?:sorry|unable)|I won't|as an AI\b)",
    re.I,
)


def _words(text: str) -> float:
    return float(len(text.split()))


def _has(pattern: re.Pattern[str]) -> Callable[[str], float]:
    return lambda text: float(bool(pattern.search(text)))


def _asks_back(text: str) -> float:
    """A question to the user in the reply's last two sentences."""
    tail = re.split(r"(?<=[.!?])\s+", text.strip())[-2:]
    return float(any(s.rstrip().endswith("?") for s in tail))


def _you_per_100_words(text: str) -> float:
    words = len(text.split())
    return 100.0 * len(YOU.findall(text)) / words if words else 0.0


@dataclass(frozen=True)
class Trait:
    name: str
    measure: Callable[[str], float]
    more: str  # the sentence when the newer version has more of it
    less: str
    kind: str  # "ratio": compared as a ratio (words); "share": as a difference of shares


TRAITS = (
    Trait("words", _words, "answers about {pct} longer", "answers about {pct} shorter", "ratio"),
    Trait("headings", _has(HEADING), "uses headings more often", "uses fewer headings", "share"),
    Trait("bold", _has(BOLD), "puts more in bold", "uses less bold", "share"),
    Trait("lists", _has(LIST_ITEM), "answers in lists more often", "uses fewer lists", "share"),
    Trait(
        "asks_back",
        _asks_back,
        "asks you a question back more often",
        "asks you fewer questions back",
        "share",
    ),
    Trait(
        "you",
        _you_per_100_words,
        "speaks to you directly more often",
        "speaks to you directly less often",
        "ratio",
    ),
    Trait("emoji", _has(EMOJI), "uses more emoji", "uses fewer emoji", "share"),
    Trait("refusals", _has(REFUSAL), "declines more often", "declines less often", "share"),
    Trait("exclamations", _has(re.compile("!")), "sounds more excited", "sounds calmer", "share"),
)


@dataclass(frozen=True)
class TraitConfig:
    """How big a measured difference must be before it is said: a share must move by
    `share_points` (0.15 = 15 points of the replies), a ratio trait by `ratio` (0.15 = 15%).
    Traits both versions barely show (under `floor` on average) are not compared as ratios."""

    share_points: float = 0.15
    ratio: float = 0.15
    floor: float = 0.5


def measure(texts: Sequence[str]) -> dict[str, float]:
    """Each trait's mean over the replies (empty: no replies)."""
    if not texts:
        return {}
    return {t.name: sum(t.measure(x) for x in texts) / len(texts) for t in TRAITS}


def describe(
    before: dict[str, float], after: dict[str, float], config: TraitConfig = TraitConfig()
) -> list[str]:
    """The differences worth saying, largest first, as sentences ("answers about 40% shorter")."""
    said: list[tuple[float, str]] = []
    for t in TRAITS:
        if t.name not in before or t.name not in after:
            continue
        old, new = before[t.name], after[t.name]
        if t.kind == "share":
            size = abs(new - old)
            if size >= config.share_points:
                said.append((size, t.more if new > old else t.less))
            continue
        if max(old, new) < config.floor:
            continue  # neither version shows it enough to compare
        words = t.more if new > old else t.less
        if min(old, new) <= 0:  # from none to some, or back: no ratio to state
            said.append((1.0, words.replace("about {pct} ", "")))
            continue
        change = new / old - 1.0
        if abs(change) >= config.ratio:
            said.append((abs(change), words.format(pct=f"{abs(change):.0%}")))
    return [sentence for _, sentence in sorted(said, key=lambda s: -s[0])]
