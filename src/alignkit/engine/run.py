"""The run owner: every method and every stage, training or not, runs inside one.

    with run_owner(config, kind="dpo") as run:    # checks the config (once) and the output dir; writes nothing
        tokenizer, examples, eval_examples = load_pairs(config)  # bad data raises here: no run.json
        run.start()                                # config.yaml, run.json {"status": "running"}
        model = load_policy(...)
        return run.train(model, tokenizer, examples, collate, step, count_fn=count_pairs)

On the way out the owner records what happened in run.json: `complete` (with what `run.complete(...)` or
`run.train(...)` reported), `failed` with the one-line reason of the error, or `stopped` (Ctrl-C, or the
engine's non-finite guard). A run that raises before `run.start()` writes nothing, so a typo in a data file
leaves no half-made run directory; the pipeline still shows that stage as failed (it records the reason).
Only rank 0 writes. `record=False` (a stage writing to a file the user named instead of an output dir)
checks the config and writes no run.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignkit.config import checked, flat_fields, save_yaml, to_flat_dict
from alignkit.engine.checkpoint import find_latest
from alignkit.engine.distributed import is_main_process
from alignkit.engine.loop import TrainingStopped, check_output_dir, train
from alignkit.engine.outputs import is_complete, save_final_model, write_report_quietly, write_status
from alignkit.errors import AlignkitError

STOPPED = (TrainingStopped, KeyboardInterrupt)


def one_line(error: BaseException) -> str:
    """The reason run.json and the pipeline show: the error's first line; the class name unless it is one of
    ours (an AlignkitError already reads as a sentence)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(error, (AlignkitError, TrainingStopped)):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class Run:
    """One run directory and its run.json; made by `run_owner`."""

    config: Any
    out: Path
    kind: str
    record: bool = True
    base: dict = field(default_factory=dict)
    """Fields every run.json of this run carries (the model name)."""
    started: bool = False
    finished: bool = False
    trained: bool = False

    def start(self, **extra) -> Path:
        """Write config.yaml and a running run.json; from here on an error is recorded as failed."""
        if self.record:
            if is_main_process():
                self.out.mkdir(parents=True, exist_ok=True)
                save_yaml(self.out / "config.yaml", {"method": self.kind, **to_flat_dict(self.config)})
            self._write("running", **extra)
        self.started = True
        return self.out

    def progress(self, **extra) -> None:
        """A running run.json with progress fields (prompts done, ...)."""
        self._write("running", **extra)

    def complete(self, **extra) -> None:
        """Record the run complete with its summary; the owner does it anyway (without one) on a clean exit."""
        self._write("complete", **extra)
        self.finished = True

    def train(self, model, tokenizer, examples, collate, step_fn, *, count_fn, eval_fn=None, settings=None,
              rollouts=None, save: Callable | None = None, lookahead: int = 0):
        """The engine loop, then the final model (`save(result)` when the method saves more than one model),
        run.json complete with the loop's figures, and report.html. Starts the run if not yet started."""
        if not self.started:
            self.start()
        settings = settings or self.config.train
        device = None if self.config.device == "auto" else self.config.device
        self.trained = True
        result = train(model, examples, collate, step_fn, settings, count_fn=count_fn, eval_fn=eval_fn,
                       config=to_flat_dict(self.config), device=device, method=self.kind, rollouts=rollouts,
                       lookahead=lookahead)
        if save is not None:
            save(result)
        else:
            save_final_model(model, tokenizer, self.out / "model", state_dict=result.full_state_dict)
        self.complete(steps=result.steps, seconds=round(result.seconds, 2), skipped_steps=result.skipped_steps,
                      eval=result.eval_metrics, final=result.last_metrics)
        write_report_quietly(self.out)
        return result

    def _write(self, status: str, **extra) -> None:
        if self.record:
            write_status(self.out, status, self.kind, **{**self.base, **extra})


@contextmanager
def run_owner(config, output_dir: str | Path | None = None, *, kind: str, record: bool = True,
              **base) -> Iterator[Run]:
    """Own one run of `config` (see the module docstring). The config is checked here, once; a training
    config (one with `.train`) also has its output dir checked against --resume/--overwrite before anything
    slow. `output_dir` defaults to config.train.output_dir or config.output_dir; `base` goes into every
    run.json (e.g. model=...)."""
    checked(config)  # a no-op when the CLI or the pipeline checked these very values already
    settings = getattr(config, "train", None)
    if settings is not None and hasattr(settings, "output_dir"):
        check_output_dir(settings)  # an output_dir / --resume mistake costs no time
    out = Path(output_dir if output_dir is not None else (settings or config).output_dir)
    run = Run(config, out, kind, record, base)
    try:
        yield run
    except BaseException as e:
        if run.started and not run.finished:
            run._write("stopped" if isinstance(e, STOPPED) else "failed", error=one_line(e))
            if run.trained:
                write_report_quietly(out)  # the metrics so far; the checkpoints stay for --resume
        raise
    if run.started and not run.finished:
        run.complete()


def stage_action(config_cls, values: dict) -> tuple[str, dict, Path | None]:
    """What running a stage with `values` into values["output_dir"] means now: ("complete", ...) when its
    run.json says so (skip it), ("resume", values with resume=True, the checkpoint) when a training stage was
    cut off after a checkpoint, else ("run", values, None). The pipeline and the safety loop both use it."""
    out = Path(values["output_dir"])
    if is_complete(out):
        return "complete", values, None
    latest = find_latest(out) if "resume" in flat_fields(config_cls) else None
    if latest is not None:
        return "resume", {**values, "resume": True}, latest
    return "run", values, None
