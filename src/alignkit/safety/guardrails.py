"""Runtime guardrails around any batched generate function.

`Guardrails(generate, guard, config)` is called like the model it wraps, on a batch of conversations, and
returns one `RailResult` per conversation. Each item passes, in order:

1. the per-user rate limit (a token bucket; over it, the item is answered "limited" and nothing else runs);
2. the input rails: deny-list patterns and keywords, PII redaction (if `redact_pii_inputs`), then the guard
   classifier on the last user message (or the whole conversation). A blocked item never reaches the model;
3. the model, called once with the items that passed;
4. the output rails: deny-lists, the guard with role="response", then PII redaction of what is returned.

A blocked item's text is the refusal policy's message: any callable `(categories, stage) -> str`. The default,
`refusal_message`, uses the taxonomy's refusal for the first flagged category (safety/hazards.yaml) and one
generic sentence per stage when no category is named. Every decision can be appended to a JSONL audit file.

The guard is anything with `classify(texts, role) -> list[Verdict]` (see `Guard`), so a stub works in tests
and `alignkit.safety.guard.GuardClassifier` works in production.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from alignkit.errors import AlignkitError
from alignkit.ratelimit import TokenBucket
from alignkit.safety.filters import PII_KINDS, luhn_valid, redact_pii  # noqa: F401 (re-exported)

STAGES = ("input", "output")
SCOPES = ("last_user", "conversation")


class Verdict(Protocol):
    """What a guard says about one text (the real class is `alignkit.safety.guard.Verdict`)."""

    safe: bool
    categories: list[str]
    scores: dict[str, float]


class Guard(Protocol):
    def classify(self, texts: list[str], role: str = "prompt") -> list[Verdict]: ...


@dataclass
class GuardrailsConfig:
    """Which rails run and how; `GuardrailsConfig.from_yaml(path)` reads the same keys from YAML."""

    guard_inputs: bool = True
    """run the guard classifier on each prompt before the model sees it"""
    guard_outputs: bool = True
    """run the guard classifier on each response (role=response); a flagged one is replaced by the refusal"""
    input_scope: str = "last_user"
    """what the input rails read: last_user (the last user message) or conversation (every message)"""
    deny_patterns: list[str] = field(default_factory=list)
    """regular expressions (case-insensitive); a match blocks the prompt or response (category denylist)"""
    deny_keywords: list[str] = field(default_factory=list)
    """words or phrases matched whole and case-insensitively; a match blocks (category denylist)"""
    redact_pii_outputs: bool = True
    """replace emails, phone numbers and card numbers (Luhn-checked) in responses by [EMAIL], [PHONE], ..."""
    redact_pii_inputs: bool = False
    """also redact PII in prompts before the guard and the model see them"""
    pii_kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    """which PII to redact: any of email, phone, credit_card"""
    rate: float = 0.0
    """requests per second per user (token bucket); 0 turns rate limiting off"""
    burst: int = 10
    """requests a user may make at once before the rate applies"""
    audit_file: str | None = None
    """append one JSON line per decision to this file (flushed at once); none keeps no audit"""
    audit_texts: bool = False
    """also write the (redacted) prompt and returned text into the audit file"""

    def check(self) -> None:
        if self.input_scope not in SCOPES:
            raise AlignkitError(f"config: input_scope: must be one of {', '.join(SCOPES)}, got {self.input_scope!r}")
        for kind in self.pii_kinds:
            if kind not in PII_KINDS:
                raise AlignkitError(f"config: pii_kinds: {kind!r} is not one of {', '.join(PII_KINDS)}")
        for pattern in self.deny_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise AlignkitError(f"config: deny_patterns: {pattern!r} is not a regular expression ({error})") \
                    from None
        if self.rate < 0:
            raise AlignkitError(f"config: rate: must be 0 (off) or positive, got {self.rate}")
        if self.burst < 1:
            raise AlignkitError(f"config: burst: must be at least 1, got {self.burst}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "GuardrailsConfig":
        from alignkit.config import build_config

        config = build_config(cls, recipe=path)
        config.check()  # build_config only checks when a key was set; an empty file is checked here too
        return config


@dataclass
class RailResult:
    """The outcome for one conversation."""

    text: str
    """the response to show: the model's (PII redacted), or the refusal when blocked"""
    blocked: bool = False
    stage: str | None = None
    """input, output or rate_limit when blocked; None when the model's response went through"""
    categories: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    redactions: list[dict] = field(default_factory=list)
    """one {"stage", "kind"} per redacted span"""
    latency: float = 0.0
    """seconds from the call's start until this item's outcome was known"""
    retry_after: float = 0.0
    """when rate limited: seconds until this user may call again"""


