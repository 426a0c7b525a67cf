"""The guard's binary quality on an evaluation set, with intervals (docs/guard.md, "Measured quality").

`binary_metrics(gold, scores, threshold)` treats unsafe as the positive class and gives precision, recall, F1,
the false-positive rate on the safe rows, each rate with its 95% Wilson interval and counts, and the area
under the precision-recall curve (average precision) of the scores, which does not depend on the threshold.
`xstest_rows(path)` reads XSTest's CSV (passed by path; it is never copied into the repository) as guard rows:
its 200 unsafe contrasts are unsafe prompts and its 250 safe prompts safe ones.
"""

from __future__ import annotations

import csv
import os

from alignkit.errors import DataError
from alignkit.safety.guard_fit import prf
from alignkit.stats import rate

XSTEST_COLUMNS = ("prompt", "label")


def xstest_rows(path: str | os.PathLike) -> list[dict]:
    """{"text", "role": "prompt", "categories": [] | ["unsafe"], "type"} per XSTest row (the CSV's `type` kept)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in XSTEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError([f"{path}:1: {missing[0]}: missing column (expected XSTest's xstest_prompts.csv)"])
            rows, problems = [], []
            for line, row in enumerate(reader, 2):
                if row["label"] not in ("safe", "unsafe") or not (row["prompt"] or "").strip():
                    problems.append(f"{path}:{line}: label: expected safe or unsafe with a prompt, got {row['label']!r}")
                    continue
                rows.append({"text": row["prompt"], "role": "prompt", "type": row.get("type", ""),
                             "categories": ["unsafe"] if row["label"] == "unsafe" else []})
    except OSError as error:
        raise DataError([f"{path}: {error.strerror or error}; pass the XSTest CSV's path "
                         "(e.g. ../shared/data/xstest/xstest_prompts.csv)"]) from None
    if problems:
        raise DataError(problems)
    return rows


def average_precision(gold: list[bool], scores: list[float]) -> float:
    """Area under the precision-recall curve as average precision: the mean, over the positives, of the
    precision at each positive's rank (ties broken against the positives, so a constant score earns no credit)."""
    positives = sum(gold)
    if not positives:
        return 0.0
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], gold[i]))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if gold[i]:
            hits += 1
            total += hits / rank
    return total / positives


def binary_metrics(gold: list[bool], scores: list[float], threshold: float) -> dict:
    """Unsafe as the positive class: flagged when score >= threshold."""
    flagged = [s >= threshold for s in scores]
    tp = sum(g and f for g, f in zip(gold, flagged))
    fp = sum(f and not g for g, f in zip(gold, flagged))
    fn = sum(g and not f for g, f in zip(gold, flagged))
    tn = len(gold) - tp - fp - fn
    precision, recall, f1 = prf(tp, fp, fn)
    return {"precision": precision, "recall": recall, "f1": f1, "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
            "precision_interval": rate(tp, tp + fp), "recall_interval": rate(tp, tp + fn),
            "false_positive_rate_interval": rate(fp, fp + tn), "auprc": average_precision(gold, scores),
            "threshold": threshold, "unsafe": tp + fn, "safe": fp + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def guard_binary(guard, rows: list[dict]) -> dict:
    """`binary_metrics` of a guard's p(unsafe) at its own threshold, over rows of any role, with the scores."""
    gold, scores = [False] * len(rows), [0.0] * len(rows)
    for role in ("prompt", "response"):
        idx = [i for i, r in enumerate(rows) if r.get("role", "prompt") == role]
        if idx:
            probs = guard.probabilities([rows[i]["text"] for i in idx], role)[:, -1].tolist()
            for i, p in zip(idx, probs):
                gold[i], scores[i] = bool(rows[i]["categories"]), p
    return {**binary_metrics(gold, scores, guard.thresholds["unsafe"]), "scores": scores}
