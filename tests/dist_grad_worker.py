"""Run under `accelerate launch` by tests/test_distributed.py: trains the tiny model for a few SFT steps on
the shared engine and records, at every optimizer step, the gradient each process is about to apply. Rank 0
writes every process's record to the JSON file named on the command line."""

import json
import sys

import torch
from accelerate.utils import gather_object

from alignkit.data.builtin import builtin_path
from alignkit.data.collate import collate_masked
from alignkit.data.io import load_rows
from alignkit.engine.loop import train
from alignkit.engine.settings import TrainSettings
from alignkit.methods.sft import count_trained_tokens, sft_loss, tokenize_sft
from alignkit.models.load import load_policy, load_tokenizer

tokenizer = load_tokenizer("embedded:tiny")
examples, _ = tokenize_sft(tokenizer, load_rows(builtin_path("sft.jsonl"), "sft")[:16], max_length=64)
model = load_policy("embedded:tiny", device="cpu")
seen: list[list[float]] = []
original_step = torch.optim.AdamW.step


def recording_step(self, *args, **kwargs):  # the gradient after DDP's all-reduce and clipping
    grads = [p.grad.flatten() for group in self.param_groups for p in group["params"] if p.grad is not None]
    seen.append(torch.cat(grads)[:2000].tolist())
    return original_step(self, *args, **kwargs)


torch.optim.AdamW.step = recording_step
settings = TrainSettings(output_dir=sys.argv[2], max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                         progress=False, seed=1)
train(model, examples, lambda items: collate_masked(items, tokenizer.pad_token_id), sft_loss, settings,
      count_fn=count_trained_tokens, device="cpu")
everything = gather_object([seen])
if int(__import__("os").environ.get("RANK", "0")) == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(everything, f)
