from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from assistant import Assistant
from online_rl.policy import LoraSettings, TrainablePolicy
from tests.tiny import build_tiny_model

SHORT = {"max_new_tokens": 8}
# The tiny model writes random tokens, and the real offensive-language classifier flags some
# of them at random, which would make every round's outcome a coin flip. Tests get a classifier
# that flags exactly these words; tests of the classifier itself are marked `real_classifier`.
OFFENSIVE_WORDS = ("moron", "idiot", "fuck")


@pytest.fixture(autouse=True)
def keyword_classifier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("real_classifier"):
        return
    from online_rl import safety

    monkeypatch.setattr(safety, "offensive_probability", keyword_offensive_probability)


def keyword_offensive_probability(texts: Sequence[str]) -> list[float]:
    """The tests' stand-in for the offensive-language classifier: 1.0 for OFFENSIVE_WORDS."""
    return [float(any(w in t.lower() for w in OFFENSIVE_WORDS)) for t in texts]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def asst(tmp_path: Path, tiny_model_dir: Path):
    with Assistant.open(tmp_path / "data", model=str(tiny_model_dir)) as a:
        yield a


@pytest.fixture
def alice(asst: Assistant) -> str:
    return asst.add_user("alice", password="alice-password").name


@pytest.fixture
def bob(asst: Assistant) -> str:
    return asst.add_user("bob", password="bob-password").name


def row_counts(asst: Assistant) -> dict[str, int]:
    db = asst.store.db
    return {t: db[t].count for t in db.table_names()}


@pytest.fixture
def policy(tiny_model_dir: Path) -> TrainablePolicy:
    """A trainable LoRA policy on a fresh tiny model (no Assistant around it)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.requires_grad_(False)
    return TrainablePolicy(model, LoraSettings(r=4, alpha=8), torch.device("cpu"))
