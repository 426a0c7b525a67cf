"""Log-probs of G completions per prompt with the prompt computed once (shared-prefix forward).

Group methods (GRPO, RLOO) score G sampled completions of every prompt. The plain way runs each of the G
(prompt + completion) rows through the model, so every prompt token is computed G times forward and G
times backward. Here the P prompts go through the model once (left-padded, filling a KV cache); the cache
is repeated G times along the batch (a differentiable copy), and the P·G completions run on top of it.
The completions attend to exactly the keys and values they would see in the full rows, at the same
positions, so the log-probs are the same up to float rounding (the tests check values and gradients),
while the prompt's share of the compute and activation memory falls by a factor of G. In the backward
pass, the gradients of the G copies of the cache sum into the one prompt forward.

The result is laid out over completions only: (P·G, longest completion), position j scoring completion
token j. Models trained with gradient checkpointing cannot keep a cache in training mode, and a
DistributedDataParallel wrapper expects one forward per backward; for them (and for G = 1, where there is
nothing to share) the plain full-row forward runs and its result is moved into the same layout.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import Tensor

from alignkit.data.collate import collate, pad
from alignkit.data.tokenize import Tokenized
from alignkit.ops.logprobs import (
    SequenceLogProbs,
    _plain_linear_head,
    linear_entropy,
    linear_log_probs,
    logits_entropy,
    selective_log_softmax,
    sequence_logps,
)


def group_logps(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                temperature: float = 1.0, chunk_size: int | None = None, entropy: bool = False) -> SequenceLogProbs:
    """Per-token log-probs of `completion_ids` (G per prompt, grouped: row i continues prompt i // G).

    Returns token_logps (P·G, Lc) float32 and mask (P·G, Lc) bool, Lc the longest completion; a
    completion's token j sits at column j. entropy: also the policy's entropy at each of those positions
    (`SequenceLogProbs.entropy`, same layout, differentiable).
    """
    if not prompt_ids or len(completion_ids) % len(prompt_ids):
        raise ValueError(f"{len(completion_ids)} completions for {len(prompt_ids)} prompts: not G per prompt")
    group = len(completion_ids) // len(prompt_ids)
    device = next(model.parameters()).device
    completions = pad(completion_ids, pad_id, side="right").to(device)
    mask = pad([[1] * len(c) for c in completion_ids], 0, side="right").to(device).bool()
    if group == 1 or checkpointing(model) or hasattr(model, "module"):
        return _full_rows(model, prompt_ids, completion_ids, completions, mask, pad_id, temperature, chunk_size,
                          entropy)

    from transformers import DynamicCache

    prompts = pad(prompt_ids, pad_id, side="left").to(device)
    prompt_mask = pad([[1] * len(p) for p in prompt_ids], 0, side="left").to(device)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    lengths = prompt_mask.sum(-1).repeat_interleave(group)
    positions = lengths[:, None] + torch.arange(completions.shape[1], device=device)
    full_mask = torch.cat([prompt_mask.repeat_interleave(group, 0), mask.long()], dim=1)
    cache = DynamicCache(config=getattr(model, "config", None))
    head = _plain_linear_head(model)
    labels = completions[mask]
    if head is not None:
        decoder = model.get_decoder()
        with_cache = {cache_argument(decoder): cache, "use_cache": True}
        last = decoder(input_ids=prompts, attention_mask=prompt_mask, position_ids=prompt_positions,
                       **with_cache).last_hidden_state[:, -1:]
        cache.batch_repeat_interleave(group)
        hidden = decoder(input_ids=completions, attention_mask=full_mask, position_ids=positions,
                         **with_cache).last_hidden_state
        # the prompt's last state predicts completion token 0; completion state j predicts token j + 1
        hidden = torch.cat([last.repeat_interleave(group, 0), hidden[:, :-1]], dim=1)
        flat = linear_log_probs(hidden[mask], head.weight, head.bias, labels, chunk_size, temperature)
        flat_entropy = linear_entropy(hidden[mask], head.weight, head.bias, temperature, chunk_size) if entropy else None
    else:
        with_cache = {cache_argument(model): cache, "use_cache": True}
        last = model(input_ids=prompts, attention_mask=prompt_mask, position_ids=prompt_positions,
                     logits_to_keep=1, **with_cache).logits[:, -1:]
        cache.batch_repeat_interleave(group)
        logits = model(input_ids=completions, attention_mask=full_mask, position_ids=positions,
                       **with_cache).logits
        logits = torch.cat([last.repeat_interleave(group, 0), logits[:, :-1]], dim=1)
        if temperature != 1.0:
            logits = logits / temperature
        flat = selective_log_softmax(logits[mask], labels, chunk_size)
        flat_entropy = logits_entropy(logits[mask], chunk_size) if entropy else None
    return SequenceLogProbs(token_logps=_place(mask, flat), mask=mask,
                            entropy=None if flat_entropy is None else _place(mask, flat_entropy))


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.2x on,
    `past_key_values` before (a PEFT wrapper is looked through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on: then a training-mode forward keeps no cache.
    (transformers renamed is_gradient_checkpointing to is_activation_checkpointing in 5.2x.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return bool(getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False)))


def _place(mask: Tensor, flat: Tensor) -> Tensor:
    return flat.new_zeros(mask.shape).masked_scatter(mask, flat)


def _full_rows(model, prompt_ids, completion_ids, completions, mask, pad_id, temperature, chunk_size, entropy=False):
    """The plain path: every (prompt + completion) row through the model, then completion columns only."""
    device = completions.device
    batch = {k: v.to(device) for k, v in collate(
        [Tokenized(prompt_ids[i // (len(completion_ids) // len(prompt_ids))], c)
         for i, c in enumerate(completion_ids)], pad_id).items()}
    full = sequence_logps(model, batch, chunk_size, temperature, entropy=entropy)
    # row i's completion starts after its prompt: gather those columns into the completion layout
    starts = torch.tensor([len(prompt_ids[i // (len(completion_ids) // len(prompt_ids))])
                           for i in range(len(completion_ids))], device=device)
    columns = (starts[:, None] + torch.arange(mask.shape[1], device=device)).clamp(max=full.mask.shape[1] - 1)
    token_logps = full.token_logps.gather(1, columns) * mask
    token_entropy = None if full.entropy is None else full.entropy.gather(1, columns) * mask
    return SequenceLogProbs(token_logps=token_logps, mask=mask, entropy=token_entropy)