# ----------------------------------------------------------------------------------------------------
# refusals

GENERIC_REFUSAL = {
    "input": "Sorry, I can't help with that request.",
    "output": "Sorry, I can't give that answer. Please ask something else.",
    "rate_limit": "Too many requests; please wait a moment and try again.",
}


@functools.lru_cache(maxsize=1)
def _taxonomy_refusals() -> dict[str, str]:
    """Hazard id and code (S1…) → the taxonomy's refusal text."""
    from alignkit.safety.taxonomy import load_taxonomy

    return {key: h.refusal for h in load_taxonomy().hazards for key in (h.id, h.code)}


def refusal_message(categories: list[str], stage: str) -> str:
    """The default policy: the first category's refusal from the taxonomy, else a generic sentence."""
    texts = _taxonomy_refusals()
    for category in categories:
        if category in texts:
            return texts[category]
    return GENERIC_REFUSAL[stage]


# ----------------------------------------------------------------------------------------------------
# conversations


def _content_text(content) -> str:
    """A message's text: a string, or the text parts of an OpenAI-style list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def rail_text(conversation, scope: str = "last_user") -> str:
    """The text the input rails read: a plain string as is; for messages, the last user message or all."""
    if isinstance(conversation, str):
        return conversation
    if scope == "conversation":
        return "\n".join(f"{m.get('role', '')}: {_content_text(m.get('content'))}" for m in conversation)
    users = [m for m in conversation if m.get("role") == "user"]
    return _content_text(users[-1].get("content")) if users else ""


def _redact_conversation(conversation, kinds) -> tuple[object, list[str]]:
    """The conversation with PII redacted in every message (a new object; the caller's is left alone)."""
    if isinstance(conversation, str):
        return redact_pii(conversation, kinds)
    found, out = [], []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str):
            content, kinds_found = redact_pii(content, kinds)
            found += kinds_found
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text, kinds_found = redact_pii(part.get("text", ""), kinds)
                    found += kinds_found
                    part = {**part, "text": text}
                parts.append(part)
            content = parts
        out.append({**message, "content": content})
    return out, found


# ----------------------------------------------------------------------------------------------------
# the rails


