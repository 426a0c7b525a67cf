"""Readers of the files the pipeline's stages hand each other: prompt rows (several files at once, one split),
response-pair files (`alignkit generate-pairs`) and generation files (`alignkit generate`).

They sit in data/ because stages of several layers read them (rollout, rewards, feedback, methods, safety);
each reports every malformed row as one `path:line: field: why` line.
"""

from __future__ import annotations

from pathlib import Path

from alignkit.data.formats import Problem
from alignkit.data.io import load_rows, scan
from alignkit.errors import AlignkitError, DataError


def load_prompt_rows(names: str, max_prompts: int = 0, split: str | None = None) -> list[dict]:
    """Prompt rows from one file or several separated by commas; only those whose "split" column is `split`
    when given; the first `max_prompts` of each file when set."""
    rows = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        found = load_rows(name, "prompt")
        if split is not None:
            found = [r for r in found if r.get("split") == split]
            if not found:
                raise AlignkitError(f"{name}: split: no rows with split {split!r}")
        rows += found[:max_prompts] if max_prompts else found
    return rows


def load_prompts(config) -> list[dict]:
    """The prompt rows of an RL method's config (`dataset_name`, `dataset_train_split`); none is an error."""
    rows = load_prompt_rows(config.dataset_name, split=config.dataset_train_split)
    if not rows:
        raise AlignkitError(f"{config.dataset_name}: no prompts")
    return rows


def read_pairs(path: str | Path) -> list[dict]:
    """Rows of a pairs file (a prompt and a list of at least two responses); one `path:line: field: why` line
    per malformed row."""
    rows, problems = [], []
    for line, row in scan(path):
        if isinstance(row, Problem):
            problems.append(row.format(str(path)))
        elif not isinstance(row, dict) or "prompt" not in row:
            problems.append(f"{path}:{line}: prompt: missing (expected rows written by alignkit generate-pairs)")
        elif not isinstance(row.get("responses"), list) or len(row["responses"]) < 2 \
                or not all(isinstance(r, str) for r in row["responses"]):
            problems.append(f"{path}:{line}: responses: expected a list of at least 2 response strings")
        elif "finish_reasons" in row and (not isinstance(row["finish_reasons"], list)
                                          or len(row["finish_reasons"]) != len(row["responses"])):
            problems.append(f"{path}:{line}: finish_reasons: expected one entry per response")
        else:
            rows.append(row)
    if problems:
        raise DataError(problems)
    if not rows:
        raise AlignkitError(f"{path}: file: no rows")
    return rows


def read_generations(path: str | Path) -> list[dict]:
    """Rows written by `alignkit generate`: a string completion to a string or conversational prompt."""
    rows, problems = [], []
    for line, row in scan(path):
        if isinstance(row, Problem):
            problems.append(row.format(str(path)))
        elif not isinstance(row, dict) or "prompt" not in row or not isinstance(row.get("completion"), str):
            problems.append(f"{path}:{line}: completion: expected prompt and a string completion "
                            "(rows written by alignkit generate)")
        else:
            rows.append(row)
    if problems:
        raise DataError(problems)
    return rows
