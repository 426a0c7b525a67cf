"""The preference-pair pipeline DPO and the reference-free methods (SimPO, CPO, ORPO) share: tokenized pairs,
their batches (chosen rows, then rejected rows), TRL's logit metrics, and the held-out evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collate import collate_responses
from alignkit.data.io import load_train_eval
from alignkit.data.tokenize import tokenize_rows
from alignkit.errors import AlignkitError
from alignkit.models.load import load_tokenizer

LAYOUTS = ("bucketed", "padded", "padding_free")


@dataclass
class DPOExample:
    """A tokenized pair, with the reference's summed log-probs once precomputed."""

    pair: object  # data.tokenize.TokenizedPair
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def rows(self) -> list:
        """The sequences the reference scores, in the order `set_reference` takes their log-probs."""
        return [self.pair.chosen, self.pair.rejected]

    def set_reference(self, values: list[float]) -> None:
        self.ref_chosen, self.ref_rejected = values


def collate_dpo(examples: list[DPOExample], pad_id: int, padding_free: bool = False) -> dict:
    """Chosen rows then rejected rows, right-padded (or one padding-free row with `sequence_lengths`), and the
    precomputed reference log-probs when the examples carry them."""
    pairs = [e.pair for e in examples]
    batch = collate_responses([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, padding_free)
    if examples[0].ref_chosen is not None:
        batch["ref_logps"] = torch.tensor([e.ref_chosen for e in examples] + [e.ref_rejected for e in examples])
    return batch


def logit_metrics(logit_sums, counts) -> dict:
    """TRL's logits/chosen and logits/rejected: the vocabulary-mean logit averaged over the batch's chosen
    (rejected) response tokens."""
    logits_c, logits_r = logit_sums.chunk(2)
    count_c, count_r = counts.chunk(2)
    return {"logits/chosen": (logits_c.sum() / count_c.sum().clamp(min=1)).item(),
            "logits/rejected": (logits_r.sum() / count_r.sum().clamp(min=1)).item()}


def count_pairs(batch: dict) -> int:
    rows = len(batch["sequence_lengths"]) if "sequence_lengths" in batch else batch["input_ids"].shape[0]
    return rows // 2


def evaluate_pairs(loss_fn, model, examples: list[DPOExample], pad_id: int, batch_size: int) -> dict:
    """Held-out eval/loss and eval/<metric> of `loss_fn(model, batch) -> (summed loss, metrics)` over
    `examples`, weighted by pairs (the engine calls it without gradients)."""
    totals: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_dpo(chunk, pad_id).items()}
        loss, metrics = loss_fn(model, batch)
        for k, v in {"loss": loss.item() / len(chunk), **metrics}.items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
        n += len(chunk)
    return {f"eval/{k}": v / max(n, 1) for k, v in totals.items()}


def load_pairs(config) -> tuple:
    """(tokenizer, training examples, held-out examples) for a preference method's config (dataset_name,
    eval_dataset_name, the two splits, max_length, max_prompt_length)."""
    tokenizer = load_tokenizer(config.model_name_or_path)
    train_rows, eval_rows = load_train_eval(config.dataset_name, "preference", config.eval_dataset_name,
                                            config.dataset_train_split, config.dataset_test_split)
    limits = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    examples = [DPOExample(p) for p in tokenize_rows(tokenizer, train_rows, "preference", **limits)]
    eval_examples = [DPOExample(p) for p in tokenize_rows(tokenizer, eval_rows, "preference", **limits)]
    if not examples:
        raise AlignkitError(f"{config.dataset_name}: no pairs left to train on")
    return tokenizer, examples, eval_examples