class Guardrails:
    """Wraps `generate(conversations) -> list[str]` with input rails, output rails, filters and rate limits."""

    def __init__(self, generate: Callable[[list], list[str]] | None, guard: Guard | None = None,
                 config: GuardrailsConfig | None = None,
                 refusal: Callable[[list[str], str], str] = refusal_message):
        self.generate, self.guard, self.refusal = generate, guard, refusal
        self.config = config or GuardrailsConfig()
        self.config.check()
        self.denied = [re.compile(p, re.I) for p in self.config.deny_patterns]
        self.denied += [re.compile(r"(?<!\w)" + re.escape(k) + r"(?!\w)", re.I) for k in self.config.deny_keywords]
        self.limiter = TokenBucket(self.config.rate, self.config.burst) if self.config.rate > 0 else None
        # fast tokenizers refuse concurrent use from threads ("Already borrowed"); the proxy calls from many
        self._guard_lock = threading.Lock()
        self._audit_lock = threading.Lock()

    # -- pieces the proxy uses one by one ---------------------------------------------------------------

    def limit(self, user) -> float:
        """0 when `user` may go ahead, else the seconds to wait (taking one token when allowed)."""
        return self.limiter.take(user) if self.limiter else 0.0

    def limited(self, wait: float) -> RailResult:
        """The result for a rate-limited item (the refusal policy covers input and output only)."""
        return RailResult(GENERIC_REFUSAL["rate_limit"], True, "rate_limit", ["rate_limit"], retry_after=wait)

    def _classify(self, texts: list[str], role: str) -> list:
        with self._guard_lock:
            verdicts = self.guard.classify(texts, role=role)
        if len(verdicts) != len(texts):
            raise AlignkitError(f"guard: returned {len(verdicts)} verdicts for {len(texts)} texts")
        return verdicts

    def _deny(self, text: str) -> bool:
        return any(p.search(text) for p in self.denied)

    def _rail(self, texts: list[str], stage: str, role: str, use_guard: bool) -> list[RailResult | None]:
        """A blocked RailResult (text: the refusal) per text that a deny-list or the guard flags, else None."""
        out: list[RailResult | None] = [None] * len(texts)
        for i, text in enumerate(texts):
            if self._deny(text):
                out[i] = RailResult(self.refusal(["denylist"], stage), True, stage, ["denylist"])
        todo = [i for i, r in enumerate(out) if r is None]
        if use_guard and self.guard is not None and todo:
            for i, verdict in zip(todo, self._classify([texts[i] for i in todo], role)):
                if not verdict.safe:
                    categories = list(verdict.categories) or ["unsafe"]
                    out[i] = RailResult(self.refusal(categories, stage), True, stage, categories,
                                        dict(verdict.scores))
        return out

    def screen_inputs(self, conversations: list) -> tuple[list, list[RailResult | None], list[list[dict]]]:
        """(the conversations as the model should see them, a blocked result or None for each, redactions)."""
        cfg, sent, redactions = self.config, [], []
        for conversation in conversations:
            found = []
            if cfg.redact_pii_inputs:
                conversation, found = _redact_conversation(conversation, cfg.pii_kinds)
            sent.append(conversation)
            redactions.append([{"stage": "input", "kind": k} for k in found])
        verdicts = self._rail([rail_text(c, cfg.input_scope) for c in sent], "input", "prompt", cfg.guard_inputs)
        for verdict, found in zip(verdicts, redactions):
            if verdict is not None:
                verdict.redactions = found
        return sent, verdicts, redactions

    def screen_outputs(self, responses: list[str]) -> list[RailResult]:
        """A result per response: blocked (text: the refusal), or passed with PII redacted if configured."""
        cfg = self.config
        verdicts = self._rail(responses, "output", "response", cfg.guard_outputs)
        out = []
        for response, verdict in zip(responses, verdicts):
            if verdict is not None:
                out.append(verdict)
                continue
            found = []
            if cfg.redact_pii_outputs:
                response, found = redact_pii(response, cfg.pii_kinds)
            out.append(RailResult(response, redactions=[{"stage": "output", "kind": k} for k in found]))
        return out

    def audit(self, results: list[RailResult], users: list | None = None, prompts: list | None = None) -> None:
        """Append one JSON line per result to the audit file (if any), flushed before returning."""
        if not self.config.audit_file:
            return
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        lines = []
        for i, r in enumerate(results):
            record = {"time": stamp, "user": None if users is None else users[i], "blocked": r.blocked,
                      "stage": r.stage, "categories": r.categories, "scores": r.scores,
                      "redactions": [f"{x['stage']}:{x['kind']}" for x in r.redactions],
                      "latency_s": round(r.latency, 6)}
            if self.config.audit_texts:
                record["prompt"] = None if prompts is None else prompts[i]
                record["text"] = r.text
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        with self._audit_lock, open(self.config.audit_file, "a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()

    # -- the whole thing, for Python callers -------------------------------------------------------------

    def __call__(self, conversations: list, users: list | None = None) -> list[RailResult]:
        """One result per conversation; `users` (one key per conversation) picks the rate-limit bucket."""
        start = time.perf_counter()
        users = list(users) if users is not None else ["default"] * len(conversations)
        if len(users) != len(conversations):
            raise AlignkitError(f"guardrails: {len(users)} users for {len(conversations)} conversations")
        results: list[RailResult | None] = [None] * len(conversations)
        for i, user in enumerate(users):
            wait = self.limit(user)
            if wait:
                results[i] = self.limited(wait)
        todo = [i for i, r in enumerate(results) if r is None]
        sent, verdicts, redactions = self.screen_inputs([conversations[i] for i in todo])
        elapsed = time.perf_counter() - start
        clean = []
        for k, (i, verdict) in enumerate(zip(todo, verdicts)):
            if verdict is None:
                clean.append((i, k))
            else:
                results[i] = verdict
        for r in results:
            if r is not None:
                r.latency = elapsed
        if clean:
            responses = self.generate([sent[k] for _, k in clean])
            if len(responses) != len(clean):
                raise AlignkitError(f"guardrails: generate returned {len(responses)} texts for {len(clean)} prompts")
            outputs = self.screen_outputs(list(responses))
            elapsed = time.perf_counter() - start
            for (i, k), result in zip(clean, outputs):
                result.redactions = redactions[k] + result.redactions
                result.latency = elapsed
                results[i] = result
        prompts = [None] * len(conversations)
        for k, i in enumerate(todo):
            prompts[i] = sent[k]
        self.audit(results, users, prompts)
        return results

