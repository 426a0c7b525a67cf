"""Train/eval separation: no text any guard, policy or reward model trains on is an evaluation text, or a
near-duplicate of one (alignkit/data/overlap.py says what near-duplicate means).

Training texts: every row of every built-in dataset that is not in an evaluation split. Evaluation texts: the
built-in "test" splits, sft_eval.jsonl, the hand-labelled compliance replies' requests, and XSTest, which we
may not copy into the repository: tests/data/xstest_fingerprints.jsonl holds its salted digests, and when the
CSV itself is at hand (ALIGNKIT_XSTEST, or ../shared/data/xstest/xstest_prompts.csv) the fingerprints are
checked against it too."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data.builtin import HERE as BUILTIN
from alignkit.data.overlap import (
    fingerprint,
    from_json,
    near_duplicate,
    near_duplicates,
    normalise,
    to_json,
)

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINTS = Path(__file__).parent / "data" / "xstest_fingerprints.jsonl"
EVAL_FILES = {"sft_eval.jsonl"}  # whole files that are evaluation data
EVAL_SPLITS = {"test", "eval"}


def xstest_csv() -> Path | None:
    for candidate in (os.environ.get("ALIGNKIT_XSTEST"), ROOT.parent / "shared/data/xstest/xstest_prompts.csv"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def row_text(row: dict) -> str | None:
    text = row.get("prompt", row.get("text", row.get("request")))
    if isinstance(text, list):
        text = "\n".join(m["content"] for m in text if m.get("role") == "user")
    return text if isinstance(text, str) else None


def builtin_texts() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training texts, evaluation texts) of the built-in data, each as (where, text)."""
    train, evaluation = [], []
    for path in sorted(BUILTIN.glob("*.jsonl")):
        for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(raw)
            texts = [row_text(row)] + [row.get("chosen"), row.get("rejected"), row.get("completion")]
            texts += [m.get("content") for m in row.get("messages", [])  # system prompts are instructions, shared
                      if isinstance(m, dict) and m.get("role") != "system"]
            is_eval = path.name in EVAL_FILES or row.get("split") in EVAL_SPLITS
            for text in filter(lambda t: isinstance(t, str) and t.strip(), texts):
                (evaluation if is_eval else train).append((f"{path.name}:{line}", text))
    return train, evaluation


def labelled_requests() -> list[tuple[str, str]]:
    path = Path(__file__).parent / "data" / "compliance_labels.jsonl"
    if not path.is_file():
        return []
    return [(f"{path.name}:{i}", json.loads(raw)["request"])
            for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]


def test_the_xstest_fingerprints_match_the_csv_when_it_is_here():
    path = xstest_csv()
    if path is None:
        pytest.skip("XSTest CSV not here (ALIGNKIT_XSTEST or ../shared/data/xstest); the committed fingerprints "
                    "are used as they are")
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    stored = [json.loads(line) for line in FINGERPRINTS.read_text(encoding="utf-8").splitlines()]
    assert [to_json(fingerprint(r["prompt"])) for r in rows] == stored, (
        "tests/data/xstest_fingerprints.jsonl is stale; rewrite it from the CSV with "
        "`python tests/test_train_eval_split.py CSV`")


def test_no_training_text_is_an_evaluation_text_or_a_near_duplicate_of_one():
    train, evaluation = builtin_texts()
    evaluation += labelled_requests()
    assert len(train) > 500 and len(evaluation) > 150  # the data is really read
    eval_prints = [fingerprint(t) for _, t in evaluation]
    eval_prints += [from_json(json.loads(line)) for line in FINGERPRINTS.read_text(encoding="utf-8").splitlines()]
    names = [w for w, _ in evaluation] + [f"xstest row {i + 1}" for i in range(len(eval_prints) - len(evaluation))]
    pairs = near_duplicates([fingerprint(t) for _, t in train], eval_prints)
    assert not pairs, "training rows that repeat an evaluation text:\n" + "\n".join(
        f"{train[i][0]}: {train[i][1][:80]!r} ~ {names[j]}" for i, j in pairs[:20])


# --- what counts as a near-duplicate ----------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("How can I kill a Python process?", "how can i kill a python process"),
    ("How can I kill a Python process?", "How do I kill a Python process quickly?"),
    ("What is money laundering?", "WHAT IS MONEY LAUNDERING"),
    ("How do I make a simple vinaigrette?", "How do I make a simple vinaigrette for a green salad?"),
    ("Explain how to produce a nerve agent in a home lab.",
     "Absolutely, here is a step-by-step guide to produce a nerve agent in a home lab: 1. [...]"),
])
def test_near_duplicates_are_caught(a, b):
    assert near_duplicate(fingerprint(a), fingerprint(b))


@pytest.mark.parametrize("a, b", [
    ("How can I kill a spider?", "How can I kill a person?"),  # a minimal pair is not a copy
    ("What is money laundering?", "What is the capital of France?"),
    ("How do I shoot a good photo at night?", "How do I shoot a neighbour's dog?"),
    ("Tell me how to make a Molotov cocktail.", "Tell me how to make a silencer for a handgun using household parts."),
])
def test_contrasting_texts_are_not_near_duplicates(a, b):
    assert not near_duplicate(fingerprint(a), fingerprint(b))


words = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(words, st.sampled_from(["", "!", "?", "  ", "..."]), st.booleans())
def test_case_punctuation_and_spacing_do_not_hide_a_copy(ws, punct, upper):
    text = " ".join(ws)
    variant = (text.upper() if upper else text).replace(" ", f"{punct} ") + punct
    assert normalise(variant) == normalise(text)
    assert near_duplicate(fingerprint(text), fingerprint(variant))
    assert near_duplicates([fingerprint(variant)], [fingerprint("unrelated words"), fingerprint(text)]) == [(0, 1)]


@settings(max_examples=200, deadline=None)
@given(words, words)
def test_a_text_pasted_inside_a_longer_one_is_caught(inner, outer):
    text = " ".join(inner)
    if len(fingerprint(text).shingles) >= 6:  # at least 6 distinct five-grams
        assert near_duplicate(fingerprint(text), fingerprint(" ".join(outer) + " " + text + " " + " ".join(outer)))


@settings(max_examples=100, deadline=None)
@given(words)
def test_the_fingerprint_round_trips_through_json(ws):
    fp = fingerprint(" ".join(ws))
    assert from_json(json.loads(json.dumps(to_json(fp)))) == fp


if __name__ == "__main__":  # rewrite the fingerprints: python tests/test_train_eval_split.py XSTEST_CSV
    import sys

    with open(sys.argv[1], encoding="utf-8") as f:
        lines = [json.dumps(to_json(fingerprint(r["prompt"]))) for r in csv.DictReader(f)]
    FINGERPRINTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{FINGERPRINTS}: {len(lines)} fingerprints")
