"""Read and write datasets: JSONL (optionally gzipped), JSON, Parquet, CSV/TSV and HF datasets saved to disk.

`scan` yields every row with its 1-based line (the row number for formats without lines) and turns each
unreadable row into a `Problem` instead of stopping, so validation can report all of them at once.
`load_rows` is what training code calls: it validates and returns plain dicts, or raises `DataError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data.builtin import HERE, builtin_path
from alignkit.data.formats import KINDS, Problem, check_row, detect_kind, type_name
from alignkit.errors import AlignkitError, DataError
from alignkit.files import write_atomic

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


def file_format(path: str | os.PathLike) -> str:
    """One of jsonl, json, parquet, csv, tsv, hf (a dataset saved with `save_to_disk`)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "hf"
    for suffix, fmt in ((JSONL_SUFFIXES, "jsonl"), ((".json", ".json.gz"), "json"), ((".parquet",), "parquet"),
                        ((".csv",), "csv"), ((".tsv",), "tsv")):
        if name.endswith(suffix):
            return fmt
    raise AlignkitError(f"{path}: file: unknown format; use .jsonl, .json, .parquet, .csv, .tsv or a saved HF dataset")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decode(raw: bytes, line: int) -> str | Problem:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem(line, "encoding", f"not valid UTF-8 (byte {e.start + 1} of the line is {raw[e.start]:#04x})")


def _scan_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as f:
        for line, raw in enumerate(f, start=1):
            text = _decode(raw, line)
            if isinstance(text, Problem):
                yield line, text
                continue
            text = text.lstrip("\ufeff") if line == 1 else text
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as e:
                yield line, Problem(line, "json", f"invalid JSON ({e.msg} at column {e.colno})")


def _scan_json(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as f:
        raw = f.read()
    text = _decode(raw, 1)
    if isinstance(text, Problem):
        yield 1, Problem(None, "encoding", text.why.replace("of the line", "of the file"))
        return
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as e:
        yield e.lineno, Problem(e.lineno, "json", f"invalid JSON ({e.msg} at column {e.colno})")
        return
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
    if not isinstance(data, list):
        yield 1, Problem(None, "file", f"a .json dataset must be a list of rows, got {type_name(data)}")
        return
    yield from enumerate(data, start=1)


def _coerce_csv(row: dict) -> dict:
    """CSV cells are strings: turn the label and margin columns back into their types when they parse."""
    out = dict(row)
    label = out.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        out["label"] = label.strip().lower() in ("true", "1")
    margin = out.get("margin")
    if isinstance(margin, str) and not margin.strip():
        out["margin"] = None  # an empty cell is how a CSV leaves one row's margin out
    elif isinstance(margin, str):
        try:
            out["margin"] = float(margin)
        except ValueError:
            pass
    return out


def _scan_csv(path: Path, delimiter: str) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        for line, raw_line in enumerate(raw.split(b"\n"), start=1):
            bad = _decode(raw_line, line)
            if isinstance(bad, Problem):
                yield line, bad
                return
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""), delimiter=delimiter)
    for row in reader:
        if None in row:  # DictReader puts cells beyond the header under None
            extra = len(row[None])
            yield reader.line_num, Problem(reader.line_num, "row", f"{extra} more cell{'s' if extra > 1 else ''} "
                                           f"than the header has columns")
            continue
        yield reader.line_num, _coerce_csv(row)


