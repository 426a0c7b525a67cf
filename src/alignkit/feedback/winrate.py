"""Win rate of one policy's answers against another's on the same prompts, under any judge.

Both inputs are `alignkit generate` outputs (rows with "prompt", "completion", optional "finish_reason" and
the prompt row's extra columns). Rows are matched by prompt (the i-th answer to a prompt in A against the i-th
in B). Each pair is judged in both orders when the judge is order-sensitive (`judges.judge_pairs`); a tie counts
half. The interval is Wilson's 95% score interval on the judged prompts.

Writes output_dir/win_rate.json (the summary) and output_dir/comparisons.jsonl (every pair with its verdict).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.formats import Problem
from alignkit.data.io import scan, write_jsonl
from alignkit.engine.run import run_owner
from alignkit.engine.summary import headline
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.judges import FINISH_FIRST, FINISH_SECOND, judge_pairs, make_judge
from alignkit.files import write_text_atomic
from alignkit.stats import wilson_interval

SUMMARY_FILE = "win_rate.json"


@dataclass
class WinRateConfig:
    """How often policy A's answers beat policy B's on the same prompts, as a judge sees it."""

    dataset_name: str = ""
    """A: the answers being evaluated (generations.jsonl from `alignkit generate`), or stage:NAME."""
    baseline: str = ""
    """B: the answers to beat, for the same prompts (e.g. the SFT policy's), or stage:NAME."""
    judge: str = "rules"
    """Who judges: rules (the written rubric), rm:PATH (a reward model) or rm:PATH,PATH,... (their mean)."""
    output_dir: str = "runs/win_rate"
    """Directory for win_rate.json, comparisons.jsonl and run.json."""
    device: str = "auto"
    """Device for a reward-model judge: auto, cpu, cuda or mps."""

    CLI_ALIASES = {"dataset_name": ("--a", "--generations"), "baseline": ("--b",)}

    def check(self) -> None:
        if not self.dataset_name or not self.baseline:
            raise AlignkitError("config: dataset_name / baseline: give both answer files (--a FILE --b FILE)")


def read_answers(path: str | Path) -> list[tuple[int, dict]]:
    """(line, row) of a generations file; one `path:line: field: why` line per malformed row."""
    rows, problems = [], []
    for line, row in scan(path):
        if isinstance(row, Problem):
            problems.append(row.format(str(path)))
        elif not isinstance(row, dict) or "prompt" not in row:
            problems.append(f"{path}:{line}: prompt: missing (expected rows written by alignkit generate)")
        elif not isinstance(row.get("completion"), str):
            problems.append(f"{path}:{line}: completion: expected the answer as a string")
        else:
            rows.append((line, row))
    if problems:
        raise DataError(problems)
    if not rows:
        raise AlignkitError(f"{path}: file: no rows")
    return rows


def match_answers(a_path, a_rows: list[tuple[int, dict]], b_path, b_rows: list[tuple[int, dict]]) -> list:
    """[(row of A, row of B)] with equal prompts: the i-th answer to a prompt in A with the i-th in B."""
    def key(row):
        return json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)

    waiting: dict[str, list[dict]] = {}
    for _, row in b_rows:
        waiting.setdefault(key(row), []).append(row)
    pairs, problems = [], []
    for line, row in a_rows:
        queue = waiting.get(key(row))
        if queue:
            pairs.append((row, queue.pop(0)))
        else:
            problems.append(f"{a_path}:{line}: prompt: has no answer left in {b_path} (both files must answer "
                            "the same prompts)")
    if problems:
        raise DataError(problems)
    extra = sum(len(q) for q in waiting.values())
    if extra:
        raise AlignkitError(f"{b_path}: file: {extra} answers have no counterpart in {a_path}")
    return pairs


def win_rate(pairs: list, judge) -> tuple[dict, list[dict]]:
    """(summary, one comparison row per pair) of A against B under `judge`."""
    skip = {"prompt", "completion", "finish_reason"}
    rows = [{**{k: v for k, v in a.items() if k not in skip},
             FINISH_FIRST: a.get("finish_reason"), FINISH_SECOND: b.get("finish_reason")} for a, b in pairs]
    judgments = judge_pairs(judge, [a["prompt"] for a, _ in pairs], [a["completion"] for a, _ in pairs],
                            [b["completion"] for _, b in pairs], rows)
    wins = sum(j.winner == 0 for j in judgments)
    losses = sum(j.winner == 1 for j in judgments)
    ties = len(judgments) - wins - losses
    n = len(judgments)
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(wins + 0.5 * ties, n)
    summary = {"judge": judge.name, "prompts": n, "wins": wins, "losses": losses, "ties": ties,
               "win_rate": round(rate, 4), "interval_95": [round(low, 4), round(high, 4)]}
    verdict = {0: "a", 1: "b", None: "tie"}
    comparisons = [{**{k: v for k, v in a.items() if k not in skip}, "prompt": a["prompt"], "a": a["completion"],
                    "b": b["completion"], "p_a": round(j.prob_first, 4), "winner": verdict[j.winner]}
                   for (a, b), j in zip(pairs, judgments)]
    return summary, comparisons


def describe(summary: dict, a: str = "A", b: str = "B") -> str:
    low, high = summary["interval_95"]
    return (f"{a} vs {b}: win rate {summary['win_rate']:.1%} (95% interval {low:.0%}-{high:.0%}) on "
            f"{summary['prompts']} prompts under the {summary['judge']} judge: {summary['wins']} wins, "
            f"{summary['losses']} losses, {summary['ties']} ties (a tie counts half; 50% is a draw)")


def run_win_rate(config: WinRateConfig) -> Path:
    """Judge A against B, write win_rate.json and comparisons.jsonl, mark the stage complete; returns the
    summary file."""
    with run_owner(config, kind="win_rate") as run:
        run.start()
        started = time.time()
        pairs = match_answers(config.dataset_name, read_answers(config.dataset_name),
                              config.baseline, read_answers(config.baseline))
        summary, comparisons = win_rate(pairs, make_judge(config.judge, device=config.device))
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "comparisons.jsonl", comparisons)
        path = out / SUMMARY_FILE
        record = {"a": config.dataset_name, "b": config.baseline, **summary}
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")
        low, high = summary["interval_95"]
        label = f"win rate of {Path(config.dataset_name).parent.name} over {Path(config.baseline).parent.name}"
        run.complete(**summary, seconds=round(time.time() - started, 2),
                     headline=[headline(label, summary["win_rate"], low, high, percent=True)])
        print(describe(summary), flush=True)
        return path
