"""`alignkit score`: add reward scores to the rows of a file.

Rows with prompt + completion get "score"; preference rows get "score_chosen" and "score_rejected" (and
the summary reports how often chosen wins: the reward model's accuracy on that data); generate-pairs rows
get "scores", one per response. Columns such as hazard / looks_like / safety reach the reward source, so the
safety + helpfulness rule sees which prompts are safety-relevant.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from alignkit.data.formats import explicit_prompt
from alignkit.data.io import load_rows, scan, write_jsonl
from alignkit.data.readers import read_generations, read_pairs
from alignkit.errors import AlignkitError

TAG_COLUMNS = ("safety", "hazard", "looks_like")


def _columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r.get(k) for r in rows] for k in TAG_COLUMNS if any(k in r for r in rows)}


def _read(path: str) -> tuple[str, list[dict]]:
    first = next((row for _, row in scan(path) if isinstance(row, dict)), None)
    if isinstance(first, dict) and "responses" in first:
        return "pairs", read_pairs(path)
    if isinstance(first, dict) and "finish_reason" in first and isinstance(first.get("completion"), str):
        return "completion", read_generations(path)
    rows = load_rows(path)
    if "chosen" in rows[0]:
        return "preference", [explicit_prompt(r) for r in rows]
    if all("completion" in r for r in rows):
        return "completion", rows
    raise AlignkitError(f"{path}: rows: need prompt+completion, prompt+chosen+rejected, or a responses list to score")


def score_rows(kind: str, rows: list[dict], reward) -> tuple[list[dict], list[float]]:
    """Scored copies of `rows` and every score given (for the summary)."""
    if kind == "preference":
        n = len(rows)
        scores = reward([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                        **{k: v * 2 for k, v in _columns(rows).items()})
        out = [{**r, "score_chosen": a, "score_rejected": b} for r, a, b in zip(rows, scores[:n], scores[n:])]
        return out, scores
    if kind == "pairs":
        flat = [(i, r["prompt"], text) for i, r in enumerate(rows) for text in r["responses"]]
        columns = {k: [v[i] for i, _, _ in flat] for k, v in _columns(rows).items()}
        scores = reward([p for _, p, _ in flat], [t for _, _, t in flat], **columns)
        out, at = [], 0
        for r in rows:
            out.append({**r, "scores": scores[at:at + len(r["responses"])]})
            at += len(r["responses"])
        return out, scores
    scores = reward([r["prompt"] for r in rows], [r["completion"] for r in rows], **_columns(rows))
    return [{**r, "score": s} for r, s in zip(rows, scores)], scores


def score_file(path: str, reward, output: str | None = None) -> str:
    """Score `path`, write the rows (to `output`, else stdout) and return a one-line summary."""
    kind, rows = _read(path)
    scored, scores = score_rows(kind, rows, reward)
    if output:
        write_jsonl(output, scored)
    else:
        for row in scored:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
    summary = (f"scored {len(scores)} responses in {len(rows)} rows: "
               f"mean {statistics.fmean(scores):.4f}, std {spread:.4f}")
    if kind == "preference":
        wins = sum((r["score_chosen"] > r["score_rejected"]) + 0.5 * (r["score_chosen"] == r["score_rejected"])
                   for r in scored)
        summary += f"; chosen scored higher in {wins / len(scored):.1%} of pairs (accuracy)"
    return summary + (f"; wrote {Path(output)}" if output else "")
