"""What every attack shares: requests as conversations, the Attack and InteractiveAttack shapes, seeded rngs.

A request is a conversation (`list[dict]` of {"role", "content"} ending with a user turn); a plain string is
one user message. An attack rewrites it deterministically given a `random.Random`, and its `decode` undoes
whatever encoding the attack asked the answer to be written in, so a scorer reads plain text.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from typing import ClassVar

from alignkit.errors import AlignkitError

Messages = list[dict]


def as_messages(request: str | Messages) -> Messages:
    """A fresh copy of the request as a conversation; a string becomes one user message."""
    if isinstance(request, str):
        return [{"role": "user", "content": request}]
    if not isinstance(request, list) or not request:
        raise AlignkitError(f"request: must be a string or a non-empty list of messages, got {type(request).__name__}")
    for i, message in enumerate(request):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise AlignkitError(f"request: message {i}: must be a dict with a role and a string content")
    if request[-1]["role"] != "user":
        raise AlignkitError(f"request: must end with a user message, ends with {request[-1]['role']!r}")
    return [dict(message) for message in request]


def request_text(request: str | Messages) -> str:
    """The text being asked: the content of the final user message."""
    return as_messages(request)[-1]["content"]


def attack_rng(seed: int, prompt_text: str, attack_name: str) -> random.Random:
    """An rng for one (prompt, attack) pair. sha256, not hash(): Python salts str hashes per process."""
    digest = hashlib.sha256(f"{seed}\0{prompt_text}\0{attack_name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class Attack:
    """The plain request, unchanged: the baseline every attack is compared with.

    Subclasses rewrite the final user message in `rewrite` (or the whole conversation in `transform`) and,
    when they ask for an encoded answer, invert that encoding in `decode`.
    """

    name: ClassVar[str] = "none"

    def transform(self, messages: str | Messages, rng: random.Random) -> Messages:
        """The attacked conversation; the input is not modified."""
        messages = as_messages(messages)
        messages[-1]["content"] = self.rewrite(messages[-1]["content"], rng)
        return messages

    def rewrite(self, text: str, rng: random.Random) -> str:
        return text

    def decode(self, response: str) -> str:
        """The response as plain text (the identity unless the attack asked for an encoded answer)."""
        return response


class Composed(Attack):
    """Several attacks applied left to right: each one rewrites what the previous one produced.

    Decoding runs right to left, because the last attack's instructions are the outermost layer the model
    reads, so an answer that follows all of them is encoded by the last attack on the outside.
    """

    def __init__(self, attacks: list[Attack], name: str):
        self.attacks = list(attacks)
        self.name = name

    def transform(self, messages: str | Messages, rng: random.Random) -> Messages:
        messages = as_messages(messages)
        for attack in self.attacks:
            messages = attack.transform(messages, rng)
        return messages

    def decode(self, response: str) -> str:
        for attack in reversed(self.attacks):
            response = attack.decode(response)
        return response


class InteractiveAttack(ABC):
    """An attack that needs the model's replies: it opens a conversation and writes each next user turn.

    `follow_up` gets the original request, the transcript so far (ending with the model's last reply), that
    reply, the number of the user turn it is writing (the opening is turn 1), the conversation's rng, and
    whether the reply was a refusal; it returns the next user message, or None to stop.
    """

    name: ClassVar[str] = "interactive"

    @abstractmethod
    def opening(self, messages: str | Messages, rng: random.Random) -> Messages:
        """The conversation's first user turn(s)."""

    @abstractmethod
    def follow_up(self, request_messages: Messages, history: Messages, last_reply: str, turn: int,
                  rng: random.Random, refused: bool) -> str | None:
        """The next user message, or None to stop."""

    def decode(self, response: str) -> str:
        return response
