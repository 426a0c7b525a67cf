"""Shared fixtures. No network: HF_HUB_OFFLINE is set before transformers is imported anywhere."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
