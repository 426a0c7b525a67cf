"""How far a judge agrees with labelled preferences: human labels exported from the annotation app
(`alignkit annotate export`), the rubric's, or any other preference file.

Each labelled pair is asked of the judge (both orders for an order-sensitive judge). Labels are named by
the pair's two texts in a fixed order (their order as strings), so a judge and the labels share one label
space and Cohen's κ measures agreement beyond chance; rows marked tie are ties.
"""

from __future__ import annotations

import json

from alignkit.data.formats import explicit_prompt
from alignkit.feedback.judges import judge_pairs
from alignkit.stats import cohen_kappa


def pair_label(winner_text, loser_text, tie: bool = False) -> str:
    if tie:
        return "tie"
    a, b = json.dumps(winner_text, ensure_ascii=False), json.dumps(loser_text, ensure_ascii=False)
    return "lower" if a < b else "higher"


def judge_agreement(judge, rows: list[dict]) -> dict:
    """rows: preference rows {"prompt", "chosen", "rejected", optional "tie"} (conversational turns or
    strings). Returns pairs, agreement (share of equal labels), Cohen's κ, and the judge's own labels."""
    rows = [explicit_prompt(r) for r in rows]
    text = [(r["chosen"][-1]["content"] if isinstance(r["chosen"], list) else r["chosen"],
             r["rejected"][-1]["content"] if isinstance(r["rejected"], list) else r["rejected"]) for r in rows]
    judgments = judge_pairs(judge, [r["prompt"] for r in rows], [c for c, _ in text], [j for _, j in text],
                            [{k: v for k, v in r.items() if k not in ("prompt", "chosen", "rejected")} for r in rows])
    labels = [pair_label(c, j, bool(r.get("tie"))) for r, (c, j) in zip(rows, text)]
    verdicts = [pair_label(c, j, True) if v.winner is None else (pair_label(c, j) if v.winner == 0
                                                                  else pair_label(j, c))
                for v, (c, j) in zip(judgments, text)]
    kappa = cohen_kappa(labels, verdicts)
    return {"judge": judge.name, "pairs": len(rows),
            "agreement": round(sum(a == b for a, b in zip(labels, verdicts)) / max(len(rows), 1), 4),
            "cohen_kappa": None if kappa is None else round(kappa, 4)}
