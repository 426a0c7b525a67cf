"""The shared core of the OpenAI-style request and reply readers: the `Text` each of them lists, their errors,
and the JSON helpers both need.

The guard proxy's input and output rails read texts only through `alignkit.safety.openai_request` (requests,
rebuilt from an allowlist of fields) and `alignkit.safety.openai_reply` (replies, rebuilt from an allowlist
of their shape), so a field the rails do not know about cannot carry text past them. Both import this module;
neither imports the other.

Each text comes as a `Text(where, role, text, model_reads, rewritable)`. `model_reads` is False for
parameters the server reads but the model does not (ids, the model name, stop strings, media URLs): the
deny-lists read those, the guard and PII redaction do not. `rewritable` is False for texts that cannot be
edited in place (logprobs, a joined conversation): when redaction would change one, the caller drops it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}


class RequestError(ValueError):
    """A request the proxy will not forward; the message is the one line the client sees (400)."""


class ReplyError(ValueError):
    """An upstream reply that is not a completion object; the message is the one line the client sees (502)."""


@dataclass(frozen=True)
class Text:
    where: str
    """the field's path, e.g. messages[2].content[0].text"""
    role: str
    """who wrote it as the model reads it: a message role, tools, prompt, response, or parameter"""
    text: str
    model_reads: bool = True
    """False for parameters the server reads but the model does not: deny-lists only"""
    rewritable: bool = True
    """False when the field cannot be edited in place (logprobs, a joined conversation)"""


Visit = Callable[[Text], str]
JSON_VIEW = "#json"


def json_strings(text: str) -> str | None:
    """The strings inside a JSON text (keys too), one per line, when the text is JSON whose escapes could
    hide a word (`\\n` before it, `\\u007a` inside it); None otherwise. Tool-call arguments are JSON, and
    the model reads them decoded."""
    if "\\" not in text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return "\n".join(all_strings(value))


def all_strings(value) -> list[str]:
    """Every string inside a JSON value (object keys too), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *all_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return []
