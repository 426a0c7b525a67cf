"""Runtime guardrails around a generate function, with stub guards: blocked inputs never reach the model,
flagged outputs are replaced, clean traffic passes unchanged, PII is redacted (cards only when Luhn-valid),
deny-lists, per-user rate limits, the refusal policy, the audit file and the YAML config."""

from __future__ import annotations

import json

import pytest
from stubs import StubGuard

from alignkit.errors import AlignkitError
from alignkit.safety.guardrails import (GENERIC_REFUSAL, Guardrails, GuardrailsConfig, luhn_valid, rail_text,
                                        redact_pii, refusal_message)
from alignkit.safety.taxonomy import load_taxonomy


class EchoModel:
    """A batched generate function that answers 'reply to: <last user message>' and records its batches."""

    def __init__(self, answer=None):
        self.batches, self.answer = [], answer

    def __call__(self, conversations):
        self.batches.append(conversations)
        return [self.answer or f"reply to: {rail_text(c)}" for c in conversations]


def user(text):
    return [{"role": "user", "content": text}]


def test_flagged_input_is_refused_and_never_reaches_the_model():
    model, guard = EchoModel(), StubGuard()
    [result] = Guardrails(model, guard)([user("how do I build a WEAPON")])
    assert model.batches == []
    assert result.blocked and result.stage == "input" and result.categories == ["weapons"]
    assert result.text == refusal_message(["weapons"], "input") and result.scores == {"weapons": 0.97}
    assert guard.calls == [("prompt", ["how do I build a WEAPON"])]


def test_mixed_batch_calls_the_model_once_with_only_the_clean_items_in_order():
    model = EchoModel()
    results = Guardrails(model, StubGuard())([user("hi"), user("WEAPON please"), user("bye"), user("WEAPON")])
    assert model.batches == [[user("hi"), user("bye")]]
    assert [r.blocked for r in results] == [False, True, False, True]
    assert [r.text for r in results][::2] == ["reply to: hi", "reply to: bye"]
    # a refused item's outcome is known before the model runs
    assert 0 < results[1].latency <= results[0].latency


def test_flagged_output_is_replaced_and_clean_traffic_passes_unchanged():
    guard = StubGuard()
    model = EchoModel()
    flagged, clean = Guardrails(model, guard)([user("tell me the SECRET"), user("what is 2+2?")])
    assert len(model.batches) == 1
    assert flagged.blocked and flagged.stage == "output" and flagged.categories == ["privacy"]
    assert flagged.text == refusal_message(["privacy"], "output")
    assert not clean.blocked and clean.stage is None and clean.categories == [] and clean.redactions == []
    assert clean.text == "reply to: what is 2+2?"
    # the output rail asked the guard about the responses, as responses
    assert guard.calls[-1] == ("response", ["reply to: tell me the SECRET", "reply to: what is 2+2?"])


def test_no_guard_and_guard_switches():
    model = EchoModel()
    assert not Guardrails(model)([user("WEAPON")])[0].blocked
    guard = StubGuard()
    results = Guardrails(model, guard, GuardrailsConfig(guard_inputs=False, guard_outputs=False))([user("WEAPON")])
    assert not results[0].blocked and guard.calls == []


def test_luhn_by_hand():
    """79927398713 reversed is 3 1 7 8 9 3 7 2 9 9 7. Kept digits (positions 0, 2, ...): 3+7+9+7+9+7 = 42.
    Doubled digits (positions 1, 3, ...): 1→2, 8→16→7, 3→6, 2→4, 9→18→9, sum 28. 42 + 28 = 70, a multiple
    of 10: valid. With the last digit 0 instead of 3 the sum is 67: invalid."""
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_pii_is_redacted_in_outputs_and_a_luhn_invalid_number_is_left():
    answer = ("Card 4111 1111 1111 1111, not 4111 1111 1111 1112; write to ann.lee@example.org "
              "or call (555) 123-4567. Meeting 2024-01-15.")
    model = EchoModel(answer)
    [result] = Guardrails(model, StubGuard())([user("contact details?")])
    assert result.text == ("Card [CREDIT_CARD], not 4111 1111 1111 1112; write to [EMAIL] "
                           "or call [PHONE]. Meeting 2024-01-15.")
    assert not result.blocked
    assert sorted(r["kind"] for r in result.redactions) == ["credit_card", "email", "phone"]
    assert {r["stage"] for r in result.redactions} == {"output"}


def test_input_redaction_is_off_by_default_and_hides_pii_from_the_model_when_on():
    model = EchoModel()
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "I am bo@x.io, help"}]
    Guardrails(model, config=GuardrailsConfig(redact_pii_outputs=False))([convo])
    assert model.batches[-1] == [convo]
    [result] = Guardrails(model, config=GuardrailsConfig(redact_pii_inputs=True))([convo])
    assert model.batches[-1][0][1]["content"] == "I am [EMAIL], help"
    assert convo[1]["content"] == "I am bo@x.io, help"  # the caller's conversation is left alone
    assert [r["stage"] for r in result.redactions] == ["input"]
    only_cards = redact_pii("bo@x.io 4111111111111111", kinds=["credit_card"])
    assert only_cards == ("bo@x.io [CREDIT_CARD]", ["credit_card"])


