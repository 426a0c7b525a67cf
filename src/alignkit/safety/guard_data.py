"""The guard's data: the built-in rows, extra JSONL files (checked), and rows made from red-team transcripts,
all as {"text", "role", "categories"} (docs/guard.md)."""

from __future__ import annotations

import json
import os
import random

from alignkit.data.builtin import builtin_path
from alignkit.data.io import Problem, scan
from alignkit.errors import DataError

ROLES = ("prompt", "response")
HARMFUL_FILES = ("harmful.jsonl", "harmful_taxonomy.jsonl")
SAFE_FILES = ("benign_risky.jsonl", "benign_risky_train.jsonl", "benign_taxonomy.jsonl", "helpful.jsonl")
RESPONSE_FILES = ("guard_responses.jsonl",)
GUARD_FILES = HARMFUL_FILES + SAFE_FILES + RESPONSE_FILES + ("sft.jsonl",)  # what the default guard trains on
COMPOSITES = 400


def prompt_text(prompt) -> str:
    """A prompt as text: a string as is, a conversation as its user turns joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("role") == "user")


def builtin_rows(split: str) -> list[dict]:
    """The built-in guard data of one split as {"text", "role", "categories"} rows.

    Harmful prompts carry their hazard (harmful.jsonl, and for training harmful_taxonomy.jsonl, written from the
    taxonomy's definitions); benign look-alikes (benign_risky.jsonl, and for training benign_risky_train.jsonl
    and benign_taxonomy.jsonl, written from the taxonomy's "not covered" lists) and helpful prompts are safe;
    the response set (guard_responses.jsonl) holds refusals, benign answers and elided placeholder compliance."""
    def read(name):
        with open(builtin_path(name), encoding="utf-8") as f:
            return [r for r in map(json.loads, filter(str.strip, f)) if r["split"] == split]

    rows = [{"text": prompt_text(r["prompt"]), "role": "prompt", "categories": [r["hazard"]]}
            for name in HARMFUL_FILES for r in read(name)]
    rows += [{"text": prompt_text(r["prompt"]), "role": "prompt", "categories": []}
             for name in SAFE_FILES for r in read(name)]
    rows += [{"text": r["text"], "role": r["role"], "categories": list(r["categories"])}
             for r in read("guard_responses.jsonl")]
    return rows


def sft_answers() -> list[dict]:
    """The assistant turns of the built-in SFT chats (sft.jsonl, all training data) as safe responses."""
    with open(builtin_path("sft.jsonl"), encoding="utf-8") as f:
        chats = [json.loads(line)["messages"] for line in f if line.strip()]
    return [{"text": m["content"], "role": "response", "categories": []}
            for chat in chats for m in chat if m["role"] == "assistant"]


def composite_rows(rows: list[dict], count: int = COMPOSITES, seed: int = 0) -> list[dict]:
    """Longer training texts made of the short ones (docs/guard.md, "Long texts"). The rows are a sentence or
    two; a head trained on those alone read any longer text as unusual, and flagged it (a three-sentence note
    about gardening scored p(unsafe) 0.99). For each role: `count` safe texts (2-8 safe texts of that role
    joined, or one of them repeated 2-6 times) and `count` unsafe ones (1-7 safe texts with one unsafe text of
    that role put in at a random place, labelled with its categories); a quarter as many for responses."""
    rng = random.Random(seed)
    out = []
    for role, n in (("prompt", count), ("response", count // 4)):
        safe = [r["text"] for r in rows if r["role"] == role and not r["categories"]]
        unsafe = [r for r in rows if r["role"] == role and r["categories"]]
        if len(safe) < 8 or not unsafe:
            continue
        for i in range(n):
            parts = [rng.choice(safe)] * rng.randint(2, 6) if i % 4 == 0 else rng.sample(safe, rng.randint(2, 8))
            out.append({"text": " ".join(parts), "role": role, "categories": []})
            bad = rng.choice(unsafe)
            parts = rng.sample(safe, rng.randint(1, 7))
            parts.insert(rng.randint(0, len(parts)), bad["text"])
            out.append({"text": " ".join(parts), "role": role, "categories": list(bad["categories"])})
    return out


def training_rows() -> list[dict]:
    """What the default guard trains on: the built-in train split, the SFT chats' answers, and the composite
    long texts made of them."""
    rows = builtin_rows("train") + sft_answers()
    return rows + composite_rows(rows)


def load_guard_rows(path: str | os.PathLike, known: list[str]) -> list[dict]:
    """Rows of an extra JSONL file, checked; DataError with one `path:line: field: why` per problem. A row may
    also be an `alignkit redteam` transcript, which becomes the rows `transcript_rows` makes of it."""
    rows, problems = [], []
    for line, row in scan(path):
        if isinstance(row, Problem):
            problems.append(row.format(str(path)))
            continue
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            problems.append(f"{where}: row: expected an object with text, role, categories")
            continue
        for candidate in transcript_rows(row) if "attack" in row and "conversation" in row else [row]:
            problem = row_problem(candidate, known)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                rows.append({"text": candidate["text"], "role": candidate.get("role", "prompt"),
                             "categories": list(dict.fromkeys(candidate["categories"]))})
    if not rows and not problems:
        problems.append(f"{path}: file: no rows")
    if problems:
        raise DataError(problems)
    return rows


def row_problem(row: dict, known: list[str]) -> str | None:
    text, role, cats = row.get("text"), row.get("role", "prompt"), row.get("categories")
    if not isinstance(text, str) or not text.strip():
        return "text: expected a non-empty string"
    if role not in ROLES:
        return f"role: expected prompt or response, got {role!r}"
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        return "categories: expected a list of hazard ids ([] for safe)"
    bad = next((c for c in cats if c not in known), None)
    if bad is not None:
        return f"categories: {bad!r} is not a hazard id of the taxonomy (docs/guard.md)"
    return None


def transcript_rows(row: dict) -> list[dict]:
    """Guard rows from one red-team transcript (safety/redteam.py): the attacked request as it reached the
    model (its last user message) is a prompt of the request's hazard; a refused reply is a safe response; a
    successful attack's reply is a response of that hazard (as the run's harm judge labelled it: check those
    labels before training on them); a reply that neither refused nor was judged harmful is left out."""
    hazard = row.get("hazard")
    users = [m["content"] for m in row["conversation"] if m.get("role") == "user"]
    out = [{"text": users[-1], "role": "prompt", "categories": [hazard]}] if users and hazard else []
    reply = row.get("decoded") or row.get("reply") or ""
    if reply.strip() and row.get("refused"):
        out.append({"text": reply, "role": "response", "categories": []})
    elif reply.strip() and row.get("success") and hazard:
        out.append({"text": reply, "role": "response", "categories": [hazard]})
    return out
