"""The four data formats, their detection, validation and conversions.

Field names are TRL's, so datasets made for TRL load unchanged:

- sft:        {"messages": [...]}  or  {"prompt", "completion"}  or  {"text"}
- preference: {"prompt", "chosen", "rejected"} (prompt may be implicit in chosen/rejected), optional "margin"
- unpaired:   {"prompt", "completion", "label": bool}   (KTO)
- prompt:     {"prompt"}

Each text field is a string or a conversation: a list of {"role", "content"} messages. Extra columns are
kept untouched. Validation reports problems as (field, why) pairs; `Problem.format` renders the one-line
`path:line: field: why` users see.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

KINDS = ("sft", "preference", "unpaired", "prompt")
ROLES = ("system", "user", "assistant", "tool")
"""Message roles of conversational data; "tool" holds a tool's reply (multi-turn, tool-using data: docs/agents.md)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. `line` is 1-based; None for problems with the whole file."""

    line: int | None
    field: str
    why: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line is not None else str(path)
        return f"{where}: {self.field}: {self.why}"


def is_conversational(value: Any) -> bool:
    """True for a list of role/content messages (the conversational form of a text field)."""
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


def detect_kind(row: Any) -> str | None:
    """Guess the format of one row from its keys; None when it matches none."""
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if "chosen" in keys or "rejected" in keys:
        return "preference"  # a row missing one of the two is a broken pair, not a prompt row
    if {"completion", "label"} <= keys:
        return "unpaired"
    if "messages" in keys or "text" in keys or {"prompt", "completion"} <= keys:
        return "sft"
    if "prompt" in keys:
        return "prompt"
    return None


# ----------------------------------------------------------------------------------------------------
# validation


