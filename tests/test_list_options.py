"""List-typed config fields as people type them: space-separated words, commas, JSON, YAML lists (issue 21)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.safety import proxy_cli
from alignkit.cli import main
from alignkit.config import KEEP_COMMAS, Words, build_config, coerce, flat_fields
from alignkit.errors import AlignkitError
from alignkit.options import Parser, add_arguments, config_from_args
from alignkit.safety.guardrails import GuardrailsConfig


@dataclass
class Lists:
    names: list[str] = field(default_factory=list)
    """some names"""
    ids: list[int] = field(default_factory=lambda: [1, 2])
    """some ids"""
    weights: list[float] = field(default_factory=list)
    """some weights"""
    pair: tuple[str, ...] = ()
    """a tuple"""
    maybe: list[str] | None = None
    """an optional list"""
    patterns: list[str] = field(default_factory=list, metadata=KEEP_COMMAS)
    """regular expressions"""


def parse(*argv: str) -> Lists:
    parser = Parser(prog="t")
    parser.add_argument("--config")
    add_arguments(parser, Lists)
    return config_from_args(Lists, parser.parse_args(list(argv)))


# a word with no comma, whitespace, bracket or quote, not starting with '-' (argparse would take it for an option)
WORD = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/]{0,11}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=6))
def test_space_comma_and_json_spellings_give_the_same_list(words):
    spaced = parse("--names", *words).names
    assert spaced == words
    assert parse("--names", ",".join(words)).names == words
    assert parse("--names", ", ".join(words)).names == words
    assert parse("--names", json.dumps(words)).names == words
    assert build_config(Lists, {"names": words}).names == words  # a YAML list
    assert build_config(Lists, {"names": ",".join(words)}).names == words  # a YAML string


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-10**6, max_value=10**6), max_size=6))
def test_ints_are_coerced_whatever_the_spelling(numbers):
    words = [str(n) for n in numbers]
    for value in (Words(words), ",".join(words), json.dumps(numbers), words, numbers):
        assert coerce("ids", value, list[int]) == numbers
    assert coerce("weights", Words(words), list[float]) == [float(n) for n in numbers]


def test_mixed_words_commas_and_json_on_the_command_line():
    assert parse("--names", "a,b", "c", '["d, e", "f"]').names == ["a", "b", "c", "d, e", "f"]
    assert parse("--ids", "3", "4,5").ids == [3, 4, 5]
    assert parse("--weights", "0.5,1e-3").weights == [0.5, 0.001]
    assert parse("--pair", "x", "y").pair == ("x", "y")
    assert parse("--names=a").names == ["a"]
    assert parse("--names", "a", "--names", "b").names == ["b"]  # like every option: the last one wins


def test_json_keeps_commas_inside_values():
    assert parse("--names", '["a, b", "c"]').names == ["a, b", "c"]
    assert build_config(Lists, {"names": '["a, b"]'}).names == ["a, b"]


def test_empty_values():
    assert parse("--ids", "").ids == []
    assert parse("--ids", "[]").ids == []
    assert parse("--names", " , ,").names == []
    assert build_config(Lists, {"names": ""}).names == []
    assert build_config(Lists, {"names": []}).names == []
    assert parse("--maybe", "").maybe is None
    assert parse("--maybe", "none").maybe is None
    assert parse("--maybe", "a,b").maybe == ["a", "b"]
    assert parse("--maybe", "none", "x").maybe == ["none", "x"]
    assert parse().ids == [1, 2] and parse().maybe is None


def test_a_field_that_keeps_commas_splits_only_on_words():
    assert parse("--patterns", r"\d{2,4}", "a,b").patterns == [r"\d{2,4}", "a,b"]
    assert parse("--patterns", '["x", "y"]').patterns == ["x", "y"]
    assert build_config(Lists, {"patterns": r"[,;]"}).patterns == [r"[,;]"]
    assert parse("--patterns", "").patterns == []


def test_a_yaml_list_is_taken_item_by_item():
    assert build_config(Lists, {"names": ["a, b", "[1]"]}).names == ["a, b", "[1]"]
    assert build_config(Lists, {"names": [1, 2.5]}).names == ["1", "2.5"]
    assert build_config(Lists, {"ids": [1, "2", 3.0]}).ids == [1, 2, 3]


@pytest.mark.parametrize("values,says", [
    ({"ids": "1,x"}, "config: ids: expected a list of int; 'x' is not one"),
    ({"ids": Words(["1", "2.5"])}, "config: ids: expected a list of int; '2.5' is not one"),
    ({"ids": "[1, 2.5]"}, "config: ids: expected a list of int; 2.5 is not one"),
    ({"ids": [True]}, "config: ids: expected a list of int; True is not one"),
    ({"weights": ["fast"]}, "config: weights: expected a list of float; 'fast' is not one"),
    ({"names": '[{"a": 1}]'}, "config: names: expected a list of str; {'a': 1} is not one"),
    ({"names": 5}, "config: names: expected list, got 5"),
    ({"names": None}, "config: names: needs a value"),
])
def test_a_bad_item_is_one_line_naming_the_field_and_the_item(values, says):
    with pytest.raises(AlignkitError) as caught:
        build_config(Lists, values)
    assert str(caught.value) == says


def test_help_shows_the_accepted_form(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")
    parser = Parser(prog="t")
    add_arguments(parser, Lists)
    text = parser.format_help()
    assert "--names VALUE [VALUE ...]" in text and "--ids N [N ...]" in text and "--weights X [X ...]" in text
    assert "some ids (space- or comma-separated, or JSON) (default: 1 2)" in text
    assert "some names (space- or comma-separated, or JSON)\n" in text  # an empty default is not shown
    assert "regular expressions (space-separated, or JSON; commas stay in a value)" in text


# ----------------------------------------------------------------------------------------------------
# the real list fields: guard serve's rails


def test_every_list_field_of_the_guardrails_is_one_of_these():
    lists = {name for name, (_, kind, _, _) in flat_fields(proxy_cli.GuardServeConfig).items()
             if str(kind).startswith(("list", "tuple"))}
    assert lists == {"deny_patterns", "deny_keywords", "pii_kinds"}


def test_guard_serve_takes_list_options_as_typed(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(proxy_cli, "serve", seen.append)
    rc = main(["guard", "serve", "--upstream", "http://127.0.0.1:9", "--deny_keywords", "secret", "password,token",
               "--deny-patterns", r"\d{2,4}", "--pii_kinds", "email,phone"])
    assert rc == 0
    rails = seen[0].rails
    assert rails.deny_keywords == ["secret", "password", "token"]
    assert rails.deny_patterns == [r"\d{2,4}"]
    assert rails.pii_kinds == ["email", "phone"]
    assert main(["guard", "serve", "--upstream", "http://127.0.0.1:9", "--deny_keywords", '["a, b"]',
                 "--pii_kinds", ""]) == 0
    assert (seen[1].rails.deny_keywords, seen[1].rails.pii_kinds) == (["a, b"], [])


def test_guard_serve_bad_list_item_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(proxy_cli, "serve", lambda config: pytest.fail("should not serve"))
    rc = main(["guard", "serve", "--upstream", "http://127.0.0.1:9", "--pii_kinds", "email,passport"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "alignkit: error: config: pii_kinds: 'passport' is not one of " \
        "email, phone, credit_card, ssn, iban\n"


def test_guard_serve_help_shows_the_form(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as done:
        main(["guard", "serve", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    entries = {m.group(1): m.group(2) for m in re.finditer(r"\n  (--\w+ [^\n]*)\n?(.*?)(?=\n  -|\Z)", out, re.DOTALL)}
    keywords = entries["--deny_keywords VALUE [VALUE ...], --deny-keywords VALUE [VALUE ...]"]
    assert keywords.strip().endswith("a match blocks (category denylist) (space- or comma-separated, or JSON)")
    pii = entries["--pii_kinds VALUE [VALUE ...], --pii-kinds VALUE [VALUE ...]"]
    assert pii.strip().endswith("(space- or comma-separated, or JSON) (default: email phone credit_card ssn iban)")
    patterns = entries["--deny_patterns VALUE [VALUE ...], --deny-patterns VALUE [VALUE ...]"]
    assert patterns.strip().endswith("(space-separated, or JSON; commas stay in a value)")


def test_rails_yaml_takes_a_list_or_a_comma_separated_string(tmp_path):
    rails = tmp_path / "rails.yaml"
    rails.write_text("deny_keywords: secret, credit card dump\npii_kinds: [email]\n"
                     "deny_patterns: 'api[_-]?key\\s{0,3}=, x'\n")
    config = GuardrailsConfig.from_yaml(rails)
    assert config.deny_keywords == ["secret", "credit card dump"]
    assert config.pii_kinds == ["email"]
    assert config.deny_patterns == [r"api[_-]?key\s{0,3}=, x"]
    rails.write_text('deny_keywords: ["a, b", c]\n')
    assert GuardrailsConfig.from_yaml(rails).deny_keywords == ["a, b", "c"]


def test_lora_target_modules_as_trl_spells_them(tmp_path):
    """TRL's `--lora_target_modules q_proj v_proj` (space-separated), the comma form, and the default."""
    from alignkit.cli import parser_for
    from alignkit.models.lora import target_modules
    from alignkit.options import config_from_args

    def built(*extra):
        argv = ["sft", "--model", "embedded:tiny", "--data", "builtin:sft.jsonl", *extra]
        args = parser_for(argv).parse_args(argv)
        from alignkit.methods.sft import SFTConfig
        return config_from_args(SFTConfig, args).peft.lora_target_modules

    assert built("--lora_target_modules", "q_proj", "v_proj") == ["q_proj", "v_proj"]
    assert built("--lora_target_modules", "q_proj,v_proj") == ["q_proj", "v_proj"]
    assert target_modules(built()) == "all-linear"
    assert target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"] == target_modules("q_proj, v_proj")
