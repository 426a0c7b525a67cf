"""Dataset statistics: counts, length percentiles, duplicates and ties (what `alignkit data stats` prints)."""

from __future__ import annotations

import json
import os
from typing import Any

from alignkit.data.formats import explicit_prompt, is_conversational, split_sft
from alignkit.data.io import validate

PERCENTILES = (5, 50, 95, 100)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return value if isinstance(value, str) else ""


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    return {("max" if q == 100 else f"p{q}"): ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
            for q in PERCENTILES}


def _fields(row: dict, kind: str) -> dict[str, Any]:
    """The text fields worth measuring, by role: prompt and one or two responses."""
    if kind == "preference":
        row = explicit_prompt(row)
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    if kind == "sft":
        prompt, completion = split_sft(row)
        return {"prompt": prompt, "completion": completion}
    if kind == "unpaired":
        return {"prompt": row["prompt"], "completion": row["completion"]}
    return {"prompt": row["prompt"]}


def dataset_stats(path: str | os.PathLike, kind: str | None = None, tokenizer=None) -> dict:
    """Counts and length percentiles (characters; tokens when a tokenizer is given) of a dataset file.

    Rows with problems are counted but not measured; ties (chosen == rejected) are counted among them.
    """
    result = validate(path, kind)
    kind = result.kind
    ties = sum(1 for p in result.problems if p.field == "rejected" and p.why.startswith("identical"))
    stats: dict[str, Any] = {
        "path": str(path), "kind": kind,
        "rows": len(result.rows) + len({p.line for p in result.problems if p.line is not None}),
        "valid_rows": len(result.rows), "problems": len(result.problems), "ties": ties,
    }
    if not result.rows or kind is None:
        return stats
    stats["conversational"] = sum(1 for r in result.rows if any(is_conversational(v) for v in r.values()))
    seen_rows, seen_prompts = set(), set()
    duplicate_rows = duplicate_prompts = 0
    chars: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    for row in result.rows:
        key = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        duplicate_rows += key in seen_rows
        seen_rows.add(key)
        fields = _fields(row, kind)
        prompt_key = json.dumps(fields["prompt"], sort_keys=True, ensure_ascii=False)
        duplicate_prompts += prompt_key in seen_prompts
        seen_prompts.add(prompt_key)
        for name, value in fields.items():
            text = _text(value)
            chars.setdefault(name, []).append(len(text))
            if tokenizer is not None:
                tokens.setdefault(name, []).append(len(tokenizer(text, add_special_tokens=False).input_ids))
    stats["duplicate_rows"] = duplicate_rows
    stats["duplicate_prompts"] = duplicate_prompts
    stats["chars"] = {name: _percentiles(v) for name, v in chars.items()}
    if tokens:
        stats["tokens"] = {name: _percentiles(v) for name, v in tokens.items()}
    return stats


def format_stats(stats: dict) -> str:
    """Human-readable rendering of `dataset_stats`."""
    lines = [f"{stats['path']}: {stats['rows']} rows, kind {stats['kind'] or 'unknown'}"]
    lines.append(f"  valid rows                 {stats['valid_rows']}")
    if stats["problems"]:
        lines.append(f"  problems                   {stats['problems']} (run `alignkit data validate` to list them)")
    for key, label in (("conversational", "conversational"), ("duplicate_rows", "duplicate rows"),
                       ("duplicate_prompts", "repeated prompts"), ("ties", "ties (chosen == rejected)")):
        if key in stats:
            lines.append(f"  {label:<26} {stats[key]}")
    for unit in ("chars", "tokens"):
        if unit in stats:
            lines.append(f"  length in {unit}:" + "".join(f"{q:>8}" for q in ("p5", "p50", "p95", "max")))
            for name, pct in stats[unit].items():
                lines.append(f"    {name:<16}" + "".join(f"{pct.get(q, 0):>8}" for q in ("p5", "p50", "p95", "max")))
    return "\n".join(lines)