def _scan_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise AlignkitError(f"{path}: file: cannot read as Parquet ({str(e).splitlines()[0]})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _scan_hf(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise AlignkitError(f"{path}: file: reading saved HF datasets needs `pip install datasets`") from None
    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise AlignkitError(f"{path}: file: not a dataset saved with save_to_disk (no dataset_info.json)") from None
    if isinstance(data, datasets.DatasetDict):
        name = split or ("train" if "train" in data else next(iter(data)) if len(data) == 1 else None)
        if name not in data:
            raise AlignkitError(f"{path}: file: pick a split with --split ({', '.join(data)})")
        data = data[name]
    yield from enumerate(data.to_list(), start=1)


BUILTIN = "builtin:"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """`builtin:NAME` names a dataset shipped with alignkit (`builtin:sft.jsonl`); anything else is a path."""
    text = str(path)
    if not text.startswith(BUILTIN):
        return Path(path)
    p = builtin_path(text[len(BUILTIN):])
    if not p.is_file():
        names = ", ".join(BUILTIN + f.name for f in sorted(HERE.glob("*.jsonl")))
        raise AlignkitError(f"{path}: file: no such built-in dataset; there are {names}")
    return p


def scan(path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line, row) for every row, with unreadable rows as `Problem`s. Raises AlignkitError for the file."""
    p = resolve_data_path(path)
    if not p.exists():
        raise AlignkitError(f"{path}: file: does not exist")
    fmt = file_format(p)
    if fmt != "hf" and not p.is_file():
        raise AlignkitError(f"{path}: file: not a regular file")
    if not os.access(p, os.R_OK):
        raise AlignkitError(f"{path}: file: not readable (permission denied)")
    try:
        if fmt == "jsonl":
            yield from _scan_jsonl(p)
        elif fmt == "json":
            yield from _scan_json(p)
        elif fmt in ("csv", "tsv"):
            yield from _scan_csv(p, "," if fmt == "csv" else "\t")
        elif fmt == "parquet":
            yield from _scan_parquet(p)
        else:
            yield from _scan_hf(p, split)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise AlignkitError(f"{path}: file: cannot read ({e})") from None


@dataclass
class Validation:
    """What `validate` found: the kind, the valid rows with their lines, and every problem."""

    kind: str | None
    rows: list[dict]
    lines: list[int]
    problems: list[Problem]


def validate(path: str | os.PathLike, kind: str | None = None, split: str | None = None) -> Validation:
    """Read and check a whole file. The kind is detected from the first row when not given."""
    if kind is not None and kind not in KINDS:
        raise AlignkitError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    rows, lines, problems = [], [], []
    for line, row in scan(path, split):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        if kind is None:
            kind = detect_kind(row)
            if kind is None:
                what = f"keys {', '.join(sorted(map(str, row)))}" if isinstance(row, dict) else type_name(row)
                problems.append(Problem(line, "row", f"cannot tell the format from {what}; expected "
                                        "messages | prompt+completion | text | prompt+chosen+rejected | "
                                        "prompt+completion+label | prompt"))
                continue
        found = check_row(row, kind)
        problems += [Problem(line, field, why) for field, why in found]
        if not found:
            rows.append(row)
            lines.append(line)
    if not rows and not problems:
        problems.append(Problem(None, "file", "no rows"))
    return Validation(kind, rows, lines, problems)


def load_rows(path: str | os.PathLike, kind: str | None = None, split: str | None = None) -> list[dict]:
    """Validated rows of a dataset file; raises DataError listing every problem."""
    result = validate(path, kind, split)
    if result.problems:
        raise DataError([p.format(str(path)) for p in result.problems])
    return result.rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows as JSONL atomically: a temporary file renamed into place, so a crash leaves no half file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if p.name.endswith(".gz") else open

    def write(tmp: Path) -> None:
        with opener(tmp, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_atomic(p, write)


def read_jsonl_file(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file alignkit wrote itself (no validation)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_train_eval(path: str | os.PathLike, kind: str, eval_path: str | os.PathLike | None = None,
                    train_split: str = "train", test_split: str = "test") -> tuple[list[dict], list[dict]]:
    """Training and held-out rows, as TRL users expect from dataset_train_split / dataset_test_split.

    A saved HF DatasetDict gives its two splits; rows with a "split" column (alignkit's built-in sets and
    what its stages write) are divided by it; any other file is all training data. `eval_path`, when given,
    is the held-out data whatever the training file holds.
    """
    if file_format(resolve_data_path(path)) == "hf":
        train = load_rows(path, kind, train_split)
        held_out = load_rows(eval_path, kind) if eval_path else _optional_split(path, kind, test_split)
        return train, held_out
    rows = load_rows(path, kind)
    if any("split" in row for row in rows):
        train = [r for r in rows if r.get("split", train_split) == train_split]
        held_out = [r for r in rows if r.get("split") == test_split]
    else:
        train, held_out = rows, []
    if not train:
        raise AlignkitError(f"{path}: split: no rows with split {train_split!r} (dataset_train_split)")
    if eval_path:
        held_out = load_rows(eval_path, kind)
    return train, held_out


def _optional_split(path, kind: str, split: str) -> list[dict]:
    """Rows of `split` when the saved dataset is a DatasetDict that has it; none otherwise."""
    import datasets

    data = datasets.load_from_disk(str(resolve_data_path(path)))
    return load_rows(path, kind, split) if isinstance(data, datasets.DatasetDict) and split in data else []
