"""Settings every training method shares (kept free of heavy imports: the CLI reads them for --help)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.models.lora import PeftSettings  # noqa: F401  (the methods' configs read it from here)

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
# schedules transformers' get_scheduler builds only with extra arguments, which no option passes yet
SCHEDULE_NEEDS = {"cosine_with_min_lr": "min_lr or min_lr_rate (lr_scheduler_kwargs)"}


def check_lr_scheduler(name: str) -> None:
    """Refuse, before any model loads, a schedule the loop could not build from alignkit's options."""
    if name in SCHEDULE_NEEDS:
        usable = ", ".join(s for s in SCHEDULES if s not in SCHEDULE_NEEDS)
        raise AlignkitError(f"config: lr_scheduler_type: {name} needs {SCHEDULE_NEEDS[name]}, which alignkit does "
                            f"not set; use one of {usable}")


def check_tracker(name: str) -> None:
    """Refuse, before any model loads, a tracker that is not installed (one line, with what to install)."""
    if name != "none" and importlib.util.find_spec(name) is None:
        raise AlignkitError(f"report_to {name}: the tracker is not installed; pip install {name} "
                            "(or pip install 'alignkit[tracking]')")


@dataclass
class TrainSettings:
    """What every training method shares: optimisation, schedule, checkpoints and logging."""

    output_dir: str = "runs/run"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, model/ and report.html go here."""
    max_steps: int = -1
    """Optimizer steps to take; -1 derives them from num_train_epochs."""
    num_train_epochs: float = 1.0
    """Passes over the training data when max_steps is -1."""
    per_device_train_batch_size: int = 8
    """Examples per micro-batch on each device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the loss is normalised over all of them together."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    lr_scheduler_type: str = "linear"
    """LR schedule after warmup: linear, cosine, constant, constant_with_warmup."""
    warmup_ratio: float = 0.0
    """Fraction of max_steps spent warming the LR up from 0 (warmup_steps wins when set)."""
    warmup_steps: int = 0
    """Steps spent warming the LR up from 0."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this; 0 disables clipping (the norm is still logged)."""
    seed: int = 42
    """Seed for initialisation, data order and sampling."""
    logging_steps: int = 1
    """Write metrics every this many steps."""
    eval_steps: int = 0
    """Evaluate every this many steps (0: only at the end, when there is evaluation data)."""
    per_device_eval_batch_size: int = 8
    """Examples per evaluation batch."""
    save_steps: int = 0
    """Write a checkpoint every this many steps (0: only when the run ends or stops)."""
    save_total_limit: int = 2
    """Keep this many newest checkpoints (0 keeps all)."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    resume: bool = False
    """Continue from checkpoints/latest in output_dir."""
    report_to: str = "none"
    """Extra tracker: none, tensorboard, wandb (offline unless WANDB_MODE is set) or mlflow."""
    progress: bool = True
    """Show a progress bar."""

    def check(self) -> None:
        problems = [
            ("per_device_train_batch_size", self.per_device_train_batch_size >= 1, "must be at least 1"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be at least 1"),
            ("learning_rate", self.learning_rate >= 0, "must be >= 0"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "must be -1 or at least 1"),
            ("num_train_epochs", self.num_train_epochs > 0, "must be > 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("lr_scheduler_type", self.lr_scheduler_type in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("report_to", self.report_to in TRACKERS, f"must be one of {', '.join(TRACKERS)}"),
            ("max_bad_steps", self.max_bad_steps >= 1, "must be at least 1"),
            ("logging_steps", self.logging_steps >= 1, "must be at least 1"),
        ]
        for name, ok, why in problems:
            if not ok:
                raise AlignkitError(f"config: {name}: {why}, got {getattr(self, name)!r}")
        check_lr_scheduler(self.lr_scheduler_type)
        check_tracker(self.report_to)
