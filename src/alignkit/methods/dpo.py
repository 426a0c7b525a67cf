"""Direct Preference Optimization (Rafailov et al. 2023) and its reference-based variants (cDPO, robust,
IPO, hinge/SLiC, RPO's NLL term), on the shared engine.

Per step: the B chosen and B rejected sequences go through the policy in one forward pass (only response
positions are projected to the vocabulary, `ops.logprobs`); their summed log-probs (per-token means for IPO)
and the reference's give the loss of `alignkit.losses.preference`.

The reference (`ref`: copy, adapter, precomputed or auto) is `models.reference`; the pair pipeline (batches,
held-out evaluation) is `methods.pairs`, shared with SimPO/CPO/ORPO.

Deviations from TRL's DPOTrainer, on purpose: long pairs are truncated (prompt from the left first) rather
than dropped; batches are length-bucketed by default (no compute on most pads, same numbers); the loss is
normalised over the accumulated batch's pairs, so gradient accumulation equals the large batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.losses import preference
from alignkit.methods.pairs import LAYOUTS, collate_dpo, count_pairs, evaluate_pairs, load_pairs, logit_metrics
from alignkit.models.load import load_policy
from alignkit.models.reference import REFERENCES, Reference, prepare_reference, reference_strategy
from alignkit.ops.sequence import sequence_sums

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


@dataclass
class DPOConfig:
    """Direct preference optimisation on preference pairs."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id (usually an SFT model)."""
    ref_model_name_or_path: str | None = None
    """Reference model (default: the policy's starting weights)."""
    dataset_name: str = ""
    """Preference data (prompt, chosen, rejected)."""
    eval_dataset_name: str | None = None
    """Held-out preference data (default: the training file's dataset_test_split rows, if any)."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on (eval/rewards/accuracies)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO; with label_smoothing: cDPO), robust, ipo or hinge."""
    beta: float = 0.1
    """β: strength of the pull towards the reference (IPO's τ)."""
    label_smoothing: float = 0.0
    """ε: assumed share of flipped labels (sigmoid: cDPO; robust: must be below 0.5)."""
    rpo_alpha: float = 0.0
    """Weight of the chosen responses' per-token NLL added to the loss (RPO); 0 turns it off."""
    ref: str = "auto"
    """Reference strategy: copy, adapter (LoRA disabled; needs use_peft), precomputed, or auto."""
    max_length: int = 1024
    """Longest prompt + response in tokens; the prompt is cut from the left first."""
    max_prompt_length: int | None = None
    """Cut prompts (from the left) to this many tokens first."""
    batch_layout: str = "bucketed"
    """bucketed (length groups: few pads computed), padded, or padding_free (one row; best with flash-attention
    on GPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on capable GPUs, float32 on CPU), float32, bfloat16, float16."""
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
            raise AlignkitError("config: dataset_name: give the preference data (--dataset_name / --data FILE)")
        for name, value, allowed in (("loss_type", self.loss_type, LOSS_TYPES), ("ref", self.ref, REFERENCES),
                                     ("batch_layout", self.batch_layout, LAYOUTS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.ref == "adapter" and not self.peft.use_peft:
            raise AlignkitError("config: ref: adapter needs a LoRA adapter to disable; add --use_peft true "
                                "or pick --ref copy / precomputed")
        if self.beta <= 0:
            raise AlignkitError(f"config: beta: must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise AlignkitError(f"config: label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.max_length < 2:
            raise AlignkitError(f"config: max_length: must be at least 2, got {self.max_length}")
        self.train.check()

    def reference(self) -> str:
        return reference_strategy(self.ref, self.peft.use_peft, self.ref_model_name_or_path)


def dpo_loss(model, batch: dict, reference: Reference, config: DPOConfig, bucketed: bool = False):
    """(summed loss over the batch's pairs, metrics with TRL's names)."""
    sums, counts, logits = sequence_sums(model, batch, bucketed, mean_logits=True)
    ref = reference.logps(model, batch).to(sums)
    policy_c, policy_r = sums.chunk(2)
    ref_c, ref_r = ref.chunk(2)
    count_c, count_r = counts.chunk(2)
    if config.loss_type == "ipo":  # per-token means, so the 1/(2β) target does not scale with length
        args = (policy_c / count_c.clamp(min=1), policy_r / count_r.clamp(min=1),
                ref_c / count_c.clamp(min=1), ref_r / count_r.clamp(min=1))
    else:
        args = (policy_c, policy_r, ref_c, ref_r)
    kwargs = {"label_smoothing": config.label_smoothing} if config.loss_type in ("sigmoid", "robust") else {}
    out = preference.PAIRED_LOSSES[config.loss_type](*args, beta=config.beta, **kwargs)
    losses = out.losses
    metrics = {}
    if config.rpo_alpha:
        nll = preference.nll_term(policy_c, count_c)
        losses = losses + config.rpo_alpha * nll
        metrics["nll_loss"] = nll.detach().mean().item()
    # rewards are β × the summed log-ratios for every loss (IPO too, whose loss uses per-token means), as TRL logs
    chosen_rewards = config.beta * (policy_c - ref_c).detach()
    rejected_rewards = config.beta * (policy_r - ref_r).detach()
    margins = chosen_rewards - rejected_rewards
    metrics.update({
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "logps/chosen": policy_c.detach().mean().item(),
        "logps/rejected": policy_r.detach().mean().item(),
        **logit_metrics(logits, counts),
    })
    return losses.sum(), metrics


class LikelihoodWatch:
    """Warns once when the chosen responses' log-probs fall while the margin grows: DPO is then pushing
    both responses down (the rejected faster), the failure users most often ask about."""

    def __init__(self, window: int = 10, drop: float = 1.0, rpo_alpha: float = 0.0):
        self.window, self.drop, self.seen, self.warned = window, drop, [], False
        self.rpo_alpha = rpo_alpha

    def __call__(self, metrics: dict) -> None:
        self.seen.append((metrics["logps/chosen"], metrics["rewards/margins"]))
        if self.warned or len(self.seen) < 2 * self.window:
            return
        first, last = self.seen[: self.window], self.seen[-self.window:]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        fell = mean([c for c, _ in first]) - mean([c for c, _ in last])
        grew = mean([m for _, m in last]) - mean([m for _, m in first])
        if fell > self.drop and grew > 0:
            self.warned = True
            nll = (f"a larger rpo_alpha (now {self.rpo_alpha:g})" if self.rpo_alpha > 0
                   else "rpo_alpha > 0 (an NLL term on chosen)")
            warnings.warn(f"dpo: the chosen responses' log-probs fell by {fell:.2f} nats while the reward margin "
                          f"grew by {grew:.2f}: both responses are being pushed down. Consider a lower learning "
                          f"rate, a larger beta, or {nll}", stacklevel=2)


def train_dpo(config: DPOConfig):
    """Train config.model_name_or_path with DPO on config.dataset_name; writes the run directory and
    returns the engine's TrainResult."""
    with run_owner(config, kind="dpo", model=config.model_name_or_path) as run:
        strategy = config.reference()
        tokenizer, examples, eval_examples = load_pairs(config)
        pad_id = tokenizer.pad_token_id
        run.start()  # after the data is read: bad data must not leave a "running" run.json
        reference = prepare_reference(config, strategy, examples, eval_examples, pad_id,
                                      bucketed=config.batch_layout == "bucketed")

        torch.manual_seed(config.train.seed)
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                            lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
        padding_free = config.batch_layout == "padding_free"
        bucketed = config.batch_layout == "bucketed"
        watch = LikelihoodWatch(rpo_alpha=config.rpo_alpha)

        def collate(items):
            return collate_dpo(items, pad_id, padding_free)

        def step(model, batch):
            loss, metrics = dpo_loss(model, batch, reference, config, bucketed)
            watch(metrics)
            return loss, metrics

        eval_fn = None
        if eval_examples:
            def eval_fn(model):
                return evaluate_pairs(lambda m, b: dpo_loss(m, b, reference, config, bucketed=True), model,
                                      eval_examples, pad_id, config.train.per_device_eval_batch_size)

        return run.train(model, tokenizer, examples, collate, step, count_fn=count_pairs, eval_fn=eval_fn)
