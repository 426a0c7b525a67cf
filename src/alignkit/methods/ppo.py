"""PPO for RLHF (Ziegler et al. 2019; Ouyang et al. 2022) with the four roles: the policy, a frozen reference,
the reward (any `rewards.sources` spec, usually `rm:PATH`), and a value model.

One update: sample a response to each of the batch's prompts; score them; compute, without gradients, the
behaviour log-probs, the reference's log-probs and the values; per-token rewards are −β·KL_t with the score
added at the last response token; GAE gives advantages (whitened) and returns; then `num_ppo_epochs` passes
over `num_mini_batches` minibatches of the rollout, each an optimizer step on the clipped policy loss plus
vf_coef × the clipped value loss (`alignkit.losses.rl`). β is fixed, or adaptive towards `target_kl`.

Layouts:
- value_model: shared (default): a value head (one linear layer) on the policy's final hidden states, read
  from the same forward pass as the log-probs. With LoRA and `ref: adapter`, policy, reference and value
  share one base model: PPO in the memory of one model (plus the reward model, when it is one).
- value_model: PATH: a separate value model (a `*ForSequenceClassification` checkpoint, e.g. the reward
  model, as TRL initialises it), trained in full.

Checkpoints are written between updates and hold the policy, the value weights, the optimizer, schedule,
KL controller, data position and random state, so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.engine.settings import PeftSettings, TrainSettings, VLLMSettings
from alignkit.errors import AlignkitError

REFERENCES = ("auto", "copy", "adapter")
VALUE_FILE = "value.pt"


@dataclass
class PPOConfig:
    """PPO with a KL penalty to a reference and a value model (RLHF)."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id (usually an SFT model)."""
    ref_model_name_or_path: str | None = None
    """Reference model (default: the policy's starting weights)."""
    dataset_name: str = ""
    """Prompt rows ({"prompt": ...}; extra columns go to the reward functions); several files comma-separated."""
    dataset_train_split: str | None = None
    """Only prompt rows whose "split" column has this value (default: all rows)."""
    reward_funcs: str = "rules"
    """Reward sources separated by spaces: rm:PATH, rules, module:function, file.py:function (docs/rl.md)."""
    reward_weights: str | None = None
    """One weight per reward source, separated by spaces (default: all 1)."""
    missing_eos_penalty: float | None = None
    """Added to the score of responses cut at max_completion_length (e.g. -1.0)."""
    value_model: str = "shared"
    """shared (a value head on the policy's trunk) or the path of a separate value model (e.g. the reward model)."""
    max_completion_length: int = 64
    """Most tokens generated per response."""
    temperature: float = 0.7
    """Sampling temperature (the log-probs use it too)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty (the start value when target_kl is set)."""
    kl_estimator: str = "k1"
    """k1, k2 or k3 estimator of the per-token KL in the reward."""
    target_kl: float | None = None
    """Adapt β so the per-sequence KL tracks this (Ziegler et al. 2019); None: fixed β."""
    kl_horizon: int = 10000
    """Samples over which the adaptive controller moves β by at most 20%."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """λ of GAE."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float = 0.2
    """Clip range of the value update."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    num_ppo_epochs: int = 4
    """Passes over each rollout."""
    num_mini_batches: int = 1
    """Optimizer steps per pass."""
    whiten_rewards: bool = False
    """Scale the token rewards to unit variance before GAE."""
    ref: str = "auto"
    """Reference: copy, adapter (LoRA disabled; needs use_peft), or auto (adapter with LoRA, else copy)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    dtype: str = "auto"
    """Weights dtype: auto, float32, bfloat16, float16."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    peft: PeftSettings = field(default_factory=PeftSettings)
    """LoRA settings (flat keys: use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM rollouts on a GPU (flat keys: use_vllm, vllm_gpu_memory_utilization, vllm_enable_sleep_mode)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=3e-6))
    """Shared training settings; per_device_train_batch_size is prompts per rollout and max_steps counts
    rollouts (each gives num_ppo_epochs × num_mini_batches optimizer steps)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data", "--prompts"),
                   "ref_model_name_or_path": ("--ref_model",), "reward_funcs": ("--reward",),
                   "value_model": ("--value_model_path",)}

    def check(self) -> None:
        from alignkit.losses.rl import KL_ESTIMATORS

        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the prompts (--dataset_name / --prompts FILE)")
        for name, value, allowed in (("ref", self.ref, REFERENCES), ("kl_estimator", self.kl_estimator,
                                                                      KL_ESTIMATORS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.ref == "adapter" and not self.peft.use_peft:
            raise AlignkitError("config: ref: adapter needs a LoRA adapter to disable; add --use_peft true")
        if self.temperature <= 0:
            raise AlignkitError(f"config: temperature: PPO samples; must be > 0, got {self.temperature}")
        if self.train.per_device_train_batch_size % self.num_mini_batches:
            raise AlignkitError(f"config: num_mini_batches: must divide per_device_train_batch_size "
                                f"({self.train.per_device_train_batch_size}), got {self.num_mini_batches}")
        for name in ("num_ppo_epochs", "num_mini_batches"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config: {name}: must be at least 1, got {getattr(self, name)}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise AlignkitError(f"config: target_kl: must be > 0, got {self.target_kl}")
        self.vllm.check()
        self.vllm.check_device(self.device)
        self.train.check()

    def reference(self) -> str:
        if self.ref != "auto":
            return self.ref
        return "adapter" if self.peft.use_peft and not self.ref_model_name_or_path else "copy"


class ValueHead:
    """Per-token values V(s_t): the value of the state before response token t, aligned with the log-probs
    of `ops.logprobs.sequence_logps` (token t at position t)."""

    def __init__(self, config: PPOConfig, policy):
        import torch

        self.shared = config.value_model == "shared"
        self.model = None
        if self.shared:
            hidden = policy.get_output_embeddings().in_features
            device = next(policy.parameters()).device
            self.head = torch.nn.Linear(hidden, 1, device=device)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
        else:
            from alignkit.models.load import load_reward_model
            from alignkit.ops.rewards import reward_parts

            self.model = load_reward_model(config.value_model, device=config.device, dtype=config.dtype,
                                           gradient_checkpointing=config.gradient_checkpointing)
            self.backbone, self.head = reward_parts(self.model)

    def parameters(self):
        return list(self.head.parameters()) if self.shared else list(self.model.parameters())

    def state_dict(self) -> dict:
        return (self.head if self.shared else self.model).state_dict()

    def load_state_dict(self, state: dict) -> None:
        (self.head if self.shared else self.model).load_state_dict(state)

    def values(self, batch: dict, hidden=None):
        """(B, T) values; `hidden` is the policy's final hidden states (shared head)."""
        import torch

        if not self.shared:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            hidden = self.backbone(use_cache=False, **inputs).last_hidden_state
        v = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)  # the state before token t


