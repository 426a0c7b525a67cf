"""Scalar scores of whole sequences: the reward (or value) read at each sequence's last real token.

Where the last real token is comes from the attention mask (or, for padding-free rows, from the
`sequence_ends` the collator records), never from the pad id: with SmolLM2, as with many chat models,
pad == EOS, and a pad-id search would read the token before the closing EOS (transformers'
`*ForSequenceClassification` pooling does that). Reading at the mask makes a score independent of padding
side, of batch neighbours, and of whether pad == EOS.

Left-padded batches get position ids from the mask (real tokens keep positions 0..n-1), so a sequence
scores the same whichever side it is padded on.

`bucketed=True` trims padding without changing a single number: the rows of a right-padded batch are
grouped by length and each group runs with only its own padding (`data.collate.length_groups`). On CPU this beats
one padding-free row, whose attention costs (total tokens)² instead of Σ length².
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.data.collate import length_groups
from alignkit.errors import AlignkitError


def reward_parts(model):
    """(backbone, head) of a `*ForSequenceClassification` model (LoRA-wrapped or not); None otherwise."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, "score", None)
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if head is None or backbone is None or backbone is inner:
        return None
    return backbone, head


def last_token_index(batch: dict) -> Tensor:
    """(N,) flat indices into the (B*T) token grid of every sequence's last real token."""
    if "sequence_ends" in batch:
        return batch["sequence_ends"]
    mask = batch["attention_mask"]
    rows, width = mask.shape
    columns = torch.arange(width, device=mask.device)
    last = (columns * mask.bool()).argmax(-1)
    return torch.arange(rows, device=mask.device) * width + last


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids that start at 0 at each row's first real token (left or right padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _scores(backbone, head, inputs: dict, ends: Tensor) -> Tensor:
    hidden = backbone(use_cache=False, **inputs).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1])[ends]
    return head(picked).squeeze(-1).float()


def sequence_rewards(model, batch: dict, bucketed: bool = False, max_waste: float = 0.05) -> Tensor:
    """(N,) float32 score of each sequence in `batch`, in row order (packed rows: in `sequence_ends` order).

    batch: input_ids (B, T) with attention_mask (B, T), padded on either side; or one padding-free row
    with position_ids and sequence_ends (`data.collate.collate_sequences(..., padding_free=True)`).
    bucketed: run a right-padded batch in length groups (same scores, less compute on pad tokens).
    """
    parts = reward_parts(model)
    input_ids = batch["input_ids"]
    if "sequence_ends" in batch:
        if parts is None:
            raise AlignkitError(f"{type(model).__name__}: padding-free scoring needs a *ForSequenceClassification "
                                "model with a `score` head; use padded batches")
        return _scores(*parts, {"input_ids": input_ids, "position_ids": batch["position_ids"]}, batch["sequence_ends"])
    mask = batch["attention_mask"]
    if parts is None:
        return _score_one_by_one(model, input_ids, mask)
    if bucketed and not bool(mask[:, 0].all()):
        raise AlignkitError("bucketed scoring needs right-padded batches")
    if not bucketed:
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions_from_mask(mask)}
        return _scores(*parts, inputs, last_token_index(batch))
    out = torch.empty(mask.shape[0], device=input_ids.device)
    for rows, sub in length_groups(batch, ("input_ids", "attention_mask")):
        ends = last_token_index({"attention_mask": mask[rows, :sub["input_ids"].shape[1]]})
        out = out.index_put((rows,), _scores(*parts, sub, ends))
    return out


def _score_one_by_one(model, input_ids: Tensor, mask: Tensor) -> Tensor:
    """Exact general path: each sequence alone, unpadded, through the model's own forward."""
    scores = []
    for row, row_mask in zip(input_ids, mask.bool()):
        ids = row[row_mask].unsqueeze(0)
        scores.append(model(input_ids=ids, use_cache=False).logits.reshape(-1)[0].float())
    return torch.stack(scores)
