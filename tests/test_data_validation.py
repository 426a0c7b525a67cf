"""Data validation: every malformed file gets exactly one clear line and exit 2; valid files of every kind and
file format exit 0; the library reports all problems, converts formats and writes files atomically.

The malformed corpus lives in tests/data/malformed/ (text files); binary cases (gzip, Parquet, non-UTF-8,
saved HF datasets, unreadable files) are built at test time. `CASES` pairs each file with the one line
`alignkit data validate` must print.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.formats import (
    Problem,
    check_row,
    detect_kind,
    explicit_prompt,
    is_conversational,
    preference_to_unpaired,
    split_sft,
)
from alignkit.data.io import file_format, load_rows, scan, validate, write_jsonl
from alignkit.data.stats import dataset_stats, format_stats
from alignkit.errors import AlignkitError, DataError

CORPUS = Path(__file__).parent / "data" / "malformed"

FORMATS = (r"expected messages \| prompt\+completion \| text \| prompt\+chosen\+rejected \| "
           r"prompt\+completion\+label \| prompt")


def U(content):
    return {"role": "user", "content": content}


def A(content):
    return {"role": "assistant", "content": content}


def S(content):
    return {"role": "system", "content": content}


def run_cli(capsys, *argv):
    """Run `alignkit ARGV` in-process; returns (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------------------------------
# the malformed corpus: (file, --kind or None, the one line expected; {path} stands for the path given)

CASES = [
    # files as a whole
    ("does_not_exist.jsonl", None, r"{path}: file: does not exist"),
    ("not_a_dataset", None, r"{path}: file: not a dataset saved with save_to_disk \(no dataset_info\.json\)"),
    ("unreadable.jsonl", None, r"{path}: file: not readable \(permission denied\)"),
    ("unknown_extension.txt", None,
     r"{path}: file: unknown format; use \.jsonl, \.json, \.parquet, \.csv, \.tsv or a saved HF dataset"),
    ("empty.jsonl", None, r"{path}: file: no rows"),
    ("blank_lines_only.jsonl", None, r"{path}: file: no rows"),
    ("empty_list.json", None, r"{path}: file: no rows"),
    ("object_not_list.json", None, r"{path}: file: a \.json dataset must be a list of rows, got an object"),
    ("truncated.jsonl.gz", None,
     r"{path}: file: cannot read \(Compressed file ended before the end-of-stream marker was reached\)"),
    ("not_gzip.jsonl.gz", None, r"{path}: file: cannot read \(Not a gzipped file .*\)"),
    ("corrupt.parquet", None, r"{path}: file: cannot read as Parquet \(.*\)"),
    ("dataset_dict_without_train", None, r"{path}: file: pick a split with --split \(first, second\)"),
    # syntax and encoding
    ("bad_json_line.jsonl", None, r"{path}:2: json: invalid JSON \(Expecting value at column 60\)"),
    ("bad_syntax.json", None, r"{path}:3: json: invalid JSON \(Expecting ',' delimiter at column 49\)"),
    ("non_utf8.jsonl", None, r"{path}:2: encoding: not valid UTF-8 \(byte 16 of the line is 0xff\)"),
    ("non_utf8.csv", None, r"{path}:3: encoding: not valid UTF-8 \(byte 4 of the line is 0xe9\)"),
    ("bad_line_inside.jsonl.gz", None, r"{path}:3: json: invalid JSON \(Expecting property name .*\)"),
    # rows that are not objects, or of no known format
    ("row_is_list.jsonl", None, r"{path}:1: row: cannot tell the format from a list; " + FORMATS),
    ("row_is_list_after_valid.jsonl", None, r"{path}:2: row: must be a JSON object, got a list"),
    ("null_row.jsonl", "prompt", r"{path}:1: row: must be a JSON object, got null"),
    ("unknown_keys.jsonl", None, r"{path}:1: row: cannot tell the format from keys answer, question; " + FORMATS),
    # preference
    ("missing_chosen.jsonl", "preference", r"{path}:1: chosen: missing"),
    ("missing_rejected.jsonl", None, r"{path}:2: rejected: missing"),
    ("missing_column.csv", "preference", r"{path}:2: rejected: missing"),
    ("chosen_not_text.jsonl", None,
     r"{path}:1: chosen: must be a string or a list of \{role, content\} messages, got a number"),
    ("chosen_is_object.jsonl", None,
     r"{path}:1: chosen: must be a string or a list of \{role, content\} messages, got an object"),
    ("empty_chosen.jsonl", None, r"{path}:1: chosen: empty string"),
    ("empty_chosen.parquet", None, r"{path}:2: chosen: empty string"),
    ("empty_cell.tsv", None, r"{path}:3: chosen: empty string"),
    ("whitespace_prompt.jsonl", None, r"{path}:1: prompt: empty string"),
    ("chosen_equals_rejected.jsonl", None, r"{path}:2: rejected: identical to chosen \(a tie carries no preference\)"),
    ("mixed_string_and_conversation.jsonl", None,
     r"{path}:1: prompt: is a string while chosen and rejected are conversations; use one form per row"),
    ("margin_not_number.jsonl", None, r'{path}:1: margin: must be a finite number, got "high"'),
    ("margin_nan_string.jsonl", None, r'{path}:1: margin: must be a finite number, got "NaN"'),
    ("margin_nan_literal.jsonl", None, r"{path}:1: margin: must be a finite number, got nan"),
    ("margin_bool.jsonl", None, r"{path}:1: margin: must be a finite number, got true"),
    ("implicit_no_shared_prefix.jsonl", None,
     r"{path}:1: prompt: missing, and chosen and rejected share no prompt to take it from"),
    ("implicit_conversation_no_shared_prompt.jsonl", None,
     r"{path}:1: prompt: missing, and chosen and rejected share no prompt to take it from"),
    # unpaired
    ("label_yes.jsonl", None, r'{path}:1: label: must be true or false, got "yes"'),
    ("label_one.jsonl", None, r"{path}:2: label: must be true or false, got 1"),
    ("label_missing.jsonl", "unpaired", r"{path}:1: label: missing"),
    ("label_maybe.csv", None, r'{path}:3: label: must be true or false, got "maybe"'),
    ("unpaired_mixed_forms.jsonl", None,
     r"{path}:1: prompt: is a string while completion is a conversation; use one form per row"),
    # sft and messages
    ("bad_role.jsonl", None, r"{path}:1: messages\[1\]\.role: must be one of system, user, assistant, tool; got 'bot'"),
    ("missing_role.jsonl", None, r"{path}:1: messages\[0\]\.role: missing"),
    ("message_missing_content.jsonl", None, r"{path}:1: messages\[1\]\.content: missing"),
    ("content_not_string.jsonl", None, r"{path}:1: messages\[0\]\.content: must be a string, got a list"),
    ("message_not_object.jsonl", None,
     r"{path}:1: messages\[0\]: must be an object with role and content, got a string"),
    ("empty_user_content.jsonl", None, r"{path}:1: messages\[0\]\.content: empty string"),
    ("conversation_ends_with_user.jsonl", None,
     r"{path}:1: messages: conversation must end with the assistant turn, got a final 'user' turn"),
    ("empty_messages.jsonl", None, r"{path}:1: messages: empty conversation \(no messages\)"),
    ("text_not_string.jsonl", None, r"{path}:1: text: must be a string, got a number"),
    ("completion_not_assistant.jsonl", None,
     r"{path}:1: completion: conversation must end with the assistant turn, got a final 'user' turn"),
    # prompt
    ("prompt_ends_with_assistant.jsonl", "prompt",
     r"{path}:1: prompt: conversation must end with the user or system turn, got a final 'assistant' turn"),
    ("prompt_null.jsonl", "prompt", r"{path}:1: prompt: missing"),
]

OK_PREF = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


def _jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _build_generated(root: Path) -> None:
    """The cases that are binary, need permissions, or must not exist: built fresh for each session."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "non_utf8.jsonl").write_bytes(_jsonl_bytes([OK_PREF]) + b'{"prompt": "caf\xff", "chosen": "a", '
                                          b'"rejected": "b"}\n')
    (root / "non_utf8.csv").write_bytes(b"prompt\nWhat is 2+2?\ncaf\xe9\n")
    whole = gzip.compress(_jsonl_bytes([{"prompt": f"Prompt number {i}"} for i in range(500)]))
    (root / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (root / "not_gzip.jsonl.gz").write_bytes(_jsonl_bytes([OK_PREF]))
    (root / "bad_line_inside.jsonl.gz").write_bytes(
        gzip.compress(_jsonl_bytes([OK_PREF, OK_PREF]) + b"{'prompt': 'single quotes'}\n"))
    pq.write_table(pa.Table.from_pylist([OK_PREF, {"prompt": "Name a colour.", "chosen": "", "rejected": "Red"}]),
                   root / "empty_chosen.parquet")
    (root / "corrupt.parquet").write_bytes(b"PAR1 this is not really parquet")
    unreadable = root / "unreadable.jsonl"
    unreadable.write_bytes(_jsonl_bytes([OK_PREF]))
    unreadable.chmod(0)

    import datasets

    datasets.disable_progress_bars()
    datasets.DatasetDict({"first": datasets.Dataset.from_list([{"prompt": "a"}]),
                          "second": datasets.Dataset.from_list([{"prompt": "b"}])}).save_to_disk(
        str(root / "dataset_dict_without_train"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed_generated")
    _build_generated(root)
    yield root
    (root / "unreadable.jsonl").chmod(0o644)


def case_path(name: str, generated: Path) -> Path:
    static = CORPUS / name
    return static if static.exists() else generated / name


def test_corpus_and_table_agree():
    """Every committed corpus file has exactly one expectation, and the corpus has at least 30 files."""
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))
    committed = sorted(p.name for p in CORPUS.iterdir())
    assert len(committed) >= 30
    assert set(committed) <= set(names), set(committed) - set(names)


@pytest.mark.parametrize("name,kind,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_gives_one_line_and_exit_2(name, kind, expected, generated, capsys):
    path = case_path(name, generated)
    if name == "unreadable.jsonl" and os.access(path, os.R_OK):
        pytest.skip("running with privileges that read a chmod 000 file (root)")
    args = ["data", "validate", str(path)] + (["--kind", kind] if kind else [])
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2, (out, err)
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert re.fullmatch(expected.replace("{path}", re.escape(str(path))), lines[0]), lines[0]
    assert "Traceback" not in out + err
    assert err == ""


RELATIVE = ("does_not_exist.jsonl", "not_a_dataset", "empty.jsonl", "truncated.jsonl.gz", "bad_json_line.jsonl",
            "label_maybe.csv", "empty_chosen.parquet", "bad_role.jsonl")


@pytest.mark.parametrize("name,kind,expected", [c for c in CASES if c[0] in RELATIVE], ids=RELATIVE)
def test_relative_path_is_printed_as_given(name, kind, expected, generated, capsys, monkeypatch):
    """The line starts with the path exactly as the user typed it."""
    path = case_path(name, generated)
    monkeypatch.chdir(path.parent)
    args = ["data", "validate", path.name] + (["--kind", kind] if kind else [])
    rc, out, _ = run_cli(capsys, *args)
    assert rc == 2
    assert re.fullmatch(expected.replace("{path}", re.escape(path.name)), out.rstrip("\n"))


def test_console_script_subprocess():
    """The installed `alignkit` script exits 2 with the one line on stdout and nothing else."""
    script = Path(sys.executable).parent / "alignkit"
    if not script.exists():
        pytest.skip("console script not installed next to this python")
    path = CORPUS / "chosen_equals_rejected.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(script), "data", "validate", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == f"{path}:2: rejected: identical to chosen (a tie carries no preference)\n"
    assert proc.stderr == ""


def test_max_problems_limits_the_lines(tmp_path, capsys):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": ""}) + "\n" for _ in range(7)))
    rc, out, err = run_cli(capsys, "data", "validate", path, "--max-problems", "3")
    assert rc == 2
    assert out.splitlines() == [f"{path}:{i}: prompt: empty string" for i in (1, 2, 3)]
    assert err.strip() == "... and 4 more problems (raise --max-problems to see them)"


def test_kind_mismatch_is_reported(capsys):
    """An sft file checked as preference data names what is missing."""
    path = CORPUS / "bad_role.jsonl"
    rc, out, _ = run_cli(capsys, "data", "validate", path, "--kind", "preference")
    assert rc == 2
    assert out.splitlines() == [f"{path}:1: chosen: missing", f"{path}:1: rejected: missing"]


# ----------------------------------------------------------------------------------------------------
# valid files of every kind and format exit 0

VALID = {
    "sft_messages": ("sft", [
        {"messages": [S("Be brief."), U("What is 2+2?"), A("4.")], "source": "maths"},
        {"messages": [U("Hi"), A("Hello!"), U("Name a colour."), A("Blue.")], "source": "chat"},
    ]),
    "sft_prompt_completion": ("sft", [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "2+2=", "completion": "4"},
    ]),
    "sft_prompt_completion_conversational": ("sft", [
        {"prompt": [U("What is 2+2?")], "completion": [A("4.")]},
        {"prompt": [S(""), U("Hi")], "completion": [A("Hello!")]},
    ]),
    "sft_text": ("sft", [{"text": "The quick brown fox."}, {"text": "Jumps over the lazy dog."}]),
    "preference_explicit_string": ("preference", [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 1.5},
        {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Seven", "margin": 0.25},
    ]),
    "preference_explicit_conversational": ("preference", [
        {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
        {"prompt": [S("Be kind."), U("Hi")], "chosen": [A("Hello!")], "rejected": [A("Go away.")]},
    ]),
    "preference_implicit_string": ("preference", [
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
        {"chosen": "The sky is blue because of scattering.", "rejected": "The sky is green."},
    ]),
    "preference_implicit_conversational": ("preference", [
        {"chosen": [U("What is 2+2?"), A("4")], "rejected": [U("What is 2+2?"), A("5")]},
        {"chosen": [U("Hi"), A("Hello!")], "rejected": [U("Hi"), A("Go away.")]},
    ]),
    "unpaired": ("unpaired", [
        {"prompt": "What is 2+2?", "completion": "4", "label": True},
        {"prompt": "What is 2+2?", "completion": "5", "label": False},
    ]),
    "prompt_string": ("prompt", [{"prompt": "What is 2+2?"}, {"prompt": "Name a colour."}]),
    "prompt_conversational": ("prompt", [
        {"prompt": [S("Be brief."), U("What is 2+2?")]},
        {"prompt": [U("Hi"), A("Hello! How can I help?"), U("Name a colour.")]},
    ]),
}


def _flat(rows) -> bool:
    return all(isinstance(v, (str, bool, int, float)) for r in rows for v in r.values())


def write_dataset(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "jsonl.gz":
        path = path.with_suffix(".jsonl.gz")
        path.write_bytes(gzip.compress(_jsonl_bytes(rows)))
    elif fmt == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif fmt == "json_train":
        path = path.with_suffix(".json")
        path.write_text(json.dumps({"train": rows}), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        path = path.with_suffix("." + fmt)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "hf":
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        raise ValueError(fmt)
    return path


VALID_CASES = [
    (name, fmt)
    for name, (_, rows) in VALID.items()
    for fmt in ("jsonl", "json", "jsonl.gz", "parquet", "hf", "json_train", "csv", "tsv")
    if fmt not in ("csv", "tsv") or _flat(rows)
]


@pytest.mark.parametrize("name,fmt", VALID_CASES, ids=[f"{n}-{f}" for n, f in VALID_CASES])
def test_valid_file_exits_0(name, fmt, tmp_path, capsys):
    kind, rows = VALID[name]
    path = write_dataset(tmp_path / name, rows, fmt)
    rc, out, err = run_cli(capsys, "data", "validate", path)
    assert (rc, out) == (0, ""), (out, err)
    assert err.strip() == f"{path}: {len(rows)} rows, kind {kind}: valid"
    # the kind given explicitly agrees; the library returns the rows with their extra columns
    rc, out, _ = run_cli(capsys, "data", "validate", path, "--kind", kind)
    assert (rc, out) == (0, "")
    loaded = load_rows(path, kind)
    assert len(loaded) == len(rows)
    if fmt != "parquet" and fmt != "hf":  # columnar formats add missing keys as None
        assert loaded == rows


def test_dataset_dict_split(tmp_path, capsys):
    import datasets

    datasets.disable_progress_bars()
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}]),
                          "test": datasets.Dataset.from_list([{"prompt": " "}])}).save_to_disk(str(path))
    assert run_cli(capsys, "data", "validate", path)[:2] == (0, "")
    rc, out, _ = run_cli(capsys, "data", "validate", path, "--split", "test")
    assert (rc, out) == (2, f"{path}:1: prompt: empty string\n")
    rc, out, _ = run_cli(capsys, "data", "validate", path, "--split", "nope")
    assert (rc, out) == (2, f"{path}: file: pick a split with --split (train, test)\n")


def test_bom_and_crlf_are_accepted(tmp_path, capsys):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a"}\r\n{"prompt": "b"}\r\n')
    assert run_cli(capsys, "data", "validate", path)[:2] == (0, "")
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,completion,label\r\nx,y,TRUE\r\n")
    assert run_cli(capsys, "data", "validate", path)[:2] == (0, "")


# ----------------------------------------------------------------------------------------------------
# library: validate, load_rows, scan


def test_validate_reports_every_problem_with_its_line(tmp_path):
    path = tmp_path / "several.jsonl"
    path.write_text("\n".join([
        json.dumps(OK_PREF),                                        # 1 ok
        json.dumps({**OK_PREF, "chosen": ""}),                      # 2 empty chosen
        "",                                                         # 3 blank: skipped, still counted
        "{not json",                                                # 4 bad JSON
        json.dumps({**OK_PREF, "rejected": "4"}),                   # 5 tie
        json.dumps({**OK_PREF, "chosen": 1, "margin": "x"}),        # 6 two problems on one line
        json.dumps(OK_PREF),                                        # 7 ok
    ]) + "\n")
    result = validate(path)
    assert result.kind == "preference"
    assert [(p.line, p.field) for p in result.problems] == [
        (2, "chosen"), (4, "json"), (5, "rejected"), (6, "chosen"), (6, "margin")]
    assert result.lines == [1, 7]
    assert result.rows == [OK_PREF, OK_PREF]


def test_csv_problem_lines_are_file_lines(tmp_path):
    """A quoted cell spanning two lines moves later rows down: the line is the file's, not the row's."""
    path = tmp_path / "multiline.csv"
    path.write_text('prompt,chosen,rejected\n"two\nlines",a,b\nq,,b\n', encoding="utf-8")
    result = validate(path)
    assert [(p.line, p.field, p.why) for p in result.problems] == [(4, "chosen", "empty string")]
    assert result.rows == [{"prompt": "two\nlines", "chosen": "a", "rejected": "b"}]


def test_load_rows_raises_data_error_with_all_problems(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": ""}) + "\n" + json.dumps({"prompt": "ok"}) + "\n" + "[1]\n")
    with pytest.raises(DataError) as info:
        load_rows(path)
    assert info.value.problems == [f"{path}:1: prompt: empty string",
                                   f"{path}:3: row: must be a JSON object, got a list"]
    assert str(info.value) == f"{path}:1: prompt: empty string (and 1 more problems)"
    assert isinstance(info.value, AlignkitError)


def test_load_rows_file_errors_raise_alignkit_error(tmp_path):
    with pytest.raises(AlignkitError, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(AlignkitError, match="unknown kind 'pairs'"):
        validate(CORPUS / "empty_chosen.jsonl", kind="pairs")


def test_scan_yields_problems_instead_of_stopping():
    rows = list(scan(CORPUS / "bad_json_line.jsonl"))
    assert [line for line, _ in rows] == [1, 2, 3]
    assert isinstance(rows[1][1], Problem) and rows[1][1].field == "json"
    assert rows[0][1] == rows[2][1] == OK_PREF


@pytest.mark.parametrize("name,fmt", [("a.jsonl", "jsonl"), ("a.JSONL.GZ", "jsonl"), ("a.ndjson", "jsonl"),
                                      ("a.json", "json"), ("a.json.gz", "json"), ("a.parquet", "parquet"),
                                      ("a.csv", "csv"), ("a.tsv", "tsv")])
def test_file_format(name, fmt):
    assert file_format(name) == fmt


def test_file_format_unknown_and_directory(tmp_path):
    assert file_format(tmp_path) == "hf"
    with pytest.raises(AlignkitError, match="unknown format"):
        file_format("data.xlsx")


def test_problem_format():
    assert Problem(3, "chosen", "empty string").format("d.jsonl") == "d.jsonl:3: chosen: empty string"
    assert Problem(None, "file", "no rows").format("d.jsonl") == "d.jsonl: file: no rows"


# ----------------------------------------------------------------------------------------------------
# detection


@pytest.mark.parametrize("row,kind", [
    ({"messages": [U("a"), A("b")]}, "sft"),
    ({"prompt": "a", "completion": "b"}, "sft"),
    ({"text": "a"}, "sft"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
    ({"chosen": [U("a"), A("b")], "rejected": [U("a"), A("c")]}, "preference"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1.0}, "preference"),
    ({"prompt": "a", "completion": "b", "label": True}, "unpaired"),
    ({"prompt": "a"}, "prompt"),
    ({"prompt": [U("a")], "id": 7}, "prompt"),
    ({"question": "a"}, None),
    ({}, None),
    (["prompt"], None),
    ("prompt", None),
    (None, None),
])
def test_detect_kind(row, kind):
    assert detect_kind(row) == kind


@pytest.mark.parametrize("value,expected", [
    ([U("a")], True), ([], False), ("a", False), ([{"content": "a"}], False), (["a"], False), (None, False)])
def test_is_conversational(value, expected):
    assert is_conversational(value) is expected


def test_check_row_accepts_empty_system_message():
    assert check_row({"messages": [S(""), U("a"), A("b")]}, "sft") == []
    assert check_row({"messages": [U(""), A("b")]}, "sft") == [("messages[0].content", "empty string")]


def test_extra_columns_are_kept(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "id": 1, "meta": {"source": "x", "tags": ["t"]}},
            {"prompt": "q", "chosen": "c", "rejected": "d", "id": 2, "meta": None}]
    path = write_dataset(tmp_path / "extra", rows, "jsonl")
    assert load_rows(path) == rows
    path = write_dataset(tmp_path / "extra_pq", [dict(r, meta="m") for r in rows], "parquet")
    assert [r["id"] for r in load_rows(path)] == [1, 2]
    assert all(r["meta"] == "m" for r in load_rows(path))


# ----------------------------------------------------------------------------------------------------
# conversions


def test_explicit_prompt_hh_transcript():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello there!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
           "id": 3}
    out = explicit_prompt(row)
    assert out == {"prompt": "\n\nHuman: Hi\n\nAssistant: ", "chosen": "Hello there!", "rejected": "Go away.", "id": 3}
    assert "prompt" not in row  # the input is not modified


def test_explicit_prompt_multi_turn_hh_uses_last_shared_marker():
    base = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:"
    out = explicit_prompt({"chosen": base + " Blue.", "rejected": base + " Seven."})
    assert out["prompt"] == base + " "
    assert (out["chosen"], out["rejected"]) == ("Blue.", "Seven.")


def test_explicit_prompt_string_splits_at_whitespace():
    """A word both answers start with ("Paris"/"Pa...") stays in the answers."""
    out = explicit_prompt({"chosen": "The capital is Paris.", "rejected": "The capital is Pamplona."})
    assert out["prompt"] == "The capital is "
    assert (out["chosen"], out["rejected"]) == ("Paris.", "Pamplona.")
    assert out["prompt"] + out["chosen"] == "The capital is Paris."


def test_explicit_prompt_conversation_keeps_final_turn_in_answers():
    chosen = [S("Be kind."), U("Hi"), A("Hello!")]
    rejected = [S("Be kind."), U("Hi"), A("Go away.")]
    out = explicit_prompt({"chosen": chosen, "rejected": rejected})
    assert out["prompt"] == [S("Be kind."), U("Hi")]
    assert out["chosen"] == [A("Hello!")] and out["rejected"] == [A("Go away.")]
    # identical conversations still leave the final turn out of the prompt
    same = explicit_prompt({"chosen": [U("Hi"), A("x")], "rejected": [U("Hi"), A("x")]})
    assert same["prompt"] == [U("Hi")]


def test_explicit_prompt_returns_explicit_rows_unchanged():
    row = dict(OK_PREF)
    assert explicit_prompt(row) is row


def test_preference_to_unpaired_keeps_extra_columns():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2.0, "id": 7, "source": "hh"},
            {"chosen": [U("Hi"), A("Hello")], "rejected": [U("Hi"), A("Bye")], "id": 8}]
    out = preference_to_unpaired(rows)
    assert out == [
        {"id": 7, "source": "hh", "prompt": "p", "completion": "a", "label": True},
        {"id": 7, "source": "hh", "prompt": "p", "completion": "b", "label": False},
        {"id": 8, "prompt": [U("Hi")], "completion": [A("Hello")], "label": True},
        {"id": 8, "prompt": [U("Hi")], "completion": [A("Bye")], "label": False},
    ]
    assert all(check_row(r, "unpaired") == [] for r in out)
    assert all(detect_kind(r) == "unpaired" for r in out)


@pytest.mark.parametrize("row,expected", [
    ({"messages": [U("a"), A("b")]}, ([U("a")], [A("b")])),
    ({"prompt": "a", "completion": "b"}, ("a", "b")),
    ({"text": "a"}, ("", "a")),
])
def test_split_sft(row, expected):
    assert split_sft(row) == expected


# ----------------------------------------------------------------------------------------------------
# writing


def _leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_jsonl_round_trip_and_no_temp_file(tmp_path, name):
    rows = [{"prompt": "Grüße, 你好 \u2603", "n": 1}, {"prompt": [U("a\nb")], "label": True, "x": None}]
    path = tmp_path / "sub" / name
    write_jsonl(path, rows)
    assert _leftovers(path.parent, name) == []
    assert [row for _, row in scan(path)] == rows
    if not name.endswith(".gz"):
        assert "Grüße" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    write_jsonl(path, rows[:1])  # replaces, never appends
    assert [row for _, row in scan(path)] == rows[:1]
    assert _leftovers(path.parent, name) == []


def test_write_jsonl_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 2}, {"b": object()}])
    assert path.read_text() == '{"a": 1}\n'


def test_write_jsonl_failure_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 2}, {"b": object()}])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# CSV


def test_csv_label_and_margin_coercion(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label,note\n"
                    "p,a,True,1\np,b,FALSE,0\np,c,1,x\np,d,0,y\np,e, false ,z\n", encoding="utf-8")
    rows = load_rows(path)
    assert [r["label"] for r in rows] == [True, False, True, False, False]
    assert [r["note"] for r in rows] == ["1", "0", "x", "y", "z"]  # only label and margin are converted
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b, 3 \np,a,b,-2\n", encoding="utf-8")
    assert [r["margin"] for r in load_rows(path)] == [1.5, 3.0, -2.0]


def test_csv_empty_margin_cell_means_no_margin(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b,\n", encoding="utf-8")
    assert [r["margin"] for r in load_rows(path)] in ([1.5, None], [1.5, ""])


def test_csv_bad_margin_and_nan_margin(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,big\np,a,b,nan\np,a,b,inf\n", encoding="utf-8")
    assert [p.format("f") for p in validate(path).problems] == [
        'f:2: margin: must be a finite number, got "big"',
        "f:3: margin: must be a finite number, got nan",
        "f:4: margin: must be a finite number, got inf",
    ]


@pytest.mark.parametrize("text", ["prompt,chosen,rejected\np,a,b,EXTRA\n", "question,answer\nq,a,EXTRA\n"])
def test_csv_row_with_extra_cells_is_one_line_problem(tmp_path, capsys, text):
    path = tmp_path / "extra.csv"
    path.write_text(text, encoding="utf-8")
    rc, out, err = run_cli(capsys, "data", "validate", path)
    assert rc == 2
    assert len(out.splitlines()) == 1 and out.startswith(f"{path}:2: ")
    assert "internal error" not in err


@pytest.mark.parametrize("first", [{"prompt": "p", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
                         ids=["no-chosen", "no-rejected"])
def test_partial_preference_row_is_not_a_prompt_row(tmp_path, capsys, first):
    path = tmp_path / "partial.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(OK_PREF) + "\n")
    rc, out, _ = run_cli(capsys, "data", "validate", path)
    assert rc == 2
    assert re.fullmatch(re.escape(f"{path}:1: ") + r"(chosen|rejected): missing", out.rstrip("\n"))


# ----------------------------------------------------------------------------------------------------
# statistics


def _stats_file(tmp_path) -> Path:
    rows = [
        {"prompt": "aaaa", "chosen": "x" * 10, "rejected": "y" * 5},      # 1
        {"prompt": "aaaa", "chosen": "x" * 10, "rejected": "y" * 5},      # 2 duplicate row (and prompt)
        {"prompt": "bb", "chosen": "x" * 20, "rejected": "y" * 1},        # 3
        {"prompt": "aaaa", "chosen": "z" * 30, "rejected": "y" * 2},      # 4 repeated prompt, new row
        {"prompt": "cccccccc", "chosen": "x" * 40, "rejected": "y" * 3},  # 5
        {"prompt": "dd", "chosen": "same", "rejected": "same"},           # 6 tie
        {"prompt": "dd", "chosen": "", "rejected": "no"},                 # 7 problem
    ]
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")  # 8 bad JSON
    return path


def test_dataset_stats_numbers(tmp_path):
    stats = dataset_stats(_stats_file(tmp_path))
    assert stats["kind"] == "preference"
    assert stats["rows"] == 8
    assert stats["valid_rows"] == 5
    assert stats["problems"] == 3
    assert stats["ties"] == 1
    assert stats["duplicate_rows"] == 1
    assert stats["duplicate_prompts"] == 2
    assert stats["conversational"] == 0
    # nearest-rank percentiles over the 5 valid rows (index int(q/100 * n))
    assert stats["chars"]["prompt"] == {"p5": 2, "p50": 4, "p95": 8, "max": 8}       # 2 4 4 4 8
    assert stats["chars"]["chosen"] == {"p5": 10, "p50": 20, "p95": 40, "max": 40}   # 10 10 20 30 40
    assert stats["chars"]["rejected"] == {"p5": 1, "p50": 3, "p95": 5, "max": 5}     # 1 2 3 5 5
    assert "tokens" not in stats
    text = format_stats(stats)
    assert "8 rows, kind preference" in text and "ties (chosen == rejected)  1" in text


def test_dataset_stats_conversational_and_implicit(tmp_path):
    rows = [{"chosen": [U("Hi"), A("Hello!")], "rejected": [U("Hi"), A("Go")]},
            {"prompt": "What?", "chosen": "This.", "rejected": "That."}]
    path = write_dataset(tmp_path / "conv", rows, "jsonl")
    stats = dataset_stats(path)
    assert stats["conversational"] == 1
    assert stats["chars"]["prompt"]["max"] == 5
    assert stats["chars"]["chosen"] == {"p5": 5, "p50": 6, "p95": 6, "max": 6}


def test_dataset_stats_with_tokenizer(tmp_path, tiny_tokenizer):
    path = write_dataset(tmp_path / "p", VALID["prompt_string"][1], "jsonl")
    stats = dataset_stats(path, tokenizer=tiny_tokenizer)
    assert set(stats["tokens"]) == {"prompt"}
    n = len(tiny_tokenizer("Name a colour.", add_special_tokens=False).input_ids)
    assert stats["tokens"]["prompt"]["max"] == max(
        n, len(tiny_tokenizer("What is 2+2?", add_special_tokens=False).input_ids))


def test_dataset_stats_empty_file_has_no_rows():
    stats = dataset_stats(CORPUS / "empty.jsonl")
    assert stats["rows"] == 0


def test_data_stats_cli_json_and_text(tmp_path, capsys):
    path = _stats_file(tmp_path)
    rc, out, _ = run_cli(capsys, "data", "stats", path, "--json")
    assert rc == 0
    assert json.loads(out) == dataset_stats(path)
    rc, out, _ = run_cli(capsys, "data", "stats", path)
    assert rc == 0 and "valid rows" in out and "length in chars" in out
    rc, out, err = run_cli(capsys, "data", "stats", tmp_path / "missing.jsonl")
    assert (rc, out) == (2, "") and err == f"alignkit: error: {tmp_path / 'missing.jsonl'}: file: does not exist\n"


def test_no_temp_files_left_in_corpus():
    """Guard: the tests never write into the committed corpus."""
    assert not any(p.name.startswith(".") for p in CORPUS.iterdir())


def test_unreadable_file_message_even_as_root(tmp_path, capsys, monkeypatch):
    """Root reads chmod 000 files, so the corpus case skips there; pretend access is denied instead."""
    import alignkit.data.io as data_io

    path = tmp_path / "locked.jsonl"
    path.write_text(json.dumps(OK_PREF) + "\n")
    monkeypatch.setattr(data_io.os, "access", lambda p, mode: False)
    rc, out, err = run_cli(capsys, "data", "validate", path)
    assert (rc, out, err) == (2, f"{path}: file: not readable (permission denied)\n", "")
