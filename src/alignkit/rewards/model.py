"""A trained reward model as a reward source: `RewardModel(path)(prompts, completions) -> scores`."""

from __future__ import annotations

from typing import Any

from alignkit.data.collate import collate_sequences
from alignkit.data.tokenize import encode_pair_ids, special_prefix, truncate
from alignkit.models.load import load_reward_model, load_tokenizer
from alignkit.ops.rewards import sequence_rewards


class RewardModel:
    """Scores prompt/response pairs with a reward model saved by `alignkit rm` (its run directory or the
    model/ in it; `models.load.resolve_model_path`), or any one-label `*ForSequenceClassification`
    checkpoint. Texts are tokenized exactly as in training, batched by length, and scored at their last
    real token."""

    def __init__(self, path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_length: int | None = 1024):
        self.path = str(path)
        self.tokenizer = load_tokenizer(path)
        self.model = load_reward_model(path, device=device, dtype=dtype).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, prompt: Any, completion: Any) -> list[int]:
        prompt_ids, answer_ids = encode_pair_ids(self.tokenizer, prompt, completion)
        fitted = truncate(prompt_ids, [answer_ids], max_length=self.max_length, prefix=special_prefix(self.tokenizer))
        if fitted is None:  # a prompt alone fills max_length: score its end, as a trainer would have cut it
            return (prompt_ids + answer_ids)[-self.max_length:]
        return fitted[0] + fitted[1][0]

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        scores = [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = collate_sequences([encoded[i] for i in rows], self.tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                for i, value in zip(rows, sequence_rewards(self.model, batch, bucketed=True).tolist()):
                    scores[i] = value
        return scores
