"""`alignkit judge` and the pipeline's judge stage: response pairs in, preference data out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.io import write_jsonl
from alignkit.data.readers import read_pairs
from alignkit.engine.run import run_owner
from alignkit.errors import AlignkitError
from alignkit.feedback.judges import make_judge, preference_rows

PREFERENCES_FILE = "preferences.jsonl"


@dataclass
class JudgeConfig:
    """Judge every pair of responses in a pairs file and write preference data."""

    dataset_name: str = ""
    """Pairs file from `alignkit generate-pairs` (rows with a responses list), or stage:NAME in a pipeline."""
    judge: str = "rules"
    """Who judges: rules (the written rubric), rm:PATH (a reward model) or rm:PATH,PATH,... (their mean)."""
    output_dir: str = "runs/judge"
    """Directory for preferences.jsonl and run.json."""
    keep_ties: bool = False
    """Also write tied pairs (with "tie": true); they are dropped by default."""
    device: str = "auto"
    """Device for a reward-model judge: auto, cpu, cuda or mps."""

    CLI_ALIASES = {"dataset_name": ("--pairs", "--data")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the pairs file (--pairs FILE)")


def judge_file(config: JudgeConfig, output: str | Path | None = None) -> tuple[Path, dict]:
    """Judge config.dataset_name; write preferences (to `output`, else output_dir/preferences.jsonl and
    run.json); return the file and the counts."""
    with run_owner(config, kind="judge", record=not output) as run:
        run.start()
        started = time.time()
        rows = read_pairs(config.dataset_name)
        judge = make_judge(config.judge, device=config.device)
        preferences, stats = preference_rows(rows, judge=judge, keep_ties=config.keep_ties)
        path = Path(output) if output else Path(config.output_dir) / PREFERENCES_FILE
        write_jsonl(path, preferences)
        if not output:
            run.complete(judge=config.judge, **stats,
                         seconds=round(time.time() - started, 2))
        return path, stats


def run_judge(config: JudgeConfig) -> Path:
    """The pipeline stage."""
    path, stats = judge_file(config)
    print(f"judge ({config.judge}): {stats['comparisons']} comparisons, {stats['preferences']} preferences, "
          f"{stats['ties']} ties -> {path}", flush=True)
    return path