def train_ppo(config: PPOConfig):
    """Train config.model_name_or_path with PPO on config.dataset_name's prompts; writes the run directory
    (metrics.jsonl, checkpoints, model/, run.json, report) and returns the engine's TrainResult."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from alignkit.engine import checkpoint as ckpt
    from alignkit.engine.loop import DataStream, TrainResult, check_output_dir, make_optimizer
    from alignkit.engine.outputs import save_final_model, start_run, write_report_quietly, write_status
    from alignkit.engine.runlog import MetricsLog, peak_memory_mb
    from alignkit.losses import rl
    from alignkit.rollout.rl import importance_weights
    from alignkit.methods.grpo import _cut_prompt, load_prompts
    from alignkit.models.load import load_policy, load_tokenizer
    from alignkit.ops.logprobs import sequence_logps
    from alignkit.rewards.sources import reward_mix
    from alignkit.rollout.generate import SamplingSettings
    from alignkit.rollout.rl import sample_rollout

    from alignkit.engine.distributed import world_size

    config.check()
    if world_size() > 1:  # PPO has its own loop (rollout, several epochs of mini-batches), not the engine's
        raise AlignkitError("ppo: runs in one process for now; drop --num_processes (or use grpo / rloo, "
                            "which run on N processes)")
    latest = check_output_dir(config.train)
    settings = config.train
    rows = load_prompts(config)
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    rows = [_cut_prompt(row, tokenizer, 512) for row in rows]
    rewards = reward_mix(config.reward_funcs, config.reward_weights, device=config.device,
                         missing_eos_penalty=config.missing_eos_penalty, max_new_tokens=config.max_completion_length)
    start_run("ppo", config)
    out = Path(settings.output_dir)
    strategy = config.reference()
    reference = None
    if strategy == "copy":
        reference = load_policy(config.ref_model_name_or_path or config.model_name_or_path, dtype=config.dtype,
                                device=config.device).eval()
        reference.requires_grad_(False)
    torch.manual_seed(settings.seed)
    policy = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                         lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
    value = ValueHead(config, policy)
    trainable = torch.nn.ModuleList([policy, value.head if value.shared else value.model])
    optimizer = make_optimizer(trainable, settings)
    updates = settings.max_steps if settings.max_steps > 0 else math.ceil(
        settings.num_train_epochs * len(rows) / settings.per_device_train_batch_size)
    per_update = config.num_ppo_epochs * config.num_mini_batches
    warmup = settings.warmup_steps or math.ceil(settings.warmup_ratio * updates * per_update)
    scheduler = get_scheduler(settings.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=updates * per_update)
    controller = (rl.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                  if config.target_kl else rl.FixedKLController(config.kl_coef))
    stream = DataStream(len(rows), settings.seed)
    step, elapsed_before = 0, 0.0
    if latest is not None:
        ckpt.load_model_weights(policy, latest)
        state = ckpt.load_state(latest)
        value.load_state_dict(state["value"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        controller.load_state_dict(state["kl_controller"])
        step, elapsed_before, stream.position = state["step"], state["elapsed"], state["data_position"]
        ckpt.set_rng_state(state["rng"])
    sampling = SamplingSettings(max_new_tokens=config.max_completion_length, temperature=config.temperature,
                                top_p=config.top_p, top_k=config.top_k, batch_size=64)
    sampler = config.vllm.sampler(config.model_name_or_path, config.dtype, settings.seed)  # None: torch
    device = next(policy.parameters()).device
    pad_id = tokenizer.pad_token_id
    log = MetricsLog(out / "metrics.jsonl", truncate_after=step if settings.resume else 0)

    def reference_logps(tensors):
        with torch.no_grad():
            if strategy == "adapter":
                with policy.disable_adapter():
                    return sequence_logps(policy, tensors, temperature=config.temperature).token_logps
            return sequence_logps(reference, tensors, temperature=config.temperature).token_logps

    def forward(tensors):
        logps = sequence_logps(policy, tensors, temperature=config.temperature, return_hidden=value.shared)
        return logps, value.values(tensors, logps.hidden)

    def save(at_step: int):
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "kl_controller": controller.state_dict(), "value": value.state_dict(),
                 "elapsed": elapsed_before + time.perf_counter() - started, "data_position": stream.position}
        return ckpt.save_checkpoint(out, at_step, policy, state, keep_last=settings.save_total_limit or None)

    started = time.perf_counter()
    last: dict = {}
    bar = tqdm(total=updates, initial=step, desc="ppo", unit="update", disable=not settings.progress or None)
    policy.train()
    try:
        while step < updates:
            t0 = time.perf_counter()
            batch_rows = [rows[i] for i in stream.take(settings.per_device_train_batch_size)]
            if sampler is not None:
                sampler.sync(policy)  # the weights of the previous rollout's updates
            rollout = sample_rollout(policy, tokenizer, batch_rows, sampling, group_size=1, sampler=sampler)
            lengths = [len(c) for c in rollout.completion_ids]
            scores, parts = rewards(rollout.prompts, rollout.completions, rollout.finish_reasons, lengths, rollout.rows)
            tensors = {k: v.to(device) for k, v in rollout.batch(pad_id).items()}
            with torch.no_grad():
                old, old_values = forward(tensors)
            mask = old.mask
            old_logps = old.token_logps
            kl = rl.kl_penalty(old_logps, reference_logps(tensors), config.kl_estimator) * mask
            score = torch.tensor(scores, dtype=torch.float32, device=device)
            token_rewards = rl.token_level_rewards(score, kl, mask, controller.value)
            if config.whiten_rewards:
                token_rewards = rl.whiten(token_rewards, mask, shift_mean=False)
            advantages, returns = rl.gae(token_rewards, old_values, mask, config.gamma, config.lam)
            advantages = rl.whiten(advantages, mask)
            cap = config.vllm.vllm_importance_sampling_cap
            is_weights, is_stats = importance_weights(sampler, rollout, old_logps, mask, cap)
            stats: dict[str, list[float]] = {}
            size = len(rollout) // config.num_mini_batches
            for _ in range(config.num_ppo_epochs):
                order = torch.randperm(len(rollout))
                for start in range(0, len(rollout), size):
                    rows_mb = order[start:start + size].to(device)
                    sub = {k: v[rows_mb] for k, v in tensors.items()}
                    logps, values = forward(sub)
                    sub_mask = mask[rows_mb]
                    policy_out = rl.clipped_policy_loss(logps.token_logps, old_logps[rows_mb], advantages[rows_mb],
                                                        sub_mask, config.cliprange)
                    value_losses, value_clipped = rl.clipped_value_loss(values, old_values[rows_mb], returns[rows_mb],
                                                                        sub_mask, config.cliprange_value)
                    policy_loss = rl.masked_mean(policy_out.losses * is_weights[rows_mb], sub_mask)
                    value_loss = rl.masked_mean(value_losses, sub_mask)
                    loss = policy_loss + config.vf_coef * value_loss
                    if not torch.isfinite(loss):
                        raise AlignkitError(f"ppo: update {step + 1}: non-finite loss; lower the learning rate or "
                                            "check the reward")
                    loss.backward()
                    params = [p for p in trainable.parameters() if p.requires_grad]
                    if settings.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    for name, v in (("policy/approxkl_avg", rl.masked_mean(policy_out.approx_kl, sub_mask)),
                                    ("policy/clipfrac_avg", rl.masked_mean(policy_out.clipped.float(), sub_mask)),
                                    ("loss/policy_avg", policy_loss), ("loss/value_avg", value_loss),
                                    ("val/clipfrac_avg", rl.masked_mean(value_clipped.float(), sub_mask)),
                                    ("val/ratio", rl.masked_mean(policy_out.ratio, sub_mask))):
                        stats.setdefault(name, []).append(float(v.detach()))
            step += 1
            kl_sum = kl.sum(1)
            controller.update(kl_sum.mean().item(), len(rollout))
            step_time = time.perf_counter() - t0
            last = {
                "objective/kl": kl_sum.mean().item(),
                "objective/entropy": (-old_logps * mask).sum(1).mean().item(),  # Monte-Carlo: E[−log π(y)]
                "objective/non_score_reward": (-controller.value * kl_sum).mean().item(),
                "objective/rlhf_reward": (score - controller.value * kl_sum).mean().item(),
                "objective/scores": score.mean().item(),
                **{k: sum(v) / len(v) for k, v in stats.items()},
                "val/mean": rl.masked_mean(old_values, mask).item(),
                "completions/mean_length": sum(lengths) / len(lengths),
                "completions/clipped_ratio": sum(f == "length" for f in rollout.finish_reasons) / len(lengths),
                "kl_coef": controller.value, "lr": scheduler.get_last_lr()[0], "step_time": step_time,
                "tokens_per_s": int(tensors["attention_mask"].sum()) * (1 + per_update) / step_time,
                "peak_memory_mb": peak_memory_mb(),
                **{f"rewards/{name}/mean": sum(v) / len(v) for name, v in parts.items()},
                **is_stats,
            }
            bar.update(1)
            if step % settings.logging_steps == 0 or step == updates:
                log.write({"step": step, **last})
                bar.set_postfix(score=f"{last['objective/scores']:.3f}", kl=f"{last['objective/kl']:.3f}")
            if settings.save_steps and step % settings.save_steps == 0 and step < updates:
                save(step)
        save(step)
    except BaseException as e:
        status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        write_status(out, status, "ppo", model=config.model_name_or_path, error=str(e) or type(e).__name__)
        write_report_quietly(out)
        raise
    finally:
        bar.close()
        log.close()
    seconds = elapsed_before + time.perf_counter() - started
    save_final_model(policy, tokenizer, out / "model")
    torch.save(value.state_dict(), out / "model" / VALUE_FILE)
    write_status(out, "complete", "ppo", model=config.model_name_or_path, steps=step, seconds=round(seconds, 2),
                 final=last)
    write_report_quietly(out)
    return TrainResult(out, step, 0, seconds, last, {})
