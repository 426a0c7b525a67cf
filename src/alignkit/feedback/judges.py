"""The judge interface every judge shares, the rubric judge (the simulated annotator), and pairs → preferences.

A judge compares two responses to the same prompt and says how likely the first is the better one.
`judge_pairs` turns those probabilities into `Judgment`s and, for judges whose answer depends on which
response comes first (LLM judges), asks twice with the responses swapped and averages, so neither position
wins by default. `preference_rows` judges every pair of sampled responses in prompt rows and writes TRL-style
preference rows {"prompt", "chosen", "rejected"}.

Per-pair data reaches a judge through `rows`: one dict per comparison holding the input row's extra columns
(hazard, looks_like, category, …) plus "finish_reason_first" and "finish_reason_second", the finish reasons
of the two responses being compared. `judge_pairs` swaps those two keys when it swaps the responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from alignkit.data.formats import preference_row
from alignkit.errors import DataError
from alignkit.feedback.llm_judge import LocalLLMJudge, LocalScoreJudge, OpenAIJudge
from alignkit.rewards.rubric import (
    RULES,
    RubricContext,
    is_harmful_prompt,
    score_response,
)
from alignkit.rewards.sources import reward_model
from alignkit.rewards.specs import JUDGE_SPECS


@dataclass
class Judgment:
    """The verdict on one pair of responses."""

    winner: int | None
    """0: the first response is better, 1: the second, None: a tie."""
    prob_first: float
    """P(first is better), in [0, 1]."""
    detail: dict = field(default_factory=dict)
    """Judge-specific evidence (for the rubric judge: both totals and every rule's value)."""


class Judge(Protocol):
    """Anything that compares pairs of responses. An optional `tie_band` attribute sets its default tie band."""

    name: str
    order_sensitive: bool
    """True for judges whose answer can change when the two responses swap places."""

    def compare(self, prompts: list, first: list[str], second: list[str], rows: list[dict]) -> list[tuple[float, dict]]:
        """P(first better) and detail for each pair."""
        ...


FINISH_FIRST, FINISH_SECOND = "finish_reason_first", "finish_reason_second"


def swapped_row(row: dict) -> dict:
    """The row as seen with the two responses swapped: their per-response keys trade places."""
    row = dict(row)
    first, second = row.pop(FINISH_FIRST, None), row.pop(FINISH_SECOND, None)
    if second is not None:
        row[FINISH_FIRST] = second
    if first is not None:
        row[FINISH_SECOND] = first
    return row


def judge_pairs(judge, prompts, first, second, rows=None, tie_band: float | None = None) -> list[Judgment]:
    """Judge each (first, second) pair; order-sensitive judges are asked in both orders and averaged.

    A pair is a tie when |P(first) − 0.5| <= tie_band (default: the judge's `tie_band`, else 0).
    """
    rows = [{} for _ in prompts] if rows is None else list(rows)
    if not len(prompts) == len(first) == len(second) == len(rows):
        raise ValueError(
            f"judge_pairs needs one prompt, first, second and row per pair; got {len(prompts)}, {len(first)}, "
            f"{len(second)} and {len(rows)}"
        )
    band = getattr(judge, "tie_band", 0.0) if tie_band is None else tie_band
    forward = _checked(judge, judge.compare(prompts, first, second, rows), len(prompts))
    if judge.order_sensitive:
        backward = _checked(judge, judge.compare(prompts, second, first, [swapped_row(r) for r in rows]), len(prompts))
        results = [
            ((p_ab + (1.0 - p_ba)) / 2.0, {"p_forward": p_ab, "p_swapped": p_ba, "forward": d_ab, "swapped": d_ba})
            for (p_ab, d_ab), (p_ba, d_ba) in zip(forward, backward, strict=True)
        ]
    else:
        results = forward
    return [Judgment(winner=_winner(p, band), prob_first=float(p), detail=detail) for p, detail in results]


def _checked(judge, results: list, expected: int) -> list:
    if len(results) != expected:
        raise ValueError(f"judge {judge.name!r} returned {len(results)} results for {expected} pairs")
    return results


def _winner(prob_first: float, band: float) -> int | None:
    if abs(prob_first - 0.5) <= band:
        return None
    return 0 if prob_first > 0.5 else 1


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class RubricJudge:
    """The simulated annotator: scores both responses with the written rubric; P(first) = σ(Δtotal / T).

    Totals differing by at most `tie_margin` (and always by exactly 0) are ties. The rubric is symmetric in
    the two responses, so the judge is not order-sensitive and `judge_pairs` asks it once.
    """

    name = "rules"
    order_sensitive = False

    def __init__(self, rules=RULES, temperature: float = 1.0, tie_margin: float = 0.25):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        self.rules, self.temperature, self.tie_margin = rules, temperature, tie_margin
        # The band in probability space that corresponds to |Δtotal| <= tie_margin; 0 still makes Δ = 0 a tie.
        self.tie_band = sigmoid(tie_margin / temperature) - 0.5

    def compare(self, prompts: list, first: list[str], second: list[str], rows: list[dict]) -> list[tuple[float, dict]]:
        """P(first better) and both rubric scores for each pair."""
        results = []
        for prompt, a, b, row in zip(prompts, first, second, rows, strict=True):
            harmful = is_harmful_prompt({**row, "prompt": prompt})
            score_a = score_response(prompt, a, RubricContext(harmful, row.get(FINISH_FIRST)), self.rules)
            score_b = score_response(prompt, b, RubricContext(harmful, row.get(FINISH_SECOND)), self.rules)
            detail = {
                "harmful": harmful,
                "total_first": score_a.total,
                "total_second": score_b.total,
                "parts_first": score_a.parts,
                "parts_second": score_b.parts,
            }
            results.append((sigmoid((score_a.total - score_b.total) / self.temperature), detail))
        return results


class RewardJudge:
    """Bradley–Terry judge over any reward source (a reward model, an ensemble, the safety + helpfulness
    rule): P(first) = σ(r_first − r_second). Each response is scored alone, so order cannot matter."""

    order_sensitive = False

    def __init__(self, reward, name: str = "rm", tie_band: float = 0.0):
        self.reward, self.name, self.tie_band = reward, name, tie_band

    def compare(self, prompts: list, first: list[str], second: list[str], rows: list[dict]) -> list[tuple[float, dict]]:
        keys = sorted({k for row in rows for k in row if k not in (FINISH_FIRST, FINISH_SECOND)})
        columns = {k: [row.get(k) for row in rows] * 2 for k in keys}
        scores = self.reward(list(prompts) * 2, list(first) + list(second), **columns)
        n = len(prompts)
        return [(sigmoid(a - b), {"reward_first": a, "reward_second": b}) for a, b in zip(scores[:n], scores[n:])]


JUDGES_HELP = JUDGE_SPECS.listing()


def make_judge(spec: str, device: str = "auto", constitution: str = "default", seed: int = 0):
    """A judge from its command-line name (`rewards.specs.JUDGE_SPECS`): see JUDGES_HELP."""
    kind, arg = JUDGE_SPECS.parse(spec)
    if kind == "rules":
        return RubricJudge()
    if kind in ("llm", "llm-cot"):
        return LocalLLMJudge(arg, constitution, seed=seed, cot=kind == "llm-cot", device=device)
    if kind == "llm-score":
        return LocalScoreJudge(arg, constitution, seed=seed, device=device)
    if kind == "openai":
        url, _, model = arg.partition("#")
        return OpenAIJudge(url, model or None, constitution, seed=seed)
    return RewardJudge(reward_model(arg, device), name=spec)  # rm


def preference_rows(rows, judge=None, responses_key: str = "responses", keep_ties: bool = False):
    """Judge every pair of responses in each row; return (preference rows, stats).

    Input rows: {"prompt", responses_key: [str, ...], optional "finish_reasons": [...] aligned with the
    responses, any extra columns}. Each decided pair gives {"prompt", "chosen", "rejected", "p_chosen", "judge",
    **extra columns}; ties (identical responses included) are counted, and kept with "tie": True in their
    original order only when keep_ties. Pairs with an empty (blank) response are not judged: preference
    data cannot hold an empty message. stats: rows, comparisons, preferences, ties, skipped_empty.
    """
    judge = RubricJudge() if judge is None else judge
    rows = list(rows)
    pairs, prompts, firsts, seconds, judge_rows = [], [], [], [], []
    skipped_empty = 0
    for index, row in enumerate(rows):
        responses, finish_reasons = _responses_of(row, index, responses_key)
        extra = {k: v for k, v in row.items() if k not in (responses_key, "finish_reasons", "prompt")}
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if not responses[i].strip() or not responses[j].strip():
                    skipped_empty += 1
                    continue
                judged = responses[i] != responses[j]  # identical texts are a tie without asking
                pairs.append((row.get("prompt"), responses[i], responses[j], extra, judged))
                if judged:
                    prompts.append(row.get("prompt"))
                    firsts.append(responses[i])
                    seconds.append(responses[j])
                    judge_rows.append({**extra, FINISH_FIRST: finish_reasons[i], FINISH_SECOND: finish_reasons[j]})
    judgments = iter(judge_pairs(judge, prompts, firsts, seconds, judge_rows) if prompts else [])

    out, ties = [], 0
    for prompt, a, b, extra, judged in pairs:
        judgment = next(judgments) if judged else Judgment(winner=None, prob_first=0.5)
        if judgment.winner is None:
            ties += 1
            if keep_ties:
                out.append(preference_row(prompt, a, b, judgment.prob_first, judge.name, extra, tie=True))
        elif judgment.winner == 0:
            out.append(preference_row(prompt, a, b, judgment.prob_first, judge.name, extra))
        else:
            out.append(preference_row(prompt, b, a, 1.0 - judgment.prob_first, judge.name, extra))
    stats = {"rows": len(rows), "comparisons": len(pairs), "preferences": len(pairs) - ties, "ties": ties,
             "skipped_empty": skipped_empty}
    return out, stats


def _responses_of(row, index: int, responses_key: str) -> tuple[list[str], list]:
    where = f"row {index + 1}"
    if not isinstance(row, dict):
        raise DataError([f"{where}: expected an object with {responses_key!r}, got {type(row).__name__}"])
    responses = row.get(responses_key)
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError([f"{where}: {responses_key}: expected a list of response strings"])
    finish_reasons = row.get("finish_reasons")
    if finish_reasons is None:
        return responses, [None] * len(responses)
    if not isinstance(finish_reasons, list) or len(finish_reasons) != len(responses):
        raise DataError([f"{where}: finish_reasons: expected a list with one entry per response ({len(responses)})"])
    return responses, finish_reasons
