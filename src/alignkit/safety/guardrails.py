"""Runtime guardrails around any batched generate function.

`Guardrails(generate, guard, config)` is called like the model it wraps, on a batch of conversations, and
returns one `RailResult` per conversation. Each item passes, in order:

1. the per-user rate limit (a token bucket; over it, the item is answered "limited" and nothing else runs);
2. the input rails: deny-list patterns and keywords on every text of the conversation (all roles, all text
   parts, tool calls; normalised first), PII redaction (if `redact_pii_inputs`), then the guard classifier
   on what `input_scope` names. A blocked item never reaches the model;
3. the model, called once with the items that passed;
4. the output rails: deny-lists, the guard with role="response", then PII redaction of what is returned.

A blocked item's text is the refusal policy's message: any callable `(categories, stage) -> str`. The default,
`refusal_message`, uses the taxonomy's refusal for the first flagged category (safety/hazards.yaml) and one
generic sentence per stage when no category is named. Every decision can be appended to a JSONL audit file
(texts in it are always PII-redacted).

Which texts a request and a reply hold is known in one place, `alignkit.safety.openai_request` and
`openai_reply` (over their shared core `openai_texts`); `screen(groups, stage)`
is the rails on any groups of such texts, and the guard proxy (`alignkit.safety.proxy`) uses it directly.

The guard is anything with `classify(texts, role) -> list[Verdict]` (see `Guard`), so a stub works in tests
and `alignkit.safety.guard.GuardClassifier` works in production.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from alignkit.config import KEEP_COMMAS, build_config
from alignkit.errors import AlignkitError
from alignkit.ratelimit import TokenBucket
from alignkit.safety.filters import PII_KINDS, DenyList, luhn_valid, redact_pii  # noqa: F401 (re-exported)
from alignkit.safety.openai_request import joined_conversation, message_texts
from alignkit.safety.openai_texts import RequestError, Text
from alignkit.safety.taxonomy import load_taxonomy

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
    """what the input guard reads: last_user (the last user message and each system, developer and tool text;
    through the proxy, where the client writes the whole history, every text of the request) or conversation
    (the whole conversation as one text; through the proxy, that as well as every text on its own)"""
    deny_patterns: list[str] = field(default_factory=list, metadata=KEEP_COMMAS)
    """regular expressions (case-insensitive, on every text, normalised: NFKC, no zero-width characters,
    casefolded); a match blocks the prompt or response (category denylist)"""
    deny_keywords: list[str] = field(default_factory=list)
    """words or phrases matched whole and case-insensitively on every text, normalised as for deny_patterns;
    a match blocks (category denylist)"""
    redact_pii_outputs: bool = True
    """replace emails, phone numbers, card numbers (Luhn), SSNs and IBANs (mod 97) in responses by [EMAIL], ..."""
    redact_pii_inputs: bool = False
    """also redact PII in prompts before the guard and the model see them"""
    pii_kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    """which PII to redact (alignkit.safety.filters.PII_KINDS lists them)"""
    rate: float = 0.0
    """requests per second per user (token bucket); 0 turns rate limiting off"""
    burst: int = 10
    """requests a user may make at once before the rate applies"""
    audit_file: str | None = None
    """append one JSON line per decision to this file (flushed at once); none keeps no audit"""
    audit_texts: bool = False
    """also write the prompt and returned text into the audit file, always with PII redacted"""

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


def _keep(text: Text) -> str:
    return text.text


def conversation_texts(conversation, visit: Callable[[Text], str] = _keep) -> tuple[object, list[Text]]:
    """(the conversation with `visit` applied to each text, every text in it), through the one module that
    knows every text (`alignkit.safety.openai_texts`); a plain string is one user message."""
    if isinstance(conversation, str):
        text = Text("prompt", "user", conversation)
        return visit(text), [text]
    try:
        return message_texts(conversation, visit)
    except RequestError as error:
        raise AlignkitError(f"guardrails: {error}") from None


def _last_user(texts: list[Text]) -> str:
    users = [t.where.split("]", 1)[0] for t in texts if t.role == "user" and t.model_reads]
    return "\n".join(t.text for t in texts if users and t.where.startswith(users[-1] + "]") and t.model_reads)


def rail_text(conversation, scope: str = "last_user") -> str:
    """The text the input guard reads as the user's request: a plain string as is; for messages, the last user
    message, or the whole conversation as `role: text` lines."""
    if isinstance(conversation, str):
        return conversation
    _, texts = conversation_texts(conversation)
    return joined_conversation(texts) if scope == "conversation" else _last_user(texts)


def _guard_view(scope: str) -> Callable[[list[Text]], list[str]]:
    """What the input guard reads of a conversation a Python caller built (its history was screened when it
    was new): last_user, the last user message and every system, developer and tool text on its own;
    conversation, the whole conversation as one text."""
    if scope == "conversation":
        return lambda texts: [joined_conversation(texts)]
    instructions = ("system", "developer", "tool", "function")
    return lambda texts: [_last_user(texts)] + [t.text for t in texts if t.role in instructions and t.model_reads]


def _redact_strings(value, kinds):
    """Any JSON-like value with PII redacted in each string (for the audit file)."""
    if isinstance(value, str):
        return redact_pii(value, kinds)[0]
    if isinstance(value, list):
        return [_redact_strings(v, kinds) for v in value]
    if isinstance(value, dict):
        return {k: _redact_strings(v, kinds) for k, v in value.items()}
    return value


@dataclass
class Screened:
    """What the rails made of one group of texts (a conversation, a request, one choice of a reply)."""

    blocked: RailResult | None
    """the refusal, when a deny-list or the guard flagged any text of the group"""
    rewrites: dict[str, str]
    """where -> the text with PII redacted, for the texts that redaction changed"""
    redactions: list[dict]
    """one {"stage", "kind"} per redacted span"""


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
        self.denied = DenyList(self.config.deny_patterns, self.config.deny_keywords)
        self.limiter = TokenBucket(self.config.rate, self.config.burst) if self.config.rate > 0 else None
        # fast tokenizers refuse concurrent use from threads ("Already borrowed"); the proxy calls from many
        self._guard_lock = threading.Lock()
        self._audit_lock = threading.Lock()

    # -- pieces the proxy uses one by one ---------------------------------------------------------------

    def limit(self, user) -> float:
        """0 when `user` may go ahead, else the seconds to wait (taking one token when allowed)."""
        return self.limiter.take(user) if self.limiter is not None else 0.0

    def limited(self, wait: float) -> RailResult:
        """The result for a rate-limited item (the refusal policy covers input and output only)."""
        return RailResult(GENERIC_REFUSAL["rate_limit"], True, "rate_limit", ["rate_limit"], retry_after=wait)

    def _classify(self, texts: list[str], role: str) -> list:
        with self._guard_lock:
            verdicts = self.guard.classify(texts, role=role)
        if len(verdicts) != len(texts):
            raise AlignkitError(f"guard: returned {len(verdicts)} verdicts for {len(texts)} texts")
        return verdicts

    def _redact(self, group: list[Text], stage: str) -> tuple[dict[str, str], list[dict]]:
        """PII redaction of the texts the model reads, when the stage's option is on."""
        cfg = self.config
        if not (cfg.redact_pii_inputs if stage == "input" else cfg.redact_pii_outputs):
            return {}, []
        rewrites, found = {}, []
        for text in group:
            if text.model_reads and text.text:
                new, kinds = redact_pii(text.text, cfg.pii_kinds)
                if kinds:
                    rewrites[text.where] = new
                    found += [{"stage": stage, "kind": k} for k in kinds]
        return rewrites, found

    def screen(self, groups: list[list[Text]], stage: str,
               guard_view: Callable[[list[Text]], list[str]] | None = None) -> list[Screened]:
        """The rails on groups of texts: a group is blocked when a deny-list matches any of its texts (all of
        them, parameters included) or the guard flags any text it reads; `guard_view(texts)` picks those
        (default: every text the model reads; on input, after PII redaction, as the model will see them).
        The guard is called once, with each distinct text once."""
        use_guard = self.guard is not None and (self.config.guard_inputs if stage == "input"
                                                else self.config.guard_outputs)
        out, reads = [], []
        for group in groups:
            rewrites, found = self._redact(group, stage)
            blocked = None
            if self.denied and any(self.denied.search(t.text) for t in group):
                blocked = RailResult(self.refusal(["denylist"], stage), True, stage, ["denylist"])
            out.append(Screened(blocked, rewrites, found))
            seen = [replace(t, text=rewrites.get(t.where, t.text)) for t in group] if stage == "input" else group
            view = guard_view(seen) if guard_view else [t.text for t in seen if t.model_reads]
            reads.append([t for t in view if t.strip()] if use_guard and blocked is None else [])
        distinct = list(dict.fromkeys(t for texts in reads for t in texts))
        if distinct:
            verdicts = dict(zip(distinct, self._classify(distinct, "prompt" if stage == "input" else "response")))
            for screened, texts in zip(out, reads):
                unsafe = [verdicts[t] for t in texts if not verdicts[t].safe]
                if unsafe:
                    categories = list(dict.fromkeys(c for v in unsafe for c in v.categories)) or ["unsafe"]
                    scores = {}
                    for verdict in unsafe:
                        for key, score in verdict.scores.items():
                            scores[key] = max(score, scores.get(key, score))
                    screened.blocked = RailResult(self.refusal(categories, stage), True, stage, categories, scores)
        for screened in out:
            if screened.blocked is not None:
                screened.blocked.redactions = list(screened.redactions)
        return out

    def screen_inputs(self, conversations: list) -> tuple[list, list[RailResult | None], list[list[dict]]]:
        """(the conversations as the model should see them, a blocked result or None for each, redactions)."""
        groups = [conversation_texts(c)[1] for c in conversations]
        screened = self.screen(groups, "input", _guard_view(self.config.input_scope))
        sent = [conversation_texts(c, lambda t, s=s: s.rewrites.get(t.where, t.text))[0] if s.rewrites else c
                for c, s in zip(conversations, screened)]
        return sent, [s.blocked for s in screened], [s.redactions for s in screened]

    def screen_outputs(self, responses: list[str]) -> list[RailResult]:
        """A result per response: blocked (text: the refusal), or passed with PII redacted if configured."""
        screened = self.screen([[Text("response", "response", r)] for r in responses], "output")
        return [s.blocked or RailResult(s.rewrites.get("response", r), redactions=s.redactions)
                for r, s in zip(responses, screened)]

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
            if self.config.audit_texts:  # redacted whatever redact_pii_* say: the audit keeps no PII
                kinds = self.config.pii_kinds
                record["prompt"] = None if prompts is None else _redact_strings(prompts[i], kinds)
                record["text"] = _redact_strings(r.text, kinds)
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

