"""PPO for RLHF (Ziegler et al. 2019; Ouyang et al. 2022) with the four roles: the policy, a frozen reference,
the reward (any `rewards.sources` spec, usually `rm:PATH`), and a value model, on the shared engine
(`engine.loop.train` with the `engine.phases.Rollouts` hook: each engine step is one rollout).

One update: sample a response to each of the rollout's prompts; score them; compute, without gradients, the
behaviour log-probs, the reference's log-probs and the values; per-token rewards are −β·KL_t with the score
added at the last response token; GAE gives advantages (whitened over the whole rollout) and returns; then
`num_ppo_epochs` passes over `num_mini_batches` minibatches of the rollout, each an optimizer step on the
clipped policy loss plus vf_coef × the clipped value loss (`alignkit.losses.rl`), both token means over the
minibatch. β is fixed, or adaptive towards `target_kl`. The engine adds the non-finite guard, accumulation,
evaluation, trackers, checkpoints with exact resume and N processes (DDP), as for every method.

Batches and processes: a rollout holds per_device_train_batch_size × gradient_accumulation_steps ×
processes prompts, sampled and trained in micro-batches of per_device_train_batch_size prompts (the memory
bound). Each micro-batch samples with its own seed (`engine.phases.sample_seed`: the run's seed, the update,
the micro-batch's place in the rollout) and is cut into num_mini_batches pieces, reshuffled each epoch from
that seed; optimizer step k accumulates piece k of every micro-batch on every process. So N processes sample
and update exactly as one process with N × the accumulation steps (deviation from TRL, whose minibatches
are drawn from the whole rollout: here from each micro-batch alike, the same thing with one micro-batch).

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

from dataclasses import dataclass, field

import torch

from alignkit.data.readers import load_prompt_rows, load_prompts
from alignkit.data.tokenize import cut_prompt
from alignkit.engine.checkpoint import unwrap
from alignkit.engine.distributed import is_main_process
from alignkit.engine.outputs import save_final_model
from alignkit.engine.phases import Rollouts
from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.rollout.settings import VLLMSettings
from alignkit.errors import AlignkitError
from alignkit.losses import rl
from alignkit.models.load import load_policy, load_reward_model, load_tokenizer
from alignkit.ops.logprobs import sequence_logps
from alignkit.ops.rewards import reward_parts
from alignkit.rewards.sources import reward_mix
from alignkit.rollout.generate import SamplingSettings
from alignkit.rollout.rl import importance_weights, sample_rollout

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
    eval_dataset_name: str | None = None
    """Held-out prompts: at eval_steps and at the end, one response each (the run's seed) is scored:
    eval/objective/scores, eval/completions/mean_length."""
    reward_funcs: str = "rules"
    """Reward sources separated by spaces: rm:PATH, rules, llm:MODEL, openai:URL#MODEL, module:function,
    file.py:function (docs/rl.md); several run concurrently."""
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
    entropy_coef: float = 0.0
    """Entropy bonus c: minus c × the policy's token-mean entropy is added to the loss (`entropy` is logged)."""
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
    """Shared training settings; per_device_train_batch_size is prompts per rollout micro-batch (a rollout holds
    × gradient_accumulation_steps × processes of them) and max_steps counts rollouts (each gives num_ppo_epochs ×
    num_mini_batches optimizer steps)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data", "--prompts"),
                   "ref_model_name_or_path": ("--ref_model",), "reward_funcs": ("--reward",),
                   "value_model": ("--value_model_path",),
                   "eval_dataset_name": ("--eval_data", "--eval_prompts")}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the prompts (--dataset_name / --prompts FILE)")
        if self.entropy_coef < 0:
            raise AlignkitError(f"config: entropy_coef: must be >= 0 (a bonus), got {self.entropy_coef}")
        for name, value, allowed in (("ref", self.ref, REFERENCES), ("kl_estimator", self.kl_estimator,
                                                                      rl.KL_ESTIMATORS)):
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
        self.shared = config.value_model == "shared"
        self.model = None
        if self.shared:
            hidden = policy.get_output_embeddings().in_features
            device = next(policy.parameters()).device
            self.head = torch.nn.Linear(hidden, 1, device=device)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)
        else:
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
        if not self.shared:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            hidden = self.backbone(use_cache=False, **inputs).last_hidden_state
        v = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)  # the state before token t


class PolicyWithValue(torch.nn.Module):
    """What the engine trains (and DDP wraps): the policy and the value weights. One forward gives the response
    tokens' log-probs, their mask and the values (with a shared head, from the same pass)."""

    def __init__(self, policy, value: ValueHead, temperature: float):
        super().__init__()
        self.policy = policy
        self.value = value.head if value.shared else value.model  # registers the value weights
        self.critic = value
        self.temperature = temperature

    def forward(self, batch: dict, entropy: bool = False):
        """(token log-probs, mask, values), and the policy's per-token entropy when asked for."""
        logps = sequence_logps(self.policy, batch, temperature=self.temperature, return_hidden=self.critic.shared,
                               entropy=entropy)
        out = (logps.token_logps, logps.mask, self.critic.values(batch, logps.hidden))
        return (*out, logps.entropy) if entropy else out


@dataclass
class Experience:
    """One rollout as this process holds it: each micro-batch's tensors (rows first) with the generator of
    its minibatch order, and sums over the whole rollout (every process) for the metrics."""

    chunks: list[dict]
    orders: list[torch.Generator]
    totals: dict[str, float]
    num_tokens: int


TRAIN_KEYS = ("input_ids", "attention_mask", "completion_mask", "mask", "old_logps", "old_values", "advantages",
              "returns", "is_weights")


class PPOStep:
    """The rollout phase, the minibatch loss and the rollout's metrics, for `engine.phases.Rollouts`."""

    def __init__(self, config: PPOConfig, tokenizer, rewards, value: ValueHead, reference=None, sampler=None):
        self.config, self.tokenizer, self.rewards, self.value = config, tokenizer, rewards, value
        self.reference, self.sampler = reference, sampler  # sampler None: the torch sampler on the policy
        self.strategy = config.reference()
        self.controller = (rl.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                           if config.target_kl else rl.FixedKLController(config.kl_coef))
        self.sampling = SamplingSettings(max_new_tokens=config.max_completion_length, temperature=config.temperature,
                                         top_p=config.top_p, top_k=config.top_k, batch_size=64)

    def state_dict(self) -> dict:
        return {"value": self.value.state_dict(), "kl_controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value.load_state_dict(state["value"])
        self.controller.load_state_dict(state["kl_controller"])

    def sample(self, policy, rows: list[dict], seed: int):
        """(rollout, lengths, scores, reward parts): one response to each row, drawn from `seed` (the global
        random state is left as it was), and its reward."""
        device = next(policy.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            rollout = sample_rollout(policy, self.tokenizer, rows, self.sampling, group_size=1, sampler=self.sampler)
        lengths = [len(c) for c in rollout.completion_ids]
        scores, parts = self.rewards(rollout.prompts, rollout.completions, rollout.finish_reasons, lengths,
                                     rollout.rows)
        return rollout, lengths, scores, parts

    def reference_logps(self, policy, tensors):
        if self.strategy == "adapter":
            with policy.disable_adapter():
                return sequence_logps(policy, tensors, temperature=self.config.temperature).token_logps
        return sequence_logps(self.reference, tensors, temperature=self.config.temperature).token_logps

    def chunk(self, model: PolicyWithValue, batch: dict) -> tuple[dict, dict]:
        """One micro-batch of prompts: responses, scores and, without gradients, the behaviour log-probs, the
        values and the per-token KL to the reference; (row tensors, sums for the metrics)."""
        rollout, lengths, scores, parts = self.sample(model.policy, batch["rows"], batch["sample_seed"])
        device = next(model.policy.parameters()).device
        tensors = {k: v.to(device) for k, v in rollout.batch(self.tokenizer.pad_token_id).items()}
        with torch.no_grad():
            old_logps, mask, old_values = model(tensors)
            kl = rl.kl_penalty(old_logps, self.reference_logps(model.policy, tensors), self.config.kl_estimator) * mask
        is_weights, is_stats = importance_weights(self.sampler, rollout, old_logps, mask,
                                                  self.config.vllm.vllm_importance_sampling_cap)
        score = torch.tensor(scores, dtype=torch.float32, device=device)
        sums = {"rows": len(rollout), "kl": kl.sum(), "entropy": (-old_logps * mask).sum(),  # entropy: E[−log π(y)]
                "score": score.sum(), "values": (old_values * mask).sum(), "value_tokens": mask.sum(),
                "length": sum(lengths), "clipped": sum(f == "length" for f in rollout.finish_reasons),
                "tokens": tensors["attention_mask"].sum(),
                **{f"rewards/{name}/mean": sum(v) for name, v in parts.items()},
                **{name: v * len(rollout) for name, v in is_stats.items()}}
        return {**tensors, "mask": mask, "old_logps": old_logps, "old_values": old_values, "kl": kl,
                "score": score, "is_weights": is_weights}, sums

    def collect(self, model: PolicyWithValue, batches: list[dict], sum_across) -> Experience:
        """The rollout phase: each micro-batch sampled and scored, then rewards, GAE and whitened advantages
        with the statistics of the whole rollout (`sum_across` adds up every process's part)."""
        config = self.config
        if self.sampler is not None:
            self.sampler.sync(model.policy)  # the weights of the previous rollout's updates
        chunks, sums = zip(*(self.chunk(model, batch) for batch in batches))
        masks = [c["mask"] for c in chunks]
        rewards = [rl.token_level_rewards(c["score"], c["kl"], c["mask"], self.controller.value) for c in chunks]
        if config.whiten_rewards:
            rewards = whiten_across(rewards, masks, sum_across, shift_mean=False)
        for chunk, token_rewards in zip(chunks, rewards):
            chunk["advantages"], chunk["returns"] = rl.gae(token_rewards, chunk["old_values"], chunk["mask"],
                                                           config.gamma, config.lam)
        for chunk, advantages in zip(chunks, whiten_across([c["advantages"] for c in chunks], masks, sum_across)):
            chunk["advantages"] = advantages
        names = sorted(sums[0])  # the same names on every process
        local = torch.tensor([[float(s[k]) for k in names] for s in sums], dtype=torch.float64,
                             device=masks[0].device).sum(0)
        totals = dict(zip(names, sum_across(local).tolist()))
        orders = [torch.Generator().manual_seed(batch["sample_seed"]) for batch in batches]
        return Experience(list(chunks), orders, totals, int(totals["tokens"]))

    def minibatches(self, experience: Experience, epoch: int) -> list[list[dict]]:
        """The epoch's num_mini_batches optimizer steps: step k takes piece k of every micro-batch, each
        reshuffled from its own seed (epochs draw in turn from the same generator)."""
        steps: list[list[dict]] = [[] for _ in range(self.config.num_mini_batches)]
        for chunk, generator in zip(experience.chunks, experience.orders):
            rows = len(chunk["score"])
            order = torch.randperm(rows, generator=generator).to(chunk["mask"].device)
            size = rows // self.config.num_mini_batches
            for k in range(self.config.num_mini_batches):
                piece = order[k * size:(k + 1) * size]
                steps[k].append({key: chunk[key][piece] for key in TRAIN_KEYS})
        return steps

    def loss(self, model, batch: dict):
        """The engine's step_fn: the clipped policy loss + vf_coef × the clipped value loss on one piece of a
        minibatch, as a sum over its response tokens (the engine divides by the minibatch's token count)."""
        config = self.config
        logps, mask, values, entropy = model(batch, entropy=True)
        policy_out = rl.clipped_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, config.cliprange)
        value_losses, value_clipped = rl.clipped_value_loss(values, batch["old_values"], batch["returns"], mask,
                                                            config.cliprange_value)
        policy_loss = rl.masked_mean(policy_out.losses * batch["is_weights"], mask)
        value_loss = rl.masked_mean(value_losses, mask)
        metrics = {"policy/approxkl_avg": rl.masked_mean(policy_out.approx_kl, mask),
                   "policy/clipfrac_avg": rl.masked_mean(policy_out.clipped.float(), mask),
                   "loss/policy_avg": policy_loss, "loss/value_avg": value_loss,
                   "val/clipfrac_avg": rl.masked_mean(value_clipped.float(), mask),
                   "val/ratio": rl.masked_mean(policy_out.ratio, mask),
                   "entropy": rl.masked_mean(entropy.detach(), mask)}
        loss = policy_loss + config.vf_coef * value_loss
        if config.entropy_coef:
            loss = loss + rl.entropy_bonus(entropy, mask, config.entropy_coef)
        return loss * mask.sum(), {k: float(v.detach()) for k, v in metrics.items()}

    def finish(self, experience: Experience) -> dict[str, float]:
        """The rollout's metrics (TRL's names), after the KL controller has seen the rollout's KL."""
        t = experience.totals
        rows = t["rows"]
        kl = t["kl"] / rows  # per sequence
        self.controller.update(kl, int(rows))
        beta = self.controller.value
        return {"objective/kl": kl, "objective/entropy": t["entropy"] / rows,
                "objective/non_score_reward": -beta * kl, "objective/rlhf_reward": (t["score"] - beta * t["kl"]) / rows,
                "objective/scores": t["score"] / rows, "val/mean": t["values"] / max(t["value_tokens"], 1.0),
                "completions/mean_length": t["length"] / rows, "completions/clipped_ratio": t["clipped"] / rows,
                "kl_coef": beta, **{k: v / rows for k, v in t.items() if k.startswith(("rewards/", "vllm/"))}}

    def evaluate(self, model, rows: list[dict]) -> dict[str, float]:
        """Held-out prompts: one response each, drawn from the run's seed, scored by the training rewards."""
        policy = unwrap(model).policy
        if self.sampler is not None:
            self.sampler.sync(policy)
        _, lengths, scores, parts = self.sample(policy, rows, self.config.train.seed)
        return {"eval/objective/scores": sum(scores) / len(scores),
                "eval/completions/mean_length": sum(lengths) / len(lengths),
                **{f"eval/rewards/{name}/mean": sum(v) / len(v) for name, v in parts.items()}}


def whiten_across(xs: list, masks: list, sum_across, shift_mean: bool = True, eps: float = 1e-8) -> list:
    """`losses.rl.whiten` of several (B, T) tensors together, with the mean and unbiased variance of their
    masked entries on every process (the whole rollout's statistics)."""
    masks = [m.to(xs[0].dtype) for m in masks]
    n = sum_across(sum(m.sum() for m in masks))
    mean = sum_across(sum((x * m).sum() for x, m in zip(xs, masks))) / n.clamp(min=1)
    var = sum_across(sum(((x - mean).square() * m).sum() for x, m in zip(xs, masks))) / n.clamp(min=1)
    if n > 1:
        var = var * n / (n - 1)
    out = [(x - mean) * torch.rsqrt(var + eps) for x in xs]
    return [(o if shift_mean else o + mean) * m for o, m in zip(out, masks)]


def train_ppo(config: PPOConfig):
    """Train config.model_name_or_path with PPO on config.dataset_name's prompts; writes the run directory
    (metrics.jsonl, checkpoints, model/ with value.pt, run.json, report) and returns the engine's TrainResult."""
    with run_owner(config, kind="ppo", model=config.model_name_or_path) as run:
        return _train_ppo(config, run)


def _train_ppo(config: PPOConfig, run):
    """train_ppo inside its run owner: read the prompts, start the run, load the models, train."""
    settings = config.train
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    rows = [cut_prompt(row, tokenizer, 512) for row in load_prompts(config)]
    held_out = load_prompt_rows(config.eval_dataset_name) if config.eval_dataset_name else []
    eval_rows = [cut_prompt(row, tokenizer, 512) for row in held_out]
    if config.eval_dataset_name and not eval_rows:
        raise AlignkitError(f"{config.eval_dataset_name}: no prompts")
    rewards = reward_mix(config.reward_funcs, config.reward_weights, device=config.device,
                         missing_eos_penalty=config.missing_eos_penalty, max_new_tokens=config.max_completion_length)
    out = run.start()
    reference = None
    if config.reference() == "copy":
        reference = load_policy(config.ref_model_name_or_path or config.model_name_or_path, dtype=config.dtype,
                                device=config.device).eval()
        reference.requires_grad_(False)
    torch.manual_seed(settings.seed)
    policy = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                         lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
    value = ValueHead(config, policy)
    sampler = config.vllm.sampler(config.model_name_or_path, config.dtype, settings.seed)  # None: torch
    ppo = PPOStep(config, tokenizer, rewards, value, reference, sampler)
    hook = Rollouts(ppo.collect, ppo.minibatches, ppo.finish, epochs=config.num_ppo_epochs,
                    minibatches_per_epoch=config.num_mini_batches, policy=policy, state_dict=ppo.state_dict,
                    load_state_dict=ppo.load_state_dict)
    def save(result) -> None:  # the policy and its value head
        save_final_model(policy, tokenizer, out / "model")
        if is_main_process():
            torch.save(value.state_dict(), out / "model" / VALUE_FILE)

    return run.train(PolicyWithValue(policy, value, config.temperature), tokenizer, rows,
                     lambda items: {"rows": items}, ppo.loss, count_fn=lambda batch: int(batch["mask"].sum()),
                     eval_fn=(lambda model: ppo.evaluate(model, eval_rows)) if eval_rows else None,
                     rollouts=hook, save=save)
