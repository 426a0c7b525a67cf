"""The built-in environments: the calculator is safe and right, answers are scored as documented, every
demonstration replays to reward 1, and the train and test splits share no question (retrieval: no entity)."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data.builtin import builtin_path
from alignkit.envs.base import ANSWER_INSTRUCTION, format_tool_call, make_environment
from alignkit.envs.calculator import (
    TEMPLATES,
    TEST_TEMPLATES,
    CalculatorEnv,
    evaluate,
    generate_problems,
)
from alignkit.envs.retrieval import (
    TEST_ENTITIES,
    RetrievalEnv,
    build_facts_and_questions,
    search,
    words,
)


def read(name: str) -> list[dict]:
    with open(builtin_path(name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


CALCULATOR_ROWS = read("calculator.jsonl")
RETRIEVAL_ROWS = read("retrieval.jsonl")
FACTS = read("facts.jsonl")


def calculate(expression) -> str:
    return CalculatorEnv().run_tool("calculator", {"expression": expression})


# ----------------------------------------------------------------------------------------------------
# the calculator


@pytest.mark.parametrize("expression, result", [
    ("37 * 24", "888"), ("888 / 24", "37"), ("873 / 4", "218.25"), ("733 % 37", "30"), ("356 // 29", "12"),
    ("(242 + 388) * 29", "18270"), ("637 - 275 - 184", "178"), ("-5 + +3", "-2"), ("2 ** 10", "1024"),
    ("2 ** -3", "0.125"), ("0.1 + 0.2", "0.3"), ("1 / 3", "0.333333333333"), ("1 / 3 * 3", "1"),
    ("1,234 * 2", "2468"), ("37 × 24 =", "888"), ("  12 ÷ 4 ", "3"), ("10 − 4", "6"), ("1e12", "1000000000000"),
    ("-7 // 2", "-4"), ("7.5 % 2", "1.5"),
    ("(" * 99 + "7" + ")" * 99, "7"), ("-" * 199 + "1", "-1"),
])
def test_calculator_values(expression, result):
    assert calculate(expression) == result


HOSTILE = ["__import__('os')", "__import__('os').system('true')", "9**9**9", "2 ** 10 ** 10", "(10 ** 10) ** 10",
           "1e400", "-1e400", "9" * 199, "9" * 5000, "1 " * 150, "(" * 150 + "1" + ")" * 150,
           "(" * 100 + "-1" + ")" * 99,
           "x", "x + 1", "lambda: 1", "(lambda: 1)()", "(1).real", "().__class__", "[1, 2]", "{}", "'a' * 3",
           "True + 1", "1j", "2 ^ 3", "1 if 1 else 2", "2 ** 0.5", "(-8) ** 0.5", "1 / 0", "1 % 0", "7 // 0.0",
           "0 ** -1", "1e12 * 10", "999999999999 + 2", "1 < 2", "not 1", "~1", "1 << 40", "", "   ", "=",
           "\x00", "1 +", "1; 2", "import os", "open('/etc/passwd')", "f'{1}'", "b'1'", "...", "None"]


@pytest.mark.parametrize("expression", HOSTILE)
def test_calculator_refuses_everything_else_with_an_error_text(expression):
    result = calculate(expression)
    assert result.startswith("error: ") and "\n" not in result


def test_calculator_is_fast_on_hostile_input():
    start = time.perf_counter()
    for expression in HOSTILE * 10:
        calculate(expression)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("name, arguments", [
    ("calc", {"expression": "1 + 1"}), ("calculator", {}), ("calculator", {"expression": None}),
    ("calculator", {"expression": ["1"]}), ("calculator", {"expression": True}),
    ("calculator", {"expression": "1", "precision": 3}), ("calculator", {"expression": 37}),
])
def test_calculator_bad_calls_get_an_error_text(name, arguments):
    assert CalculatorEnv().run_tool(name, arguments).startswith("error: ")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_calculator_never_raises_on_any_text(text):
    assert isinstance(calculate(text), str)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789+-*/%().e ,", max_size=60))
def test_calculator_gives_a_number_or_an_error_on_arithmetic_looking_text(text):
    result = calculate(text)
    assert result.startswith("error: ") or re.fullmatch(r"-?\d+(\.\d+)?(e-\d+)?", result), result


@pytest.mark.parametrize("answer, gold, reward", [
    ("84", 84, 1.0), ("84.0", 84, 1.0), (" 84. ", 84, 1.0), ("84 apples", 84, 1.0), ("$84", 84, 1.0),
    ("1,234", 1234, 1.0), ("1234", 1234, 1.0), ("The answer is 1,234.", 1234, 1.0), ("218.25", 218.25, 1.0),
    ("218.25 dollars", 218.25, 1.0), ("-3", -3, 1.0), ("84.0000001", 84, 1.0),
    ("85", 84, 0.0), ("84.1", 84, 0.0), ("218.2", 218.25, 0.0), ("", 84, 0.0), ("eighty-four", 84, 0.0),
    ("84 or 85", 84, 0.0), ("37 * 24 = 888", 888, 0.0), ("12,34", 1234, 0.0), ("-84", 84, 0.0),
    ("9" * 5000, 84, 0.0),
])
def test_calculator_score(answer, gold, reward):
    env = CalculatorEnv()
    env.reset({"question": "q", "answer": gold})
    assert env.score(answer) == reward


# ----------------------------------------------------------------------------------------------------
# the calculator's problems

EXPECTED = {  # each template's answer from the numbers in its expression, worked out independently
    "boxes": lambda a, b: a * b, "orchard": lambda a, b, c: a * b + c, "library": lambda a, b: a - b,
    "stickers": lambda a, b: a / b, "cinema": lambda a, b, c: a * b - c, "train": lambda a, b, c: a + b + c,
    "bakery": lambda a, b, c: (a + b) * c, "bill": lambda a, n: a / n, "eggs_left": lambda a, b: a % b,
    "eggs_full": lambda a, b: a // b, "chairs": lambda a, b, c: (a - b) * c, "bolts": lambda a, b, c: a * b / c,
    "tank": lambda a, b, c: a - b - c, "crates": lambda a, b, c: a * b + c, "stadium": lambda a, b, c: a - b - c,
    "paint": lambda a, b: a / b, "marbles": lambda a, b, c: a * b - c, "rope": lambda a, n: a / n,
    "buses": lambda a, b: a % b,
}


def test_the_calculator_file_is_the_generators_output():
    assert CALCULATOR_ROWS == generate_problems(600, 0)


def test_calculator_problems():
    assert len(CALCULATOR_ROWS) == 600
    assert sum(row["split"] == "test" for row in CALCULATOR_ROWS) == 120
    assert {row["template"] for row in CALCULATOR_ROWS} == set(EXPECTED)
    assert len(TEMPLATES) >= 10 and len(TEMPLATES) + len(TEST_TEMPLATES) == len(EXPECTED)
    for row in CALCULATOR_ROWS:
        numbers = [int(x) for x in re.findall(r"\d+", row["expression"])]
        assert all(re.search(rf"\b{n}\b", row["question"]) for n in numbers), row
        assert 1 <= len(numbers) - 1 <= 2 and all(n >= 4 for n in numbers), row
        assert row["answer"] == EXPECTED[row["template"]](*numbers) == evaluate(row["expression"]), row
        assert row["answer"] > 0 and row["prompt"] == [{"role": "user", "content": row["question"]}]


def test_calculator_splits_share_no_question():
    train = {row["question"] for row in CALCULATOR_ROWS if row["split"] == "train"}
    test = {row["question"] for row in CALCULATOR_ROWS if row["split"] == "test"}
    assert len(train) == 480 and len(test) == 120 and not train & test
    templates = {split: {row["template"] for row in CALCULATOR_ROWS if row["split"] == split}
                 for split in ("train", "test")}
    assert templates == {"train": {t[0] for t in TEMPLATES}, "test": {t[0] for t in TEST_TEMPLATES}}
    assert len({row["question"] for row in CALCULATOR_ROWS}) == len(CALCULATOR_ROWS)


# ----------------------------------------------------------------------------------------------------
# retrieval


def test_the_retrieval_files_are_the_generators_output():
    assert (FACTS, RETRIEVAL_ROWS) == build_facts_and_questions()


def test_retrieval_data():
    assert len(FACTS) == 120 and len({f["entity"] for f in FACTS}) == 40
    assert len({f["id"] for f in FACTS}) == 120 and len({f["fact"] for f in FACTS}) == 120
    assert len(RETRIEVAL_ROWS) == 240 and len({row["question"] for row in RETRIEVAL_ROWS}) == 240
    assert sum(row["split"] == "test" for row in RETRIEVAL_ROWS) == 48
    facts = {f["id"]: f for f in FACTS}
    for row in RETRIEVAL_ROWS:
        fact = facts[row["fact_id"]]
        assert fact["entity"] == row["entity"] and row["entity"] in row["question"]
        assert row["answer"].lower() in fact["fact"].lower(), row


def test_retrieval_test_entities_never_appear_in_training_rows():
    assert {row["entity"] for row in RETRIEVAL_ROWS if row["split"] == "test"} == TEST_ENTITIES
    train = [row for row in RETRIEVAL_ROWS if row["split"] == "train"]
    assert len(train) == 192
    train_words = set().union(*(words(row["question"] + " " + row["answer"]) for row in train))
    for entity in TEST_ENTITIES:
        assert not words(entity) & train_words, entity
    train_text = {row["question"] for row in train}
    assert not train_text & {row["question"] for row in RETRIEVAL_ROWS if row["split"] == "test"}


def test_search_finds_the_gold_fact_for_every_demonstration_query():
    facts = {f["id"]: f["fact"] for f in FACTS}
    env = RetrievalEnv()
    for row in RETRIEVAL_ROWS:
        query = json.loads(env.demonstration(row)[-3]["content"].removeprefix("<tool_call>")
                           .removesuffix("</tool_call>"))["arguments"]["query"]
        assert facts[row["fact_id"]] in search(query), row["question"]


def test_search_ranks_by_word_overlap_with_ties_by_id():
    facts = [("f2", "Apples are red.", words("Apples are red.")), ("f1", "Red apples fall.", words("Red apples fall.")),
             ("f3", "Bananas are yellow.", words("Bananas are yellow.")), ("f4", "Green pears.", words("Green pears."))]
    assert search("red apples", facts) == ["Red apples fall.", "Apples are red."]
    assert search("yellow apples fall", facts) == ["Red apples fall.", "Apples are red.", "Bananas are yellow."]
    assert search("the of is", facts) == []


def test_retrieval_calls():
    env = RetrievalEnv()
    assert env.run_tool("search", {"query": "capital of Zorbia"}).splitlines()[0] == "Quellin is the capital of Zorbia."
    assert env.run_tool("search", {"query": "nothing matches xyzzy"}) == "no facts found"
    for name, arguments in [("lookup", {"query": "x"}), ("search", {}), ("search", {"query": 3}),
                            ("search", {"query": "x", "k": 5}), ("search", {"query": "x" * 5000})]:
        assert env.run_tool(name, arguments).startswith("error: ")


@pytest.mark.parametrize("answer, reward", [
    ("Lake Tarrin", 1.0), ("lake tarrin.", 1.0), ("  The Lake   Tarrin! ", 1.0), ('"Lake Tarrin"', 1.0),
    ("Tarrin", 0.0), ("Lake Tarrin or Lake Quosh", 0.0), ("", 0.0),
])
def test_retrieval_score(answer, reward):
    env = RetrievalEnv()
    env.reset({"question": "Which lake does the river Osmer flow into?", "answer": "Lake Tarrin"})
    assert env.score(answer) == reward


# ----------------------------------------------------------------------------------------------------
# both: episodes


def replay(env, demonstration: list[dict], row: dict) -> None:
    """Play the demonstration's assistant turns through `env`: the observations are the demonstration's
    tool turns, the episode ends only at the last turn, with reward 1."""
    opening = env.reset(row)
    assert demonstration[:len(opening)] == opening
    turns = demonstration[len(opening):]
    assert [m["role"] for m in turns] == ["assistant", "tool", "assistant"]
    for i, message in enumerate(turns):
        if message["role"] != "assistant":
            continue
        observation, reward, done = env.step(message["content"])
        if i == len(turns) - 1:
            assert (reward, done) == (1.0, True), (row, message)
        else:
            assert (observation, reward, done) == (turns[i + 1]["content"], 0.0, False), row


@pytest.mark.parametrize("env_class, rows", [(CalculatorEnv, CALCULATOR_ROWS), (RetrievalEnv, RETRIEVAL_ROWS)],
                         ids=["calculator", "retrieval"])
def test_every_demonstration_replays_to_reward_1(env_class, rows):
    for row in rows:
        demonstration = env_class().demonstration(row)
        assert demonstration[-1]["role"] == "assistant" and "error" not in demonstration[-2]["content"]
        replay(env_class(), demonstration, row)


@pytest.mark.parametrize("spec, row", [("calculator", CALCULATOR_ROWS[0]), ("retrieval", RETRIEVAL_ROWS[0])])
def test_episode_edges(spec, row):
    env = make_environment(spec)
    opening = env.reset(row)
    assert opening[0]["role"] == "system" and "<tool_call>" in opening[0]["content"]
    assert opening[-1] == {"role": "user", "content": row["question"]}
    assert env.step("I think I know this one.") == (None, 0.0, True)
    env = make_environment(spec)
    env.reset(row)
    observation, reward, done = env.step('<tool_call>{"name": "calculator", "arguments": {</tool_call>')
    assert observation.startswith("error: ") and (reward, done) == (0.0, False)
    observation, reward, done = env.step(format_tool_call("nope", {}))
    assert observation.startswith("error: ") and (reward, done) == (0.0, False)
    assert env.step("<answer>wrong</answer>") == (None, 0.0, True)


def test_template_tools_leave_the_instructions_to_the_template():
    """The template renders the tools; the system message still says how to answer."""
    env = CalculatorEnv(use_template_tools=True)
    opening = env.reset(CALCULATOR_ROWS[0])
    assert opening[0] == {"role": "system", "content": CalculatorEnv.system_prompt + "\n\n" + ANSWER_INSTRUCTION}