def show(value: Any) -> str:
    """A value as the user wrote it in JSON: true, "yes", 1.5 (non-finite numbers as nan / inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def type_name(value: Any) -> str:
    """JSON's name for a value's type, with an article: "an object", "a list", "null"."""
    name = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value))
    return name or ("a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}")


def _check_text(field: str, value: Any, *, final_role: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """Check a text field: a non-empty string, or a conversation whose last role is in `final_role`."""
    if isinstance(value, str):
        return [] if value.strip() else [(field, "empty string")]
    if not isinstance(value, list):
        return [(field, f"must be a string or a list of {{role, content}} messages, got {type_name(value)}")]
    if not value:
        return [(field, "empty conversation (no messages)")]
    problems = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            problems.append((where, f"must be an object with role and content, got {type_name(message)}"))
            continue
        role, content = message.get("role"), message.get("content")
        if "role" not in message:
            problems.append((f"{where}.role", "missing"))
        elif role not in ROLES:
            problems.append((f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r}"))
        if "content" not in message:
            problems.append((f"{where}.content", "missing"))
        elif not isinstance(content, str):
            problems.append((f"{where}.content", f"must be a string, got {type_name(content)}"))
        elif not content.strip() and role != "system":
            problems.append((f"{where}.content", "empty string"))
    last = value[-1]
    if final_role and not problems and isinstance(last, dict) and last.get("role") not in final_role:
        wanted = " or ".join(final_role)
        problems.append((field, f"conversation must end with the {wanted} turn, got a final {last.get('role')!r} turn"))
    return problems


def _same_form(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """All text fields of a row are strings, or all are conversations: mixing them is ambiguous."""
    forms = {name: isinstance(v, list) for name, v in fields.items() if isinstance(v, (str, list))}
    if len(set(forms.values())) > 1:
        strings = [n for n, conv in forms.items() if not conv]
        convs = [n for n, conv in forms.items() if conv]
        others = " and ".join(convs) + (" are conversations" if len(convs) > 1 else " is a conversation")
        return [(strings[0], f"is a string while {others}; use one form per row")]
    return []


def _require(row: dict, *fields: str) -> list[tuple[str, str]]:
    return [(f, "missing") for f in fields if f not in row or row[f] is None]


def _check_preference(row: dict) -> list[tuple[str, str]]:
    problems = _require(row, "chosen", "rejected")
    if problems:
        return problems
    explicit = "prompt" in row and row["prompt"] is not None
    answer_roles = ("assistant",)
    problems += _check_text("chosen", row["chosen"], final_role=answer_roles)
    problems += _check_text("rejected", row["rejected"], final_role=answer_roles)
    if explicit:
        problems += _check_text("prompt", row["prompt"], final_role=None)
    fields = {k: row[k] for k in ("prompt", "chosen", "rejected") if k in row and row[k] is not None}
    problems += _same_form(fields)
    if not problems and row["chosen"] == row["rejected"]:
        problems.append(("rejected", "identical to chosen (a tie carries no preference)"))
    if not problems and not explicit:
        prompt, _, _ = _split_prompt(row["chosen"], row["rejected"])
        if not prompt:
            problems.append(("prompt", "missing, and chosen and rejected share no prompt to take it from"))
    if "margin" in row and row["margin"] is not None:
        margin = row["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            problems.append(("margin", f"must be a finite number, got {show(margin)}"))
    return problems


def _check_unpaired(row: dict) -> list[tuple[str, str]]:
    problems = _require(row, "prompt", "completion", "label")
    if problems:
        return problems
    problems += _check_text("prompt", row["prompt"], final_role=None)
    problems += _check_text("completion", row["completion"], final_role=("assistant",))
    problems += _same_form({"prompt": row["prompt"], "completion": row["completion"]})
    if not isinstance(row["label"], bool):
        problems.append(("label", f"must be true or false, got {show(row['label'])}"))
    return problems


def _check_sft(row: dict) -> list[tuple[str, str]]:
    if "messages" in row:
        problems = _check_text("messages", row["messages"], final_role=("assistant",))
        if not problems and not isinstance(row["messages"], list):
            problems.append(("messages", "must be a list of {role, content} messages, got string"))
        return problems
    if "text" in row and "completion" not in row:
        if not isinstance(row["text"], str):
            return [("text", f"must be a string, got {type_name(row['text'])}")]
        return _check_text("text", row["text"], final_role=None)
    problems = _require(row, "prompt", "completion")
    if problems:
        return problems
    problems += _check_text("prompt", row["prompt"], final_role=None)
    problems += _check_text("completion", row["completion"], final_role=("assistant",))
    return problems + _same_form({"prompt": row["prompt"], "completion": row["completion"]})


def _check_prompt(row: dict) -> list[tuple[str, str]]:
    return _require(row, "prompt") or _check_text("prompt", row["prompt"], final_role=("user", "system"))


CHECKS = {"sft": _check_sft, "preference": _check_preference, "unpaired": _check_unpaired, "prompt": _check_prompt}


def check_row(row: Any, kind: str) -> list[tuple[str, str]]:
    """Problems with one row of the given kind, as (field, why) pairs; empty when valid."""
    if not isinstance(row, dict):
        return [("row", f"must be a JSON object, got {type_name(row)}")]
    return CHECKS[kind](row)


# ----------------------------------------------------------------------------------------------------
# conversions


def _split_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Split implicit-prompt chosen/rejected into (shared prompt, chosen answer, rejected answer).

    Conversations: the prompt is the longest shared run of messages, always leaving the final turn out.
    Strings: the prompt ends after the last shared "Assistant:" marker (HH-RLHF transcripts); without
    one, at the last whitespace of the shared prefix, so a word both answers start with stays in them.
    """
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        limit = min(len(chosen), len(rejected)) - 1
        while n < limit and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        return None, chosen, rejected
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    shared = chosen[:n]
    marker = shared.rfind("Assistant:")
    if marker >= 0:
        cut = marker + len("Assistant:")
    else:
        cut = max(shared.rfind(" "), shared.rfind("\n")) + 1
    while cut < n and cut > 0 and chosen[cut] == " ":
        cut += 1  # the space after "Assistant:" belongs to the prompt
    return chosen[:cut], chosen[cut:], rejected[cut:]


def explicit_prompt(row: dict) -> dict:
    """Return a preference row with an explicit prompt (a copy; rows that already have one are returned as is)."""
    if row.get("prompt") is not None:
        return row
    prompt, chosen, rejected = _split_prompt(row["chosen"], row["rejected"])
    return {**row, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def preference_to_unpaired(rows: list[dict]) -> list[dict]:
    """Turn each preference pair into two KTO rows: (prompt, chosen, True) and (prompt, rejected, False)."""
    out = []
    for row in rows:
        row = explicit_prompt(row)
        extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "margin")}
        out.append({**extra, "prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({**extra, "prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out


def split_sft(row: dict) -> tuple[Any, Any]:
    """(prompt, completion) of an sft row; prompt is "" for plain {"text"} rows."""
    if "messages" in row:
        messages = row["messages"]
        return messages[:-1], messages[-1:]
    if "text" in row and "completion" not in row:
        return "", row["text"]
    return row["prompt"], row["completion"]


def preference_row(prompt, chosen: str, rejected: str, p_chosen: float | None, judge_name: str, extra: dict,
                   tie=False):
    """A TRL-style preference row; p_chosen None leaves that column out (labels that are not a judge's
    probability: human votes, revisions, best-of-n)."""
    if isinstance(prompt, list):  # TRL's conversational form: the responses are assistant turns too
        chosen, rejected = assistant_turn(chosen), assistant_turn(rejected)
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if p_chosen is not None:
        row["p_chosen"] = round(p_chosen, 4)
    row["judge"] = judge_name
    if tie:
        row["tie"] = True
    return {**row, **{k: v for k, v in extra.items() if k not in row}}


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]
