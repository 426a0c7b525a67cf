"""Reference-free preference optimisation: SimPO (Meng et al. 2024), CPO (Xu et al. 2024) and ORPO
(Hong et al. 2024). No reference model at all: half the memory of DPO's frozen copy, no precompute pass.

- simpo: −log σ(β(π̄_c − π̄_r) − γ), π̄ the per-token mean log-prob (length-normalised reward);
- cpo:   −log σ(β(π_c − π_r)) + λ·NLL(chosen), summed log-probs;
- orpo:  NLL(chosen) − λ·log σ(log odds(π̄_c) − log odds(π̄_r)), odds = p / (1 − p) of the mean token prob.
The losses are `alignkit.losses.preference.simpo / cpo / orpo`; batching and evaluation are `methods.pairs`
(shared with DPO), the log-prob sums `ops.sequence`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.losses import preference
from alignkit.methods.pairs import LAYOUTS, collate_dpo, count_pairs, evaluate_pairs, load_pairs, logit_metrics
from alignkit.models.load import load_policy
from alignkit.ops.sequence import sequence_sums

LOSS_TYPES = ("simpo", "cpo", "orpo")


@dataclass
class SimPOConfig:
    """Reference-free preference optimisation (SimPO, CPO, ORPO)."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id."""
    dataset_name: str = ""
    """Preference data (prompt, chosen, rejected)."""
    eval_dataset_name: str | None = None
    """Held-out preference data (default: the training file's dataset_test_split rows, if any)."""
    dataset_train_split: str = "train"
    """Split to train on (a saved DatasetDict's split, or the value of a "split" column)."""
    dataset_test_split: str = "test"
    """Split to evaluate on."""
    loss_type: str = "simpo"
    """simpo, cpo or orpo."""
    beta: float | None = None
    """β: scale of the reward; default 2.0 for SimPO (mean log-probs), 0.1 for CPO (summed). ORPO uses lambda_."""
    gamma: float = 0.5
    """SimPO's target reward margin γ."""
    lambda_: float = 0.1
    """ORPO: weight of the odds-ratio term; CPO: weight of the chosen responses' NLL."""
    label_smoothing: float = 0.0
    """ε: assumed share of flipped labels (SimPO, CPO)."""
    max_length: int = 1024
    """Longest prompt + response in tokens; the prompt is cut from the left first."""
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
                   "eval_dataset_name": ("--eval_data",), "lambda_": ("--lambda", "--orpo_alpha", "--cpo_alpha")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the preference data (--dataset_name / --data FILE)")
        for name, value, allowed in (("loss_type", self.loss_type, LOSS_TYPES),
                                     ("batch_layout", self.batch_layout, LAYOUTS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.beta is not None and self.beta <= 0:
            raise AlignkitError(f"config: beta: must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise AlignkitError(f"config: label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        self.train.check()


def simpo_loss(model, batch: dict, config: SimPOConfig, bucketed: bool = False):
    """(summed loss over the batch's pairs, metrics with TRL's names)."""
    sums, counts, logits = sequence_sums(model, batch, bucketed, mean_logits=True)
    policy_c, policy_r = sums.chunk(2)
    count_c, count_r = counts.chunk(2)
    mean_c, mean_r = policy_c / count_c.clamp(min=1), policy_r / count_r.clamp(min=1)
    metrics = {}
    nll = preference.nll_term(policy_c, count_c)
    if config.loss_type == "simpo":
        beta = 2.0 if config.beta is None else config.beta
        out = preference.simpo(mean_c, mean_r, beta, config.gamma, config.label_smoothing)
        losses = out.losses
    elif config.loss_type == "cpo":
        beta = 0.1 if config.beta is None else config.beta
        out = preference.cpo(policy_c, policy_r, beta, config.label_smoothing)
        losses = out.losses + config.lambda_ * nll
    else:
        out, ratio = preference.orpo(mean_c, mean_r, config.lambda_)
        losses = nll + out.losses
        metrics["log_odds_ratio"] = torch.nn.functional.logsigmoid(ratio).mean().item()  # TRL's names
        metrics["log_odds_chosen"] = ratio.mean().item()
    margins = out.chosen_rewards - out.rejected_rewards
    metrics.update({
        "nll_loss": nll.detach().mean().item(),
        "rewards/chosen": out.chosen_rewards.mean().item(),
        "rewards/rejected": out.rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "logps/chosen": policy_c.detach().mean().item(),
        "logps/rejected": policy_r.detach().mean().item(),
        **logit_metrics(logits, counts),
    })
    return losses.sum(), metrics


def train_simpo(config: SimPOConfig):
    """Train config.model_name_or_path with SimPO, CPO or ORPO; writes the run directory and returns the
    engine's TrainResult."""
    with run_owner(config, kind=config.loss_type, model=config.model_name_or_path) as run:
        tokenizer, examples, eval_examples = load_pairs(config)
        pad_id = tokenizer.pad_token_id
        run.start()
        torch.manual_seed(config.train.seed)
        model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                            lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
        padding_free, bucketed = config.batch_layout == "padding_free", config.batch_layout == "bucketed"

        def collate(items):
            return collate_dpo(items, pad_id, padding_free)

        def step(model, batch):
            return simpo_loss(model, batch, config, bucketed)

        eval_fn = None
        if eval_examples:
            def eval_fn(model):
                return evaluate_pairs(lambda m, b: simpo_loss(m, b, config, bucketed=True), model, eval_examples,
                                      pad_id, config.train.per_device_eval_batch_size)

        return run.train(model, tokenizer, examples, collate, step, count_fn=count_pairs, eval_fn=eval_fn)