def test_deny_lists_block_at_either_stage_and_keywords_match_whole_words():
    config = GuardrailsConfig(deny_keywords=["bomb"], deny_patterns=[r"api[_-]?key\s*=\s*\w+"])
    model = EchoModel()
    results = Guardrails(model, config=config)([user("a Bomb?"), user("a bombastic speech"),
                                                user("print API_KEY = abc123")])
    assert [(r.blocked, r.stage, r.categories) for r in results] == [
        (True, "input", ["denylist"]), (False, None, []), (True, "input", ["denylist"])]
    leaky = EchoModel("sure: api-key=hunter2")
    [result] = Guardrails(leaky, config=config)([user("hello")])
    assert result.blocked and result.stage == "output" and "hunter2" not in result.text


def test_input_scope_last_user_or_whole_conversation():
    convo = [{"role": "user", "content": "WEAPON"}, {"role": "assistant", "content": "no"},
             {"role": "user", "content": "ok, tell me a joke"}]
    assert not Guardrails(EchoModel(), StubGuard())([convo])[0].blocked
    guard = StubGuard()
    result = Guardrails(EchoModel(), guard, GuardrailsConfig(input_scope="conversation"))([convo])[0]
    assert result.blocked and guard.calls[0][1] == ["user: WEAPON\nassistant: no\nuser: ok, tell me a joke"]


def test_rate_limit_answers_limited_after_the_burst_per_user():
    """rate 0.001/s: no token comes back during the test, so exactly `burst` calls per user go through."""
    model = EchoModel()
    rails = Guardrails(model, config=GuardrailsConfig(rate=0.001, burst=3))
    results = rails([user(f"q{i}") for i in range(5)], users=["ann"] * 5)
    assert [r.stage for r in results] == [None, None, None, "rate_limit", "rate_limit"]
    assert all(r.retry_after > 0 and r.text == GENERIC_REFUSAL["rate_limit"] for r in results[3:])
    assert model.batches == [[user("q0"), user("q1"), user("q2")]]
    assert rails([user("again")], users=["ann"])[0].stage == "rate_limit"
    assert rails([user("me")], users=["bob"])[0].text == "reply to: me"


def test_refusal_policy_is_a_plain_callable_and_the_default_reads_the_taxonomy(monkeypatch):
    seen = []

    def policy(categories, stage):
        seen.append((categories, stage))
        return f"no ({stage}: {', '.join(categories)})"

    results = Guardrails(EchoModel(), StubGuard(), refusal=policy)([user("WEAPON"), user("SECRET")])
    assert [r.text for r in results] == ["no (input: weapons)", "no (output: privacy)"]
    assert seen == [(["weapons"], "input"), (["privacy"], "output")]

    # the default: the taxonomy's text for the first category it knows (by id or S-code), else generic
    taxonomy = load_taxonomy()
    weapons = taxonomy.get("weapons")
    assert refusal_message(["other", "weapons"], "input") == weapons.refusal
    assert refusal_message([weapons.code], "output") == weapons.refusal
    assert refusal_message(["other"], "output") == GENERIC_REFUSAL["output"]
    assert refusal_message([], "input") == GENERIC_REFUSAL["input"]


def test_audit_file_gets_one_flushed_line_per_decision_without_texts_by_default(tmp_path):
    path = tmp_path / "audit.jsonl"
    rails = Guardrails(EchoModel("mail me at a@b.co"), StubGuard(), GuardrailsConfig(audit_file=str(path)))
    rails([user("WEAPON"), user("hello")], users=["u1", "u2"])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["user"], x["blocked"], x["stage"], x["categories"]) for x in lines] == [
        ("u1", True, "input", ["weapons"]), ("u2", False, None, [])]
    assert lines[1]["redactions"] == ["output:email"] and "text" not in lines[1]
    assert "a@b.co" not in path.read_text()
    rails([user("again")])
    assert len(path.read_text().splitlines()) == 3  # appended
    with_texts = Guardrails(EchoModel(), config=GuardrailsConfig(audit_file=str(path), audit_texts=True))
    with_texts([user("hi")])
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["prompt"] == user("hi") and last["text"] == "reply to: hi"


def test_config_from_yaml_and_bad_values_are_one_line(tmp_path):
    good = tmp_path / "rails.yaml"
    good.write_text("deny_keywords: [bomb]\nrate: 2\nburst: 5\nredact_pii_inputs: true\n")
    config = GuardrailsConfig.from_yaml(good)
    assert (config.deny_keywords, config.rate, config.burst, config.redact_pii_inputs) == (["bomb"], 2.0, 5, True)
    for text, message in [("deny_patterns: ['(']\n", "deny_patterns: '\\(' is not a regular expression"),
                          ("input_scope: everything\n", "input_scope: must be one of"),
                          ("pii_kinds: [passport]\n", "pii_kinds: 'passport'"),
                          ("burst: 0\n", "burst: must be at least 1"),
                          ("rates: 3\n", "did you mean rate")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(AlignkitError, match=message):
            GuardrailsConfig.from_yaml(bad)


def test_generate_returning_the_wrong_count_is_an_error():
    with pytest.raises(AlignkitError, match="generate returned 1 texts for 2 prompts"):
        Guardrails(lambda convos: ["one"])([user("a"), user("b")])
