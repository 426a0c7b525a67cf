"""Shared fixtures. No network: HF_HUB_OFFLINE is set before transformers is imported anywhere."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402

TINY = "embedded:tiny"
SMOLLM2 = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignkit.models.load import load_tokenizer

    return load_tokenizer(TINY)


@pytest.fixture(scope="session")
def tiny_model_path():
    from alignkit.models.embedded import ensure

    return ensure(TINY)


@pytest.fixture()
def tiny_model():
    """A fresh tiny policy per test (tests may train it)."""
    from alignkit.models.load import load_policy

    return load_policy(TINY, device="cpu")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from alignkit.models.load import load_tokenizer

    return load_tokenizer(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_model():
    from alignkit.models.load import load_policy

    return load_policy(SMOLLM2, device="cpu")


WORDS = "the cat sat on mat dog ran far away over hill river blue green small big tree house road sun moon".split()


def marker_pairs(n: int, seed: int = 0) -> list[dict]:
    """Known preference: the chosen response contains the word "banana", the rejected one never does.
    Lengths are drawn from the same range for both, so length alone tells nothing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = lambda: [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]  # noqa: E731
        chosen, rejected = words(), words()
        chosen[rng.randrange(len(chosen))] = "banana"
        rows.append({"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))),
                     "chosen": " ".join(chosen), "rejected": " ".join(rejected),
                     "split": "test" if i % 5 == 0 else "train"})
    return rows


@pytest.fixture(scope="session")
def make_marker_pairs():
    """`marker_pairs(n, seed)`: preference rows whose known rule is "the response with banana wins"."""
    return marker_pairs


E_SHARE = '''
def e_share(prompts, completions, **columns):
    """The share of the letter e in the response: a target the random tiny model can move towards."""
    return [c.count("e") / max(len(c), 1) for c in completions]
'''


def e_share_reward(directory) -> str:
    """Write the online-RL tests' verifiable reward into `directory`; returns its reward spec (file.py:e_share)."""
    path = directory / "e_share_reward.py"
    path.write_text(E_SHARE)
    return f"{path}:e_share"
