"""The stage runner: run named stages in order into their own directories, skipping what is complete.

`alignkit pipeline` (a recipe's stages, built from the command registry) and the safety loop (its attack,
collect, data, train and re-attack steps) both run through `run_stages`, so both skip, resume and record a
failure the same way:

- a stage whose run.json says complete is skipped;
- a training stage cut off after a checkpoint resumes from it (`stage_action`);
- a stage that raises stops the run: its run.json says failed (or stopped) with the reason (the run owner,
  engine.run, writes it), `[n/N] NAME: failed: REASON` is printed, index.html shows it, and the error is
  raised again.

index.html under `root` links each stage's report after every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from alignkit.config import build_config
from alignkit.engine.outputs import read_status
from alignkit.engine.summary import write_pipeline_summary
from alignkit.engine.run import one_line, stage_action


@dataclass
class Stage:
    """One stage: `run(config_cls built from values)` into values["output_dir"]."""

    name: str
    method: str
    """What it runs, as shown in the progress line (a command name: sft, redteam, ...)."""
    config_cls: type
    run: Callable[[Any], Any]
    values: dict

    @property
    def out(self) -> Path:
        return Path(self.values["output_dir"])


def run_stages(stages: Sequence[Stage], root: str | Path | None, sections: Sequence[Callable] = (),
               make_config: Callable[[Stage, dict], Any] | None = None) -> list[dict]:
    """Run every stage not yet complete (see the module docstring); returns the index rows.
    `make_config(stage, values)` builds a stage's config (default: `build_config(stage.config_cls, values)`); `sections` are passed to root/index.html
    (engine.summary.write_pipeline_summary); root None writes no index page."""
    def summarise() -> None:
        if root is not None:
            write_pipeline_summary(root, list(rows.values()), sections)

    build = make_config or (lambda stage, values: build_config(stage.config_cls, values))
    rows = {s.name: summary_row(s.name, s.out) for s in stages}
    for number, stage in enumerate(stages, start=1):
        header = f"[{number}/{len(stages)}] {stage.name} ({stage.method})"
        action, values, latest = stage_action(stage.config_cls, dict(stage.values))
        if action == "complete":
            print(f"{header}: complete, skipped ({stage.out})", flush=True)
            rows[stage.name] = summary_row(stage.name, stage.out)
            continue
        print(f"{header}: {'resuming from ' + latest.name if latest else 'running'} -> {stage.out}", flush=True)
        try:
            stage.run(build(stage, values))
        except BaseException as e:
            row = rows[stage.name] = summary_row(stage.name, stage.out, e)
            print(f"{header}: {row['status']}: {row['error']}", flush=True)
            summarise()
            raise
        rows[stage.name] = summary_row(stage.name, stage.out)
        summarise()
    summarise()
    return list(rows.values())


def summary_row(name: str, out: Path, error: BaseException | None = None) -> dict:
    """A stage's line on index.html, from its run.json; with the `error` the stage raised, a stage whose
    run.json does not say so (it failed before its run started: bad input) is failed too."""
    status = read_status(out)
    row = {"name": name, "run_dir": str(out), "status": status.get("status", "pending"),
           "seconds": status.get("seconds")}
    if status.get("error"):
        row["error"] = status["error"]
    if error is not None:
        if row["status"] not in ("failed", "stopped"):
            row["status"] = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
        row["error"] = one_line(error)
    return row
