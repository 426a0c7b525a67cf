"""The calculator environment: arithmetic word problems, solved by copying the numbers into a calculator.

The problems (`data/builtin/calculator.jsonl`, written by `generate_problems`) need one or two operations on
2-3 digit numbers: too hard for a small model to do in its head, easy once it learns to write the
expression (whose numbers all appear in the question) as a `calculator` call and copy the result into
<answer>...</answer>. The test split's templates are not the training split's, so a test score measures
the skill on unseen wording. Regenerate the file with `python -m alignkit.envs.calculator`.

The calculator never runs Python: the expression is parsed with `ast` and only numeric literals, + - * / //
% **, unary signs and parentheses are evaluated. Sizes are bounded so that no input is slow: at most
`MAX_LENGTH` characters, every value (literal, intermediate or final) at most `MAX_MAGNITUDE` in size, and
powers only to integer exponents of at most `MAX_EXPONENT`. Bad input gets an "error: ..." text, the
observation the model learns from, and never an exception.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
from pathlib import Path

from alignkit.data.builtin import builtin_path
from alignkit.envs.base import ToolEnvironment

MAX_LENGTH = 200
MAX_MAGNITUDE = 1e12
MAX_EXPONENT = 10

CALCULATOR = {
    "name": "calculator",
    "description": "the value of an arithmetic expression (numbers, + - * / // % ** and parentheses), e.g. "
                   "\"37 * 24 + 12\"",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
ALLOWED = "numbers, + - * / // % ** and parentheses"
SYMBOLS = {"×": "*", "÷": "/", "−": "-"}  # what a model copies from maths text
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # the comma of "1,234"
TOO_LARGE = "numbers are limited to 1e12 in size"
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


class CalculatorError(ValueError):
    """Why an expression cannot be evaluated (the text after "error: " in the tool's reply)."""


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; CalculatorError when it is not one or breaks a bound.

    Integer arithmetic stays exact (ints); `/` gives a float. "1,234" thousands separators, a trailing "="
    and the signs × ÷ − are accepted.
    """
    text = expression.strip()
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_LENGTH} characters")
    for symbol, replacement in SYMBOLS.items():
        text = text.replace(symbol, replacement)
    text = THOUSANDS.sub("", text).rstrip("= ")
    if not text:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")  # parsing only: ast.parse folds no constants, so 9**9**9 is not run
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalculatorError(f"not an arithmetic expression; use {ALLOWED}") from None
    try:
        return _value(tree.body)
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, complex or str
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and not (float(right).is_integer() and abs(right) <= MAX_EXPONENT):
            raise CalculatorError(f"powers are limited to whole exponents from -{MAX_EXPONENT} to {MAX_EXPONENT}")
        try:
            return _bounded(BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError(TOO_LARGE) from None
    raise CalculatorError(f"{_describe(node)} is not allowed; use {ALLOWED}")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(TOO_LARGE)
    return value


def _describe(node: ast.AST) -> str:
    """How the model's mistake is named in the error."""
    if isinstance(node, ast.Name):
        return f"the name {node.id[:40]!r}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        return "^ (write powers as **)"
    if isinstance(node, ast.Constant):
        return f"the constant {str(node.value)[:40]!r}"
    return {ast.Call: "a function call", ast.Attribute: "attribute access", ast.Tuple: "a comma",
            ast.Subscript: "indexing"}.get(type(node), f"{type(node).__name__} syntax")


def format_number(value: int | float) -> str:
    """A result as the calculator prints it: whole numbers without ".0", others to 12 significant digits."""
    if isinstance(value, int):
        return str(value)
    rounded = float(f"{value:.12g}")
    return str(int(rounded)) if rounded.is_integer() else repr(rounded)


def parse_number(text: str) -> float | None:
    """The one number in an answer ("84", "84.0", "1,234", "84 apples.", "$1,234.50"); None when the text
    has no number or more than one (so hedging between several numbers earns nothing)."""
    found = NUMBER.findall(text.replace("−", "-"))
    return float(found[0].replace(",", "")) if len(found) == 1 else None


class CalculatorEnv(ToolEnvironment):
    """Arithmetic word problems with a `calculator` tool; reward 1 for the right number in <answer>.

    Rows: {"question", "expression", "answer", ...} (the rows of `data/builtin/calculator.jsonl`).
    """

    tools = [CALCULATOR]
    system_prompt = "Solve the arithmetic word problem. Use the calculator for every computation."

    def call(self, name: str, arguments: dict) -> str:
        try:
            return format_number(evaluate(str(arguments["expression"])))
        except CalculatorError as e:
            return f"error: {e}"

    def score(self, answer: str) -> float:
        """1.0 when the answer's number equals the row's answer (to a relative 1e-6), else 0.0."""
        value = parse_number(answer)
        gold = float(self.row["answer"])
        return 1.0 if value is not None and abs(value - gold) <= 1e-6 * max(1.0, abs(gold)) else 0.0

    def demonstration(self, row: dict) -> list[dict]:
        """Opening, the calculator call on the row's expression, its result, the answer."""
        arguments = {"expression": row["expression"]}
        return self.one_call_solution(row, "calculator", arguments, format_number(row["answer"]))


# ----------------------------------------------------------------------------------------------------
# the built-in problems


def _pair(rng: random.Random) -> dict:
    return {"a": rng.randint(12, 99), "b": rng.randint(12, 99)}


def _exact_division(rng: random.Random) -> dict:
    b = rng.randint(11, 40)
    return {"a": b * rng.randint(11, 999 // b), "b": b}


def _not_divisible(rng: random.Random) -> dict:
    while True:
        a, b = rng.randint(100, 999), rng.randint(12, 40)
        if a % b:
            return {"a": a, "b": b}


def _bill(rng: random.Random) -> dict:
    while True:  # these divisors give short decimals: 157 / 16 = 9.8125
        a, n = rng.randint(100, 999), rng.choice([4, 8, 16, 20, 25, 40])
        if a % n:
            return {"a": a, "n": n}


def _profit(rng: random.Random) -> dict:
    numbers = _pair(rng)
    return {**numbers, "c": rng.randint(100, min(999, numbers["a"] * numbers["b"] - 1))}


def _packed(rng: random.Random) -> dict:
    while True:
        numbers = _pair(rng)
        product = numbers["a"] * numbers["b"]
        sizes = [c for c in range(12, 100) if product % c == 0 and c not in numbers.values()]
        if sizes:
            return {**numbers, "c": rng.choice(sizes)}


def _lent(rng: random.Random) -> dict:
    a = rng.randint(300, 999)
    return {"a": a, "b": rng.randint(100, a - 1)}


def _chairs(rng: random.Random) -> dict:
    a = rng.randint(200, 999)
    return {"a": a, "b": rng.randint(100, a - 50), "c": rng.randint(12, 99)}


TEMPLATES = [  # (id, question, expression, draw the numbers): the training split's
    ("boxes", "A school orders {a} boxes of pencils with {b} pencils in each box. How many pencils does the "
              "school order?", "{a} * {b}", _pair),
    ("orchard", "A farmer plants {a} rows of {b} apple trees, then {c} more trees along the fence. How many "
                "trees does the farmer plant in total?", "{a} * {b} + {c}",
     lambda rng: {**_pair(rng), "c": rng.randint(100, 999)}),
    ("library", "A library has {a} books and lends out {b} of them. How many books are still on the shelves?",
     "{a} - {b}", _lent),
    ("stickers", "{a} stickers are shared equally among {b} children. How many stickers does each child get?",
     "{a} / {b}", _exact_division),
    ("cinema", "A cinema sells {a} tickets at {b} dollars each. The evening costs it {c} dollars. What is the "
               "cinema's profit in dollars?", "{a} * {b} - {c}", _profit),
    ("train", "A train carries {a} passengers on Monday, {b} on Tuesday and {c} on Wednesday. How many "
              "passengers does it carry over the three days?", "{a} + {b} + {c}",
     lambda rng: {k: rng.randint(100, 999) for k in "abc"}),
    ("bakery", "A bakery bakes {a} muffins in the morning and {b} in the afternoon. How many muffins does it "
               "bake in {c} days?", "({a} + {b}) * {c}",
     lambda rng: {"a": rng.randint(100, 999), "b": rng.randint(100, 999), "c": rng.randint(12, 99)}),
    ("bill", "{n} friends split a bill of {a} dollars equally. How many dollars does each friend pay?",
     "{a} / {n}", _bill),
    ("eggs_left", "{a} eggs are packed into cartons of {b}. How many eggs are left over once every full carton "
                  "is packed?", "{a} % {b}", _not_divisible),
    ("eggs_full", "A farm packs {a} eggs into cartons that hold {b} eggs each. How many cartons can it fill "
                  "completely?", "{a} // {b}", _not_divisible),
    ("chairs", "A shop had {a} chairs and sold {b} of them. Each remaining chair weighs {c} kilograms. What is "
               "the total weight of the remaining chairs in kilograms?", "({a} - {b}) * {c}", _chairs),
    ("bolts", "A machine makes {a} bolts an hour for {b} hours, and the bolts are packed in bags of {c}. How "
              "many bags are filled?", "{a} * {b} / {c}", _packed),
    ("tank", "A tank holds {a} litres of water. {b} litres are used on Monday and {c} litres on Tuesday. How "
             "many litres are left?", "{a} - {b} - {c}",
     lambda rng: {"a": rng.randint(600, 999), "b": rng.randint(100, 299), "c": rng.randint(100, 299)}),
]


TEST_TEMPLATES = [  # worded unlike every training template, so a test question is no near-copy of a training one
    ("crates", "Each of {a} crates holds {b} oranges, and {c} loose oranges sit on the counter. How many oranges "
               "are there altogether?", "{a} * {b} + {c}", lambda rng: {**_pair(rng), "c": rng.randint(100, 999)}),
    ("stadium", "A stadium has {a} seats. {b} fans arrive before noon and {c} after noon. How many seats stay "
                "empty?", "{a} - {b} - {c}",
     lambda rng: {"a": rng.randint(600, 999), "b": rng.randint(100, 299), "c": rng.randint(100, 299)}),
    ("paint", "A painter has {a} litres of paint and uses {b} litres per room. How many rooms can she paint?",
     "{a} / {b}", _exact_division),
    ("marbles", "Jo buys {a} packs of {b} marbles and gives {c} marbles to a friend. How many marbles does Jo "
                "keep?", "{a} * {b} - {c}", _profit),
    ("rope", "A rope {a} centimetres long is cut into {n} equal pieces. How long is each piece, in centimetres?",
     "{a} / {n}", _bill),
    ("buses", "{a} pupils board buses that seat {b} each, filling every bus before the next. How many pupils ride "
              "in the last, partly filled bus?", "{a} % {b}", _not_divisible),
]


def generate_problems(n: int = 600, seed: int = 0, test_fraction: float = 0.2) -> list[dict]:
    """`n` problems with distinct questions: the training split from `TEMPLATES`, the test split (a
    `test_fraction` of `n`) from `TEST_TEMPLATES`, each list's templates taken in turn.

    The splits share no template: questions from one template differ only in their numbers, which the
    project's train/eval separation (`data.overlap`) rightly counts as near-copies.
    """
    rng = random.Random(seed)
    n_test = round(n * test_fraction)
    rows: list[dict] = []
    seen: set[str] = set()
    for split, templates, count in (("train", TEMPLATES, n - n_test), ("test", TEST_TEMPLATES, n_test)):
        made = 0
        while made < count:
            template, question, expression, draw = templates[made % len(templates)]
            numbers = draw(rng)
            text, expression = question.format(**numbers), expression.format(**numbers)
            if text in seen:
                continue
            seen.add(text)
            made += 1
            value = evaluate(expression)
            rows.append({"prompt": [{"role": "user", "content": text}], "question": text, "expression": expression,
                         "answer": int(value) if float(value).is_integer() else value, "split": split,
                         "template": template})
    return rows


def write_problems(path: str | Path | None = None, n: int = 600, seed: int = 0) -> Path:
    """Write `generate_problems(n, seed)` as JSONL (default: the built-in calculator.jsonl)."""
    path = Path(path) if path is not None else builtin_path("calculator.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in generate_problems(n, seed))
    return path


if __name__ == "__main__":
    print(write_problems())
