"""Batched sampling from a policy (KV cache on; `rollout.sampler` does the decoding).

Prompts are tokenized with `encode_prompt`, the same function training uses, so what the model sees at
generation matches what it was trained on. Prompts are sorted by length before batching (less padding),
left-padded, and the results are returned in the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from alignkit.data.tokenize import encode_prompt
from alignkit.errors import AlignkitError
from alignkit.rollout.sampler import TorchSampler


@dataclass
class SamplingSettings:
    """How to sample responses."""

    max_new_tokens: int = 256
    """Most tokens generated per response."""
    temperature: float = 0.7
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: no limit)."""
    num_return_sequences: int = 1
    """Responses per prompt."""
    batch_size: int = 8
    """Prompts per generate call."""
    seed: int = 0
    """Seed for sampling."""

    def check(self) -> None:
        for name, ok, why in (
            ("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("num_return_sequences", self.num_return_sequences >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
        ):
            if not ok:
                raise AlignkitError(f"{name}: {why}, got {getattr(self, name)}")


@dataclass
class Generation:
    """One sampled response."""

    prompt: Any
    completion: str
    completion_ids: list[int]
    finish_reason: str  # "stop" (ended with EOS) or "length" (hit max_new_tokens)


def stop_ids(model, tokenizer) -> list[int]:
    """The token ids that end a response: the tokenizer's EOS and the model's configured eos_token_id(s)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generate(model, tokenizer, prompts: list, settings: SamplingSettings | None = None,
             progress: bool = True, reseed: bool = True, sampler=None) -> list[list[Generation]]:
    """Sample `num_return_sequences` responses for each prompt (string or conversation).

    Returns one list of Generations per prompt, in the order given. reseed=False draws from the global
    random state as it stands (online RL: successive rollouts differ, and a resumed run, whose random
    state is restored, draws the same samples). sampler: where the tokens come from (default
    `rollout.sampler.sample_groups` on `model`; `rollout.vllm_engine.VLLMSampler` on a GPU).
    """
    import torch
    from tqdm.auto import tqdm

    sampler = sampler or TorchSampler(model)
    settings = settings or SamplingSettings()
    settings.check()
    stop = stop_ids(model, tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[list[Generation]] = [[] for _ in prompts]
    n = settings.num_return_sequences
    if reseed:
        torch.manual_seed(settings.seed)
    bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress or None, leave=False)
    try:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            rows = sampler.sample([encoded[i] for i in batch], n, replace(settings, batch_size=len(batch)), stop,
                                  tokenizer.pad_token_id)
            for k, tokens in enumerate(rows):
                index = batch[k // n]
                results[index].append(finish_row(prompts[index], tokens, stop, tokenizer))
            bar.update(len(batch))
    finally:
        bar.close()
    return results


def finish_row(prompt, tokens: list[int], stop: list[int], tokenizer) -> Generation:
    """Cut a generated row at its first stop token (padding follows it) and decode it."""
    end = next((i for i, t in enumerate(tokens) if t in stop), None)
    kept = tokens if end is None else tokens[: end + 1]
    text = tokenizer.decode(kept if end is None else kept[:-1], skip_special_tokens=True)
    return Generation(prompt, text.strip(), kept, "length" if end is None else "stop")


def as_records(rows: list[dict], outputs: list[list[Generation]]) -> list[dict]:
    """One output row per generation: the prompt row (extra columns kept) with completion and finish_reason."""
    return [{**row, "completion": g.completion, "finish_reason": g.finish_reason}
            for row, gens in zip(rows, outputs) for g in gens]
