"""Small datasets of our own writing that ship with the package (the demo and tests use them)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def builtin_path(name: str) -> Path:
    """Path of a built-in dataset file, e.g. builtin_path("prompts.jsonl")."""
    return HERE / name


def builtin_prompts() -> list[dict]:
    """The demo's prompts: prompt-format rows with conversational prompts."""
    with open(builtin_path("prompts.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
