"""What an imported row may hold, and the pairwise items it becomes.

A row is {"prompt", "responses": [...], optional "model"/"models"} (what `alignkit generate-pairs` writes)
or {"prompt", "chosen", "rejected"} (preference data to judge again). A prompt is a string or a
conversation (a list of {"role", "content"} strings); responses are strings; chosen and rejected are
strings or conversations. Every field's type is checked, and so is every string anywhere in the row
(extra columns included), so a row that passes is one the database will store: nothing reaches a 500.
"""

from __future__ import annotations

import itertools
import json

from alignkit.annotate.db import text_problem

MAX_ROW_CHARS = 1 << 20  # one row's JSON; a bigger one is refused rather than stored
MAX_RESPONSES = 32  # k responses make k(k-1)/2 items: 32 make 496
MAX_MODEL_CHARS = 300  # the model_a/model_b columns
SKIPPED = ("prompt", "responses", "models", "model", "chosen", "rejected", "finish_reasons")


def _conversation_problem(field: str, value) -> str | None:
    if not isinstance(value, list) or not value:
        return f"{field}: expected a string or a non-empty list of {{role, content}} turns"
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                or not isinstance(turn.get("content"), str):
            return f"{field}[{i}]: expected {{\"role\": string, \"content\": string}}"
    return None


def _text_or_conversation_problem(field: str, value) -> str | None:
    return None if isinstance(value, str) else _conversation_problem(field, value)


def _strings(value):
    """Every string in a JSON value, keys included, without recursion."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _responses_problem(row: dict) -> str | None:
    responses = row["responses"]
    if not isinstance(responses, list) or not 2 <= len(responses) <= MAX_RESPONSES:
        return f"responses: expected a list of at least 2 responses (at most {MAX_RESPONSES})"
    if not all(isinstance(r, str) for r in responses):
        return "responses: expected strings"
    models = row.get("models")
    if models is not None and (not isinstance(models, list) or len(models) != len(responses)):
        return "models: expected a list with one model name per response"
    for name in (models or []) + [row.get("model")]:
        if name is not None and (not isinstance(name, str) or len(name) > MAX_MODEL_CHARS):
            return f"models: a model name must be a string of at most {MAX_MODEL_CHARS} characters"
    return None


def check_import_row(row) -> str | None:
    """Why an imported row cannot become items (None when it can)."""
    if not isinstance(row, dict):
        return "row: must be a JSON object"
    try:
        size = len(json.dumps(row, ensure_ascii=False, allow_nan=False))
    except ValueError:
        return "row: NaN and Infinity are not JSON numbers"
    if size > MAX_ROW_CHARS:
        return f"row: longer than {MAX_ROW_CHARS} characters of JSON"
    if "prompt" not in row:
        return "prompt: missing"
    why = _text_or_conversation_problem("prompt", row["prompt"])
    if why:
        return why
    if "responses" in row:
        why = _responses_problem(row)
    elif "chosen" in row and "rejected" in row:
        why = (_text_or_conversation_problem("chosen", row["chosen"])
               or _text_or_conversation_problem("rejected", row["rejected"]))
    else:
        why = "responses: missing (or chosen and rejected)"
    if why:
        return why
    return next(filter(None, (text_problem("row", text) for text in _strings(row))), None)


def pair_items(row: dict) -> list[dict]:
    """The pairwise items of one checked row: every pair of distinct responses."""
    if "responses" in row:
        responses = row["responses"]
        models = row.get("models") or [row.get("model")] * len(responses)
    else:
        responses, models = [row["chosen"], row["rejected"]], [None, None]
    texts = [r if isinstance(r, str) else r[-1]["content"] for r in responses]
    extra = {k: v for k, v in row.items() if k not in SKIPPED}
    return [{"prompt": row["prompt"], "response_a": texts[i], "response_b": texts[j], "model_a": models[i],
             "model_b": models[j], "extra": extra}
            for i, j in itertools.combinations(range(len(texts)), 2) if texts[i] != texts[j]]
