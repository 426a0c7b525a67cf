"""Supervised fine-tuning: maximise log p(response | prompt) on demonstrations.

Loss = -(sum of log-probs of trained tokens) / (number of trained tokens in the whole accumulated batch).
Trained tokens are the response's (completion_only_loss, the default), every assistant turn of a
conversation (never user or system turns), or every token (completion_only_loss=False, and always for
plain {"text"} rows). Log-probs come from `ops.logprobs.sequence_logps`, so only trained positions are
projected to the vocabulary.

Deviations from TRL's SFTTrainer, on purpose: the loss is normalised over the accumulated batch's tokens
(so accumulation equals the larger batch exactly), and packing keeps examples apart through position ids
(no cross-example attention) instead of concatenating them into one attention window.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from alignkit.data.collate import collate_masked, collate_packed, collate_padding_free, pack
from alignkit.data.io import load_train_eval
from alignkit.data.tokenize import (
    MaskedExample,
    TruncationWarning,
    encode_conversation,
    encode_pair_ids,
    special_prefix,
    truncate_masked,
)
from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.ops.logprobs import score_mask, sequence_logps


@dataclass
class SFTConfig:
    """Supervised fine-tuning."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Model to fine-tune: embedded:NAME, a local checkpoint or a hub id."""
    dataset_name: str = ""
    """Training data: an sft-format file (messages, prompt+completion or text)."""
    eval_dataset_name: str | None = None
    """Held-out sft-format file (default: the training file's dataset_test_split rows, if any); its
    token-mean loss is logged as eval/loss."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on."""
    max_length: int = 1024
    """Longest example in tokens; prompts are cut from the left first, responses are kept."""
    completion_only_loss: bool = True
    """Train only on responses (assistant turns); False trains on every token."""
    packing: bool = False
    """Pack short examples into rows of max_length tokens (no attention across examples)."""
    padding_free: bool = True
    """Put each micro-batch's examples back to back in one row instead of padding them (same loss, no
    compute on pad tokens; examples never attend to each other)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on capable GPUs, float32 on CPU), float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    peft: PeftSettings = field(default_factory=PeftSettings)
    """LoRA settings (flat keys: use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=2e-5))
    """Shared training settings (flat keys: learning_rate, max_steps, ...)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data",),
                   "eval_dataset_name": ("--eval_data",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the training data (--dataset_name / --data FILE)")
        if self.max_length < 2:
            raise AlignkitError(f"config: max_length: must be at least 2, got {self.max_length}")
        self.train.check()


def tokenize_sft(tokenizer, rows: list[dict], max_length: int, completion_only_loss: bool = True) -> tuple[list, int]:
    """MaskedExamples for sft rows, and how many were dropped because truncation left nothing to train."""
    prefix = special_prefix(tokenizer)
    out, dropped = [], 0
    for row in rows:
        if "messages" in row:
            example = encode_conversation(tokenizer, row["messages"])
        elif "text" in row and "completion" not in row:
            ids = tokenizer(row["text"], add_special_tokens=True).input_ids + [tokenizer.eos_token_id]
            example = MaskedExample(ids, [1] * len(ids))
        else:
            prompt_ids, answer_ids = encode_pair_ids(tokenizer, row["prompt"], row["completion"])
            example = MaskedExample(prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids))
        if not completion_only_loss:
            example = MaskedExample(example.input_ids, [1] * len(example.input_ids))
        example = truncate_masked(example, max_length, prefix)
        if example is None:
            dropped += 1
        else:
            out.append(example)
    return out, dropped


def sft_loss(model, batch: dict):
    """(summed negative log-likelihood of the trained tokens, metrics) for one micro-batch."""
    logps = sequence_logps(model, batch, uniform_grad=True)  # the loss is a plain sum of token log-probs
    n = logps.count.sum().clamp(min=1)
    return -logps.sum.sum(), {"mean_token_logp": (logps.sum.sum() / n).item()}


def count_trained_tokens(batch: dict) -> int:
    return int(score_mask(batch).sum())


def token_mean_loss(model, examples: list, collate, batch_size: int) -> float:
    """Token-weighted mean loss of `examples` (no gradient): the held-out number worth watching."""
    import torch

    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
            loss_sum, _ = sft_loss(model, batch)
            total += loss_sum.item()
            tokens += count_trained_tokens(batch)
    return total / max(tokens, 1)


def train_sft(config: SFTConfig):
    """Fine-tune config.model_name_or_path on config.dataset_name; writes the run directory and returns
    the engine's TrainResult."""
    with run_owner(config, kind="sft", model=config.model_name_or_path) as run:
        tokenizer = load_tokenizer(config.model_name_or_path)
        rows, eval_rows = load_train_eval(config.dataset_name, "sft", config.eval_dataset_name,
                                          config.dataset_train_split, config.dataset_test_split)
        examples, dropped = tokenize_sft(tokenizer, rows, config.max_length, config.completion_only_loss)
        if dropped:
            warnings.warn(f"dropped {dropped} of {len(rows)} examples: nothing left to train on at "
                          f"max_length={config.max_length}", TruncationWarning, stacklevel=2)
        pad_id = tokenizer.pad_token_id
        if config.packing:
            examples = pack(examples, config.max_length)
            collate = lambda items: collate_packed(items, pad_id)  # noqa: E731
        elif config.padding_free:
            collate = lambda items: collate_padding_free(items, pad_id)  # noqa: E731
        else:
            collate = lambda items: collate_masked(items, pad_id)  # noqa: E731

        eval_fn = None
        if eval_rows:
            eval_examples, _ = tokenize_sft(tokenizer, eval_rows, config.max_length, config.completion_only_loss)
            eval_collate = lambda items: collate_masked(items, pad_id)  # noqa: E731

            def eval_fn(model):
                return {"eval/loss": token_mean_loss(model, eval_examples, eval_collate,
                                                     config.train.per_device_eval_batch_size)}

        run.start()  # after the data is read: bad data must not leave a "running" run.json
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                            lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
        return run.train(model, tokenizer, examples, collate, sft_loss, count_fn=count_trained_tokens,
                         eval_fn=eval_fn)
