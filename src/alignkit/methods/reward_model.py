"""Reward model: a language model with a scalar head, trained on preference pairs with Bradley–Terry.

Loss per pair (alignkit.losses.reward): −log σ(r_c − r_r − m) + η (r_c + r_r)², m the optional per-pair
`margin` column (Llama 2), η = center_rewards_coefficient (Eisenstein et al. 2023). The model is a
transformers `AutoModelForSequenceClassification` with one label, so the result loads with plain
transformers (and vLLM's reward-model runner).

Deliberate differences from TRL's RewardTrainer:
- the score is read at each sequence's last real token through the attention mask, not by searching for
  the pad id, so it is right when pad == EOS (SmolLM2) and the same whatever the padding;
- long pairs are truncated (prompt cut from the left first, both responses kept) rather than dropped;
- batches are length-bucketed by default (`batch_layout`): same numbers as padding, less compute on pads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from alignkit.data.collate import collate_sequences
from alignkit.data.formats import explicit_prompt
from alignkit.data.io import load_train_eval
from alignkit.data.tokenize import TruncationWarning, tokenize_pair
from alignkit.engine.distributed import world_size
from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.losses.reward import bradley_terry_loss
from alignkit.models.load import load_reward_model, load_tokenizer
from alignkit.ops.rewards import sequence_rewards
from alignkit.rewards.combine import is_safety_prompt

BATCH_LAYOUTS = ("bucketed", "padded", "padding_free")
PROMPT_SUBSETS = ("all", "safety", "helpfulness")


@dataclass
class RewardConfig:
    """Train a Bradley–Terry reward model on preference pairs."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Backbone: embedded:NAME, a local checkpoint or a hub id (a scalar head is added when it has none)."""
    dataset_name: str = ""
    """Preference data (prompt, chosen, rejected; optional margin)."""
    eval_dataset_name: str | None = None
    """Held-out preference data (default: the training file's dataset_test_split rows, if any)."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on (eval/accuracy)."""
    prompt_subset: str = "all"
    """Train and evaluate on all rows, only safety-relevant ones (tagged by a safety, hazard or looks_like
    column: a Llama 2 safety RM), or only the others (a helpfulness RM)."""
    max_length: int = 1024
    """Longest prompt + response in tokens; the prompt is cut from the left first."""
    max_prompt_length: int | None = None
    """Cut prompts (from the left) to this many tokens first."""
    center_rewards_coefficient: float = 0.0
    """Weight η of the centring term η·(r_c + r_r)², which keeps rewards near 0 (0: off)."""
    batch_layout: str = "bucketed"
    """bucketed (length groups, no pads computed beyond 15%), padded, or padding_free (one row; best with
    flash-attention on GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on capable GPUs, float32 on CPU), float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    peft: PeftSettings = field(default_factory=PeftSettings)
    """LoRA settings (flat keys: use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-4))
    """Shared training settings (flat keys: learning_rate, max_steps, ...)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data",),
                   "eval_dataset_name": ("--eval_data",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the preference data (--dataset_name / --data FILE)")
        if self.max_length < 2:
            raise AlignkitError(f"config: max_length: must be at least 2, got {self.max_length}")
        if self.batch_layout not in BATCH_LAYOUTS:
            raise AlignkitError(f"config: batch_layout: must be one of {', '.join(BATCH_LAYOUTS)}, "
                                f"got {self.batch_layout!r}")
        if self.prompt_subset not in PROMPT_SUBSETS:
            raise AlignkitError(f"config: prompt_subset: must be one of {', '.join(PROMPT_SUBSETS)}, "
                                f"got {self.prompt_subset!r}")
        if self.center_rewards_coefficient < 0:
            raise AlignkitError("config: center_rewards_coefficient: must be >= 0")
        self.train.check()


@dataclass
class RewardExample:
    """One tokenized preference pair and its optional margin."""

    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None


def tokenize_preferences(tokenizer, rows: list[dict], max_length: int | None,
                         max_prompt_length: int | None = None) -> tuple[list[RewardExample], int]:
    """RewardExamples for preference rows, and how many were dropped (truncation would empty a response)."""
    out, dropped = [], 0
    for row in rows:
        row = explicit_prompt(row)
        pair = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], max_length=max_length,
                             max_prompt_length=max_prompt_length)
        if pair is None:
            dropped += 1
            continue
        margin = row.get("margin")
        out.append(RewardExample(pair.chosen.input_ids, pair.rejected.input_ids,
                                 None if margin is None else float(margin)))
    return out, dropped


def collate_rewards(examples: list[RewardExample], pad_id: int, padding_free: bool = False) -> dict:
    """The B chosen sequences, then the B rejected, in one batch (one forward pass); `margin` when any
    example has one (missing margins count as 0)."""
    import torch

    batch = collate_sequences([e.chosen_ids for e in examples] + [e.rejected_ids for e in examples], pad_id,
                              padding_free)
    if any(e.margin is not None for e in examples):
        batch["margin"] = torch.tensor([e.margin or 0.0 for e in examples])
    return batch


def reward_loss(model, batch: dict, center_coef: float = 0.0, bucketed: bool = False):
    """(summed Bradley–Terry loss of the batch's pairs, metrics with TRL's names)."""
    # several processes must run equally many forward passes; length groups differ between ranks
    rewards = sequence_rewards(model, batch, bucketed=bucketed and world_size() == 1)
    chosen, rejected = rewards.chunk(2)
    out = bradley_terry_loss(chosen, rejected, batch.get("margin"), center_coef)
    detached = rewards.detach()
    metrics = {
        "accuracy": out.accuracy.mean().item(),
        "margin": out.margin.mean().item(),
        "rewards/chosen": chosen.detach().mean().item(),
        "rewards/rejected": rejected.detach().mean().item(),
        "rewards/mean": detached.mean().item(),
        "rewards/std": detached.std().item() if detached.numel() > 1 else 0.0,
    }
    return out.losses.sum(), metrics


def count_pairs(batch: dict) -> int:
    ends = batch.get("sequence_ends")
    return (len(ends) if ends is not None else batch["input_ids"].shape[0]) // 2


def evaluate_pairs(model, examples: list[RewardExample], pad_id: int, batch_size: int) -> dict[str, float]:
    """Held-out eval/loss, eval/accuracy (ties count half), eval/margin and reward statistics."""
    import torch

    device = next(model.parameters()).device
    losses, accuracy, margins, all_rewards = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate_rewards(examples[start:start + batch_size], pad_id).items()}
            rewards = sequence_rewards(model, batch, bucketed=True)
            chosen, rejected = rewards.chunk(2)
            out = bradley_terry_loss(chosen, rejected, batch.get("margin"))
            losses.append(out.losses)
            accuracy.append(out.accuracy)
            margins.append(out.margin)
            all_rewards.append(rewards)
    if not losses:
        return {}
    rewards = torch.cat(all_rewards)
    return {"eval/loss": torch.cat(losses).mean().item(), "eval/accuracy": torch.cat(accuracy).mean().item(),
            "eval/margin": torch.cat(margins).mean().item(), "eval/rewards/mean": rewards.mean().item(),
            "eval/rewards/std": rewards.std().item() if rewards.numel() > 1 else 0.0}


def subset_rows(rows: list[dict], subset: str, name: str | None = None) -> list[dict]:
    """The rows whose prompts are safety-relevant (subset "safety") or not ("helpfulness")."""
    kept = [r for r in rows if is_safety_prompt(r) == (subset == "safety")]
    if name is not None and not kept:
        raise AlignkitError(f"{name}: prompt_subset: no {subset} rows (safety-relevant rows carry a safety, hazard "
                            "or looks_like column)")
    return kept


def train_reward_model(config: RewardConfig):
    """Train a reward model on config.dataset_name; writes the run directory (model/ loads with
    AutoModelForSequenceClassification) and returns the engine's TrainResult."""
    import torch

    with run_owner(config, kind="reward_model", model=config.model_name_or_path) as run:
        tokenizer = load_tokenizer(config.model_name_or_path)
        train_rows, eval_rows = load_train_eval(config.dataset_name, "preference", config.eval_dataset_name,
                                                config.dataset_train_split, config.dataset_test_split)
        if config.prompt_subset != "all":
            train_rows = subset_rows(train_rows, config.prompt_subset, config.dataset_name)
            eval_rows = subset_rows(eval_rows, config.prompt_subset)
        examples, dropped = tokenize_preferences(tokenizer, train_rows, config.max_length, config.max_prompt_length)
        if dropped:
            warnings.warn(f"dropped {dropped} of {len(train_rows)} pairs: a response would be empty at "
                          f"max_length={config.max_length}", TruncationWarning, stacklevel=2)
        pad_id = tokenizer.pad_token_id
        padding_free = config.batch_layout == "padding_free"
        bucketed = config.batch_layout == "bucketed"
        center = config.center_rewards_coefficient

        def collate(items):
            return collate_rewards(items, pad_id, padding_free)

        def step(model, batch):
            return reward_loss(model, batch, center, bucketed)

        eval_fn = None
        if eval_rows:
            eval_examples, _ = tokenize_preferences(tokenizer, eval_rows, config.max_length, config.max_prompt_length)

            def eval_fn(model):
                return evaluate_pairs(model, eval_examples, pad_id, config.train.per_device_eval_batch_size)

        run.start()  # after the data is read: bad data must not leave a "running" run.json
        torch.manual_seed(config.train.seed)  # the new scalar head's initialisation
        model = load_reward_model(config.model_name_or_path, dtype=config.dtype, device=config.device,
                                  lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
        return run.train(model, tokenizer, examples, collate, step, count_fn=count_pairs, eval_fn=eval_fn)
