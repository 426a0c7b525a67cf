"""The reference model of the reference-based preference methods (DPO and its variants, KTO), in one of three
strategies:

- copy: a frozen second model (`ref_model_name_or_path`, default the policy's starting weights);
- adapter: the policy itself with its LoRA adapter disabled: one model in memory (needs use_peft);
- precomputed: the reference's log-probs of every example computed once before training and cached in
  output_dir/reference_logps.pt; the reference is not in memory while training.
All three give the same loss (tested); `auto` picks adapter with LoRA (and no separate reference model),
else precomputed.

An example the reference scores gives its sequences with `rows()` and takes their summed log-probs with
`set_reference(values)` (DPO: chosen, rejected; KTO: the completion and its mismatched KL partner).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from alignkit.data.collate import collate
from alignkit.files import write_atomic
from alignkit.models.load import load_policy
from alignkit.ops.sequence import sequence_sums
from alignkit.processes import is_main_process

REFERENCES = ("auto", "copy", "adapter", "precomputed")


def reference_strategy(ref: str, use_peft: bool, ref_model_name_or_path: str | None) -> str:
    """The strategy `ref` names, with auto resolved (see the module docstring)."""
    if ref != "auto":
        return ref
    return "adapter" if use_peft and not ref_model_name_or_path else "precomputed"


class Reference:
    """Where the reference log-probs come from (see the module docstring)."""

    def __init__(self, strategy: str, model=None, bucketed: bool = False):
        self.strategy, self.model, self.bucketed = strategy, model, bucketed

    def logps(self, policy, batch: dict):
        if self.strategy == "precomputed":
            return batch["ref_logps"]
        with torch.no_grad():
            if self.strategy == "adapter":
                with policy.disable_adapter():
                    return sequence_sums(policy, batch, self.bucketed)[0]
            return sequence_sums(self.model, batch, self.bucketed)[0]


def precompute_reference(examples: list, reference_model, pad_id: int, batch_size: int, cache_path=None,
                         key: str = "") -> None:
    """Fill in every example's reference log-probs (from `cache_path` when it holds the same `key`). An
    example gives the sequences to score with `rows()` and takes their summed log-probs with
    `set_reference(values)` (DPO: chosen, rejected; KTO: the completion and its mismatched KL partner)."""
    if cache_path is not None and cache_path.exists():
        cached = torch.load(cache_path, weights_only=True)
        if cached.get("key") == key and "values" in cached and len(cached["values"]) == len(examples):
            for e, values in zip(examples, cached["values"].tolist()):
                e.set_reference(values)
            return
    device = next(reference_model.parameters()).device
    computed = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            rows = [row for e in chunk for row in e.rows()]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            sums = sequence_sums(reference_model, batch, bucketed=True)[0].reshape(len(chunk), -1).cpu()
            for e, values in zip(chunk, sums.tolist()):
                e.set_reference(values)
            computed.append(sums)
    if cache_path is not None and computed and is_main_process():  # every process computes; one writes
        values = torch.cat(computed)
        write_atomic(cache_path, lambda tmp: torch.save({"key": key, "values": values}, tmp))


def cache_key(config, examples: list) -> str:
    """What the cached reference log-probs depend on: the reference model and every scored sequence."""
    digest = hashlib.sha256()
    digest.update(str(config.ref_model_name_or_path or config.model_name_or_path).encode())
    for e in examples:
        digest.update(repr([(row.prompt_ids, row.completion_ids) for row in e.rows()]).encode())
    return digest.hexdigest()


def prepare_reference(config, strategy: str, examples: list, eval_examples: list, pad_id: int,
                      bucketed: bool) -> Reference:
    """The `Reference` of a method's config (model_name_or_path, ref_model_name_or_path, dtype, device,
    train.output_dir, train.per_device_eval_batch_size): loads the copy, or precomputes every example's
    reference log-probs (the training set's cached in output_dir/reference_logps.pt) and lets the model go."""
    reference_model = None
    if strategy in ("copy", "precomputed"):
        ref_name = config.ref_model_name_or_path or config.model_name_or_path
        reference_model = load_policy(ref_name, dtype=config.dtype, device=config.device).eval()
        reference_model.requires_grad_(False)
    if strategy == "precomputed":
        size = config.train.per_device_eval_batch_size
        precompute_reference(examples, reference_model, pad_id, size,
                             Path(config.train.output_dir) / "reference_logps.pt", cache_key(config, examples))
        precompute_reference(eval_examples, reference_model, pad_id, size)
        reference_model = None  # not in memory while training
    return Reference(strategy, reference_model, bucketed=bucketed)
