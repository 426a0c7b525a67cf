"""Rollouts for online RL: G sampled responses per prompt, kept as token ids so the trainer scores exactly
the tokens that were sampled.

`sample_rollout` draws the responses with `rollout.generate` (KV cache, one prefill per prompt, a response
leaves the batch at its stop token) from the global random state, so a resumed run draws the same
samples. The behaviour log-probs are not taken from the sampler: the trainer computes them with the same
forward pass and temperature it uses for the loss (`ops.logprobs.sequence_logps` or, for groups,
`ops.prefix.group_logps`), so on the first minibatch the ratio π/π_old is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from alignkit.data.collate import collate
from alignkit.data.tokenize import Tokenized, encode_prompt
from alignkit.losses.rl import truncated_is_weights
from alignkit.rollout.generate import finish_row, generate


@dataclass
class Rollout:
    """G responses to each of P prompts; index i = prompt i // G, sample i % G."""

    rows: list[dict]  # the prompt row of each sample (extra columns go to reward functions)
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # ends with EOS when finish_reason is "stop"
    completions: list[str]
    finish_reasons: list[str]
    group_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def prompts(self) -> list:
        return [row["prompt"] for row in self.rows]

    def groups(self, keep: list[int]) -> Rollout:
        """The rollout of only the groups (prompts) at `keep`, in that order; per-sample lists in `extra`
        follow."""
        g = self.group_size
        index = [k * g + j for k in keep for j in range(g)]

        def pick(values):
            return [values[i] for i in index]

        extra = {k: pick(v) if isinstance(v, list) and len(v) == len(self) else v for k, v in self.extra.items()}
        return Rollout(pick(self.rows), pick(self.prompt_ids), pick(self.completion_ids), pick(self.completions),
                       pick(self.finish_reasons), g, extra)

    @staticmethod
    def join(parts: list[Rollout]) -> Rollout:
        """One rollout of several, in order (same group size; per-sample lists in `extra` are joined)."""
        first = parts[0]
        extra = {k: [x for p in parts for x in p.extra[k]] if isinstance(v, list) and len(v) == len(first) else v
                 for k, v in first.extra.items()}
        return Rollout([r for p in parts for r in p.rows], [x for p in parts for x in p.prompt_ids],
                       [x for p in parts for x in p.completion_ids], [x for p in parts for x in p.completions],
                       [x for p in parts for x in p.finish_reasons], first.group_size, extra)

    def batch(self, pad_id: int, indices: list[int] | None = None) -> dict:
        """Right-padded input_ids, attention_mask and completion_mask of the samples at `indices` (all by
        default)."""
        indices = range(len(self)) if indices is None else indices
        return collate([Tokenized(self.prompt_ids[i], self.completion_ids[i]) for i in indices], pad_id)


def sample_rollout(model, tokenizer, rows: list[dict], settings, group_size: int,
                   progress: bool = False, sampler=None) -> Rollout:
    """`group_size` sampled responses to each row's prompt (settings: `rollout.generate.SamplingSettings`;
    its num_return_sequences is replaced by group_size; sampler: see `rollout.generate.generate`)."""
    settings = replace(settings, num_return_sequences=group_size)
    outputs = generate(model, tokenizer, [r["prompt"] for r in rows], settings, progress=progress, reseed=False,
                       sampler=sampler)
    samples = [(row, g) for row, gens in zip(rows, outputs) for g in gens]
    prompt_ids = {i: encode_prompt(tokenizer, row["prompt"]) for i, row in enumerate(rows)}
    eos = tokenizer.eos_token_id
    return Rollout(
        rows=[row for row, _ in samples],
        prompt_ids=[prompt_ids[i // group_size] for i in range(len(samples))],
        completion_ids=[g.completion_ids or [eos] for _, g in samples],
        completions=[g.completion for _, g in samples],
        finish_reasons=[g.finish_reason for _, g in samples],
        group_size=group_size,
    )


def rollout_from_rows(tokenizer, rows: list[dict], prompt_ids: list[list[int]], token_rows: list[list[int]],
                      group_size: int, stop: list[int], **extra) -> Rollout:
    """A Rollout from sampled token rows (`group_size` per prompt, as `rollout.sampler.sample_groups` returns
    them: pad fillers after the first stop token), each cut at its stop token and decoded once."""
    eos = tokenizer.eos_token_id
    done = [finish_row(rows[i // group_size]["prompt"], tokens, stop, tokenizer) for i, tokens in enumerate(token_rows)]
    return Rollout(rows=[rows[i // group_size] for i in range(len(done))],
                   prompt_ids=[prompt_ids[i // group_size] for i in range(len(done))],
                   completion_ids=[g.completion_ids or [eos] for g in done], completions=[g.completion for g in done],
                   finish_reasons=[g.finish_reason for g in done], group_size=group_size, extra=extra)


def sampler_logps(sampler, rollout: Rollout, mask):
    """The sampling engine's log-prob of each completion token, laid out like `mask` (whose 1s mark the
    completion tokens of each row, in order), NaN where unknown; None when the engine keeps none (the torch
    sampler: it is the trainer). A rollout that carries them (`extra["behaviour_logps"]`, one list per
    sample: the asynchronous generator's) is read directly."""
    import torch

    values = rollout.extra.get("behaviour_logps")
    if values is None and not hasattr(sampler, "completion_logps"):
        return None
    if values is None:
        values = sampler.completion_logps(rollout.prompt_ids, rollout.completion_ids)
    out = torch.full(mask.shape, float("nan"), dtype=torch.float32, device=mask.device)
    for i, row in enumerate(values):
        positions = mask[i].nonzero()[:, 0][:len(row)]
        out[i, positions] = torch.tensor(row[:len(positions)], dtype=torch.float32, device=mask.device)
    return out


def importance_weights(sampler, rollout: Rollout, logps, mask, cap: float, prefix: str = "vllm"):
    """Truncated importance weights (`losses.rl.truncated_is_weights`) of a rollout an external engine
    sampled (vLLM, or the asynchronous generator with older weights), and their statistics under `prefix/`
    names; ones and no statistics for the torch sampler (which is the trainer) or when cap is 0."""
    import torch

    behaviour = sampler_logps(sampler, rollout, mask) if cap > 0 else None
    if behaviour is None:
        return torch.ones_like(logps), {}
    weights, stats = truncated_is_weights(logps, behaviour, mask, cap)
    return weights, {f"{prefix}/{k}": v for k, v in stats.items()}
