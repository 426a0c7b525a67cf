"""Kahneman-Tversky Optimisation (Ethayarajh et al. 2024): preference learning from unpaired thumbs-up /
thumbs-down examples, on the shared engine.

Each example is one prompt + completion with a label (desirable or not). With r = log π(y|x) − log ρ(y|x),
a desirable example loses λ_D(1 − σ(β(r − z₀))) and an undesirable one λ_U(1 − σ(β(z₀ − r))), where the
reference point z₀ is the batch's estimate of KL(π‖ρ): the mean of r over *mismatched* prompt/completion
pairs, computed without gradients and clamped at 0 (`alignkit.losses.preference.kto`).

- Data: unpaired rows {"prompt", "completion", "label"}, or preference pairs, each turned into a desirable
  and an undesirable row (`data.formats.preference_to_unpaired`).
- Mismatched pairs: every example gets a fixed partner, the completion of the next example in a seeded
  shuffle, attached to its own prompt. Fixed partners let the reference's log-probs of them be precomputed
  and cached like the matched ones.
- The reference strategies are DPO's (`--ref copy | adapter | precomputed | auto`, `models.reference`).
- Held-out preference pairs also give `eval/rewards/accuracies`: how often the chosen response's implicit
  reward β·r beats the rejected one's, the number DPO reports, so the two methods compare directly.
- The KL estimate is per micro-batch on each device (TRL gathers it across devices).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from alignkit.data.collate import collate_responses
from alignkit.data.formats import detect_kind, preference_to_unpaired
from alignkit.data.io import file_format, load_rows, load_train_eval, resolve_data_path, scan
from alignkit.data.tokenize import Tokenized, TruncationWarning, tokenize_example
from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.losses import preference
from alignkit.methods.pairs import LAYOUTS
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.models.reference import REFERENCES, Reference, prepare_reference, reference_strategy
from alignkit.ops.sequence import sequence_sums

KL_PREFIX = "kl_"  # batch keys of the mismatched (KL) sequences


@dataclass
class KTOConfig:
    """Kahneman-Tversky optimisation on unpaired (or paired) preference data."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id (usually an SFT model)."""
    ref_model_name_or_path: str | None = None
    """Reference model (default: the policy's starting weights)."""
    dataset_name: str = ""
    """Unpaired rows (prompt, completion, label) or preference pairs (prompt, chosen, rejected)."""
    eval_dataset_name: str | None = None
    """Held-out data of either kind (default: the training file's dataset_test_split rows, if any)."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on."""
    beta: float = 0.1
    """β: strength of the pull towards the reference."""
    desirable_weight: float = 1.0
    """λ_D: weight of the desirable examples' losses."""
    undesirable_weight: float = 1.0
    """λ_U: weight of the undesirable examples' losses. Keep λ_D·n_D / (λ_U·n_U) in [1, 4/3]."""
    ref: str = "auto"
    """Reference strategy: copy, adapter (LoRA disabled; needs use_peft), precomputed, or auto."""
    max_length: int = 1024
    """Longest prompt + completion in tokens; the prompt is cut from the left first."""
    max_prompt_length: int | None = None
    """Cut prompts (from the left) to this many tokens first."""
    batch_layout: str = "bucketed"
    """bucketed (length groups), padded, or padding_free (one row)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto, float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    peft: PeftSettings = field(default_factory=PeftSettings)
    """LoRA settings (flat keys: use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-6))
    """Shared training settings (flat keys: learning_rate, max_steps, ...)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data",),
                   "eval_dataset_name": ("--eval_data",), "ref_model_name_or_path": ("--ref_model",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the data (--dataset_name / --data FILE)")
        for name, value, allowed in (("ref", self.ref, REFERENCES), ("batch_layout", self.batch_layout, LAYOUTS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.ref == "adapter" and not self.peft.use_peft:
            raise AlignkitError("config: ref: adapter needs a LoRA adapter to disable; add --use_peft true "
                                "or pick --ref copy / precomputed")
        if self.beta <= 0:
            raise AlignkitError(f"config: beta: must be > 0, got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise AlignkitError(f"config: {name}: must be > 0, got {getattr(self, name)}")
        if self.train.per_device_train_batch_size < 2:
            raise AlignkitError("config: per_device_train_batch_size: KTO estimates its reference point from the "
                                "batch; use at least 2")
        if self.max_length < 2:
            raise AlignkitError(f"config: max_length: must be at least 2, got {self.max_length}")
        self.train.check()

    def reference(self) -> str:
        return reference_strategy(self.ref, self.peft.use_peft, self.ref_model_name_or_path)


@dataclass
class KTOExample:
    """One labelled completion, its mismatched KL partner (its prompt, another example's completion), the
    index of the preference pair it came from (held-out accuracy), and the reference's log-probs of both
    sequences once precomputed."""

    item: object  # data.tokenize.Tokenized
    desirable: bool
    kl_item: object = None
    pair: int | None = None
    ref_logp: float | None = None
    ref_kl_logp: float | None = None

    def rows(self) -> list:
        return [self.item, self.kl_item]

    def set_reference(self, values: list[float]) -> None:
        self.ref_logp, self.ref_kl_logp = values


def attach_kl_partners(examples: list[KTOExample], seed: int, max_length: int) -> None:
    """Give each example its KL sequence: its own prompt followed by the completion of the next example in
    a seeded shuffle (cut to fit max_length). Needs at least two examples."""
    if len(examples) < 2:
        raise AlignkitError("kto: the KL reference point needs at least two examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for k, i in enumerate(order):
        prompt = examples[i].item.prompt_ids
        completion = examples[order[(k + 1) % len(order)]].item.completion_ids
        examples[i].kl_item = Tokenized(prompt, completion[: max(1, max_length - len(prompt))])


def collate_kto(examples: list[KTOExample], pad_id: int, padding_free: bool = False) -> dict:
    """The labelled sequences, `desirable` (bool per example), the KL sequences under `kl_` keys, and the
    precomputed reference log-probs of both when the examples carry them."""
    batch = collate_responses([e.item for e in examples], pad_id, padding_free)
    kl = collate_responses([e.kl_item for e in examples], pad_id, padding_free)
    batch.update({KL_PREFIX + k: v for k, v in kl.items()})
    batch["desirable"] = torch.tensor([e.desirable for e in examples])
    if examples[0].ref_logp is not None:
        batch["ref_logps"] = torch.tensor([e.ref_logp for e in examples])
        batch[KL_PREFIX + "ref_logps"] = torch.tensor([e.ref_kl_logp for e in examples])
    return batch


def split_batch(batch: dict) -> tuple[dict, dict]:
    """(the labelled sequences' batch, the KL sequences' batch)."""
    matched = {k: v for k, v in batch.items() if not k.startswith(KL_PREFIX) and k != "desirable"}
    kl = {k[len(KL_PREFIX):]: v for k, v in batch.items() if k.startswith(KL_PREFIX)}
    return matched, kl


class KTOOutputs(NamedTuple):
    losses: object  # (B,) per-example losses
    rewards: object  # (B,) implicit rewards β·(log π − log ρ), detached
    logps: object  # (B,) policy log-probs of the completions, detached
    kl: object  # the reference point z₀ (the clamped batch KL estimate)
    logit_sums: object  # (B,) summed vocabulary-mean logits of each completion
    counts: object  # (B,) completion tokens


def kto_forward(model, batch: dict, reference, config: KTOConfig, bucketed: bool = False) -> KTOOutputs:
    """The loss and what the metrics need, for one batch."""
    matched, kl_batch = split_batch(batch)
    policy, counts, logits = sequence_sums(model, matched, bucketed, mean_logits=True)
    ref = reference.logps(model, matched).to(policy)
    with torch.no_grad():  # the reference point is a constant of the loss
        kl_policy = sequence_sums(model, kl_batch, bucketed)[0]
    kl_ref = reference.logps(model, kl_batch).to(kl_policy)
    kl = (kl_policy - kl_ref).mean()
    desirable = batch["desirable"].bool()
    out = preference.kto(policy, ref, desirable, kl, config.beta, config.desirable_weight,
                         config.undesirable_weight)
    rewards = (config.beta * (policy - ref)).detach()
    return KTOOutputs(out.losses, rewards, policy.detach(), kl.clamp(min=0), logits, counts)


def kto_loss(model, batch: dict, reference, config: KTOConfig, bucketed: bool = False):
    """(summed loss over the batch's examples, metrics with TRL's names)."""
    out = kto_forward(model, batch, reference, config, bucketed)
    desirable = batch["desirable"].bool()
    metrics = {"kl": out.kl.item()}
    for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"rewards/{name}"] = out.rewards[rows].mean().item()
            metrics[f"logps/{name}"] = out.logps[rows].mean().item()
            metrics[f"logits/{name}"] = (out.logit_sums[rows].sum() / out.counts[rows].sum().clamp(min=1)).item()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return out.losses.sum(), metrics


def count_examples(batch: dict) -> int:
    return len(batch["desirable"])


def evaluate_kto(model, examples: list[KTOExample], reference, config: KTOConfig, pad_id: int,
                 batch_size: int) -> dict:
    """Held-out eval/loss, eval/kl, eval/rewards/chosen|rejected, and eval/rewards/accuracies over the
    examples that came from preference pairs (chosen's β·r above rejected's)."""
    device = next(model.parameters()).device
    losses, rewards, kls, sizes = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_kto(chunk, pad_id).items()}
        out = kto_forward(model, batch, reference, config, bucketed=True)
        losses.append(out.losses.cpu())
        rewards.append(out.rewards.cpu())
        kls.append(out.kl.item())
        sizes.append(len(chunk))
    loss, reward = torch.cat(losses), torch.cat(rewards)
    desirable = torch.tensor([e.desirable for e in examples])
    metrics = {"eval/loss": loss.mean().item(),
               "eval/kl": sum(k * n for k, n in zip(kls, sizes)) / sum(sizes)}
    for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"eval/rewards/{name}"] = reward[rows].mean().item()
    by_pair: dict[int, dict[bool, float]] = {}
    for e, r in zip(examples, reward.tolist()):
        if e.pair is not None:
            by_pair.setdefault(e.pair, {})[e.desirable] = r
    wins = [sides[True] > sides[False] for sides in by_pair.values() if len(sides) == 2]
    if wins:
        metrics["eval/rewards/accuracies"] = sum(wins) / len(wins)
    return metrics


def load_examples(tokenizer, path: str, rows: list[dict], kind: str, config: KTOConfig) -> list[KTOExample]:
    """Tokenized KTO examples from unpaired rows, or from preference rows (each pair gives a desirable and an
    undesirable example that remember their pair)."""
    if kind == "preference":
        pair_of = [i for i in range(len(rows)) for _ in (0, 1)]
        rows = preference_to_unpaired(rows)
    else:
        pair_of = [None] * len(rows)
    examples, dropped = [], 0
    for row, pair in zip(rows, pair_of):
        item = tokenize_example(tokenizer, row["prompt"], row["completion"], max_length=config.max_length,
                                max_prompt_length=config.max_prompt_length)
        if item is None:
            dropped += 1
        else:
            examples.append(KTOExample(item, bool(row["label"]), pair=pair))
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} of {len(rows)} examples: at max_length={config.max_length} "
                      "their completions would be empty", TruncationWarning, stacklevel=2)
    return examples


def data_kind(path: str, split: str | None = None) -> str:
    """"unpaired" or "preference": what the file's first row is; anything else is a one-line error."""
    for line, row in scan(resolve_data_path(path), split):
        kind = detect_kind(row)
        if kind in ("unpaired", "preference"):
            return kind
        raise AlignkitError(f"{path}:{line}: row: KTO needs unpaired rows (prompt, completion, label) or "
                            f"preference pairs (prompt, chosen, rejected), found {kind or 'neither'}")
    raise AlignkitError(f"{path}: file: no rows")


def load_kto_data(config: KTOConfig) -> tuple:
    """(tokenizer, training examples, held-out examples), with their KL partners attached."""
    tokenizer = load_tokenizer(config.model_name_or_path)
    is_hf = file_format(resolve_data_path(config.dataset_name)) == "hf"
    kind = data_kind(config.dataset_name, config.dataset_train_split if is_hf else None)
    train_rows, eval_rows = load_train_eval(config.dataset_name, kind, None, config.dataset_train_split,
                                            config.dataset_test_split)
    eval_kind = kind
    if config.eval_dataset_name:
        eval_kind = data_kind(config.eval_dataset_name)
        eval_rows = load_rows(config.eval_dataset_name, eval_kind)
    examples = load_examples(tokenizer, config.dataset_name, train_rows, kind, config)
    eval_examples = load_examples(tokenizer, config.eval_dataset_name or config.dataset_name, eval_rows,
                                  eval_kind, config)
    if len(examples) < 2:
        raise AlignkitError(f"{config.dataset_name}: KTO needs at least two training examples, "
                            f"{len(examples)} left")
    attach_kl_partners(examples, config.train.seed, config.max_length)
    if len(eval_examples) >= 2:
        attach_kl_partners(eval_examples, config.train.seed, config.max_length)
    else:
        eval_examples = []
    warn_on_balance(examples, config)
    return tokenizer, examples, eval_examples


def warn_on_balance(examples: list[KTOExample], config: KTOConfig) -> None:
    """The KTO paper's advice: λ_D·n_D / (λ_U·n_U) should lie in [1, 4/3]; say how to get there."""
    n_d = sum(e.desirable for e in examples)
    n_u = len(examples) - n_d
    if not n_d or not n_u:
        warnings.warn(f"kto: the training data has only {'desirable' if n_d else 'undesirable'} examples; "
                      "KTO learns from the contrast, give it both", stacklevel=2)
        return
    ratio = config.desirable_weight * n_d / (config.undesirable_weight * n_u)
    if not 1 <= ratio <= 4 / 3:
        low, high = n_u / n_d * config.undesirable_weight, 4 / 3 * n_u / n_d * config.undesirable_weight
        warnings.warn(f"kto: desirable_weight·n_desirable / (undesirable_weight·n_undesirable) is {ratio:.2f} "
                      f"({n_d} desirable, {n_u} undesirable); the KTO paper keeps it in [1, 4/3]: set "
                      f"desirable_weight between {low:.2f} and {high:.2f}", stacklevel=2)


def train_kto(config: KTOConfig):
    """Train config.model_name_or_path with KTO on config.dataset_name; writes the run directory and
    returns the engine's TrainResult."""
    with run_owner(config, kind="kto", model=config.model_name_or_path) as run:
        strategy = config.reference()
        tokenizer, examples, eval_examples = load_kto_data(config)
        pad_id = tokenizer.pad_token_id
        run.start()
        bucketed = config.batch_layout == "bucketed"
        reference = prepare_reference(config, strategy, examples, eval_examples, pad_id, bucketed)

        torch.manual_seed(config.train.seed)
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                            lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
        padding_free = config.batch_layout == "padding_free"

        def collate(items):
            return collate_kto(items, pad_id, padding_free)

        def step(model, batch):
            return kto_loss(model, batch, reference, config, bucketed)

        eval_fn = None
        if eval_examples:
            def eval_fn(model):
                return evaluate_kto(model, eval_examples, Reference(strategy, reference.model, bucketed=True), config,
                                    pad_id, config.train.per_device_eval_batch_size)

        return run.train(model, tokenizer, examples, collate, step, count_fn=count_examples, eval_fn=eval_fn)
