"""Group-relative online RL: GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al.
2024) and REINFORCE++ (Hu 2025), on the shared engine.

Each step takes a batch of prompts, samples `num_generations` responses to each from the current policy
(`rollout.rl.sample_rollout`), scores them with the reward sources (`rewards.sources`), turns the scores
into advantages, and takes one gradient step on the clipped objective:

- advantage grpo: (r − mean of the prompt's group) / (its std + 1e-4), or without the std when
  scale_rewards is false (Dr. GRPO); rloo: r − mean of the other G − 1; reinforce_pp: the whitened
  return-to-go of the KL-penalised token rewards (`losses.rl`).
- per-token loss: −min(ρÂ, clip(ρ, 1 − ε, 1 + ε_high)Â), plus β·KL(π‖π_ref) (k3 by default) when beta > 0
  (for reinforce_pp the KL is in the reward instead); aggregated per `loss_type`: dapo (token-mean),
  grpo (sequence-mean), dr_grpo (each sequence's sum over max_completion_length).
- One update per rollout (μ = 1): the behaviour log-probs are the policy's own, detached, so ρ = 1 and the
  gradient is the policy gradient. They are computed by the same forward pass, with the sampling
  temperature, that the loss uses.
- importance_sampling_level sequence (GSPO, Zheng et al. 2025): ρ is one length-normalised ratio per
  response, clipped as a whole. entropy_coef: minus c × the token-mean entropy (always logged as `entropy`).
- dynamic_sampling (DAPO, Yu et al. 2025): groups whose rewards are all equal are dropped and replaced by
  groups of new prompts drawn from the data (global random state) for up to max_sampling_rounds rounds.
  Deviation: a micro-batch still short after them trains on the groups it has, weighted as a full one; with
  none at all it contributes no gradient (DAPO keeps sampling without a bound).
- async_generation (`rollout.async_rollout`): a generator process samples the next micro-batches while this
  one trains, at most max_staleness updates behind; stale samples are corrected by truncated importance
  weights against the generator's log-probs. Its sampling is seeded per job, not from the global state, and
  which weight version a job gets depends on timing, so an async run resumes its weights, optimizer and data
  position exactly but not its samples. Call train_grpo from a script under `if __name__ == "__main__":`
  (the generator process is spawned and imports the main module).

`per_device_train_batch_size` counts completions, as in TRL: it must be a multiple of num_generations, and
each micro-batch holds per_device_train_batch_size / num_generations prompts. Sampling draws from the global
random state, which checkpoints save, so a resumed run samples exactly what the uninterrupted one did.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from alignkit.data.collate import pad
from alignkit.data.readers import load_prompts
from alignkit.data.tokenize import cut_prompt
from alignkit.engine.run import run_owner
from alignkit.engine.settings import PeftSettings, TrainSettings
from alignkit.errors import AlignkitError
from alignkit.losses import rl
from alignkit.losses.rl import ADVANTAGES, KL_ESTIMATORS
from alignkit.models.load import load_policy, load_tokenizer
from alignkit.ops.prefix import group_logps
from alignkit.rewards.sources import reward_mix
from alignkit.rollout.async_rollout import start_async_rollouts
from alignkit.rollout.episodes import episodes_rollout, model_sampler, run_episodes
from alignkit.rollout.generate import SamplingSettings, stop_ids
from alignkit.rollout.rl import Rollout, importance_weights, sample_rollout
from alignkit.rollout.settings import AsyncSettings, EnvSettings, VLLMSettings

LOSS_TYPES = {"dapo": "token-mean", "grpo": "sequence-mean", "dr_grpo": "constant-length"}
REFERENCES = ("auto", "copy", "adapter", "none")


@dataclass
class GRPOConfig:
    """Online RL with group-relative advantages (GRPO, Dr. GRPO, RLOO, REINFORCE++)."""

    model_name_or_path: str = "embedded:smollm2-135m-instruct"
    """Policy to train: embedded:NAME, a local checkpoint or a hub id (usually an SFT model)."""
    ref_model_name_or_path: str | None = None
    """Reference model for the KL term (default: the policy's starting weights)."""
    dataset_name: str = ""
    """Prompt rows ({"prompt": ...}; extra columns go to the reward functions); several files comma-separated."""
    dataset_train_split: str | None = None
    """Only prompt rows whose "split" column has this value (default: all rows)."""
    reward_funcs: str | None = None
    """Reward sources separated by spaces: rm:PATH, rules, llm:MODEL, openai:URL#MODEL, module:function,
    file.py:function, contains:TEXT, max_words:N (docs/rl.md); several run concurrently. Default: rules, or
    with an environment none (its own rewards)."""
    reward_weights: str | None = None
    """One weight per reward source, separated by spaces (default: all 1)."""
    num_generations: int = 8
    """Responses sampled per prompt (the group size G)."""
    max_completion_length: int = 256
    """Most tokens generated per response."""
    max_prompt_length: int | None = 512
    """Prompts longer than this are cut from the left."""
    temperature: float = 1.0
    """Sampling temperature (the log-probs of the loss use it too)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Sample from the k most likely tokens (0: all)."""
    advantage: str = "grpo"
    """grpo (group-normalised), rloo (leave-one-out baseline) or reinforce_pp (REINFORCE++)."""
    scale_rewards: bool = True
    """grpo: divide by the group's std (false: Dr. GRPO)."""
    loss_type: str = "dapo"
    """How token losses become one number: dapo (token-mean), grpo (sequence-mean), dr_grpo (sum / max length)."""
    beta: float = 0.0
    """KL coefficient β (0: no reference model at all)."""
    kl_estimator: str = "k3"
    """k1, k2 or k3 (Schulman's estimators; k3 is unbiased and never negative)."""
    epsilon: float = 0.2
    """Clip range ε of the ratio."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO's clip-higher; default: epsilon)."""
    importance_sampling_level: str = "token"
    """token: one ratio π/π_old per token (GRPO); sequence: one length-normalised ratio per response, clipped
    as a whole (GSPO, Zheng et al. 2025; pair it with loss_type grpo as the paper does)."""
    entropy_coef: float = 0.0
    """Entropy bonus c: the loss becomes L − c·(token-mean entropy of the policy); entropy is logged always."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop the groups whose rewards are all equal (zero advantage, nothing to learn)
    and sample new prompts until the batch is full again or max_sampling_rounds is reached."""
    max_sampling_rounds: int = 3
    """With dynamic_sampling: most sampling rounds per micro-batch (the first included); a batch still short
    after them trains on the groups it has (none: the step changes nothing)."""
    missing_eos_penalty: float | None = None
    """Added to the reward of responses cut at max_completion_length (e.g. -1.0)."""
    ref: str = "auto"
    """Reference for the KL term: copy, adapter (LoRA disabled), none, or auto (adapter with LoRA, else copy;
    none when beta is 0 and the advantage needs no KL)."""
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
    env: EnvSettings = field(default_factory=EnvSettings)
    """Multi-turn episodes in an environment (flat keys: environment, max_turns, max_episode_tokens)."""
    asynchronous: AsyncSettings = field(default_factory=AsyncSettings)
    """Asynchronous generation (flat keys: async_generation, max_staleness, async_generation_threads,
    async_importance_sampling_cap)."""
    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-6))
    """Shared training settings (flat keys: learning_rate, max_steps, ...)."""

    CLI_ALIASES = {"model_name_or_path": ("--model",), "dataset_name": ("--data", "--prompts"),
                   "ref_model_name_or_path": ("--ref_model",), "reward_funcs": ("--reward",),
                   "num_generations": ("--n",)}

    def check(self) -> None:
        if not self.dataset_name:
            raise AlignkitError("config: dataset_name: give the prompts (--dataset_name / --prompts FILE)")
        for name, value, allowed in (("advantage", self.advantage, ADVANTAGES), ("loss_type", self.loss_type,
                                     tuple(LOSS_TYPES)), ("ref", self.ref, REFERENCES),
                                     ("kl_estimator", self.kl_estimator, KL_ESTIMATORS)):
            if value not in allowed:
                raise AlignkitError(f"config: {name}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.num_generations < 2:
            raise AlignkitError(f"config: num_generations: a group needs at least 2 responses, got "
                                f"{self.num_generations}")
        if self.train.per_device_train_batch_size % self.num_generations:
            raise AlignkitError(f"config: per_device_train_batch_size: counts completions and must be a multiple "
                                f"of num_generations ({self.num_generations}), got "
                                f"{self.train.per_device_train_batch_size}")
        if self.beta < 0:
            raise AlignkitError(f"config: beta: must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            raise AlignkitError(f"config: temperature: online RL samples; must be > 0, got {self.temperature}")
        if self.ref == "adapter" and not self.peft.use_peft:
            raise AlignkitError("config: ref: adapter needs a LoRA adapter to disable; add --use_peft true")
        if self.reference() == "none" and (self.beta > 0 or self.advantage == "reinforce_pp"):
            raise AlignkitError("config: ref: none leaves no reference for the KL term; set beta 0 or pick a reference")
        if self.importance_sampling_level not in rl.IMPORTANCE_LEVELS:
            raise AlignkitError(f"config: importance_sampling_level: must be one of "
                                f"{', '.join(rl.IMPORTANCE_LEVELS)}, got {self.importance_sampling_level!r}")
        if self.max_sampling_rounds < 1:
            raise AlignkitError(f"config: max_sampling_rounds: must be at least 1, got {self.max_sampling_rounds}")
        if self.entropy_coef < 0:
            raise AlignkitError(f"config: entropy_coef: must be >= 0 (a bonus), got {self.entropy_coef}")
        self.vllm.check()
        self.vllm.check_device(self.device)
        self.asynchronous.check()
        self.env.check()
        if self.env.environment and self.advantage == "reinforce_pp":
            raise AlignkitError("config: environment: per-turn credit needs advantage grpo or rloo, not reinforce_pp")
        if self.env.environment and self.vllm.use_vllm:
            raise AlignkitError("config: environment: episodes run on the torch sampler or the async generator; "
                                "drop use_vllm")
        if self.asynchronous.async_generation and self.vllm.use_vllm:
            raise AlignkitError("config: async_generation: not with use_vllm (vLLM samples in this process); "
                                "drop one of them")
        if self.asynchronous.async_generation and self.device not in ("auto", "cpu"):
            raise AlignkitError(f"config: async_generation: the generator process runs on the CPU; got device "
                                f"{self.device} (on a GPU use use_vllm)")
        self.train.check()

    def reference(self) -> str:
        if self.ref != "auto":
            return self.ref
        if self.beta == 0 and self.advantage != "reinforce_pp":
            return "none"
        return "adapter" if self.peft.use_peft and not self.ref_model_name_or_path else "copy"


class RunawayWatch:
    """Warns once when the KL to the reference or the response length runs away."""

    def __init__(self, kl_limit: float = 1.0, clipped_limit: float = 0.5, patience: int = 5):
        self.kl_limit, self.clipped_limit, self.patience = kl_limit, clipped_limit, patience
        self.long_streak, self.warned_kl, self.warned_length = 0, False, False

    def __call__(self, metrics: dict) -> None:
        kl = metrics.get("kl")
        if kl is not None and kl > self.kl_limit and not self.warned_kl:
            self.warned_kl = True
            warnings.warn(f"grpo: the per-token KL to the reference reached {kl:.2f} nats: the policy is drifting "
                          "far from it. Raise beta, lower the learning rate, or check the reward for exploits",
                          stacklevel=2)
        clipped = metrics.get("completions/clipped_ratio", 0.0)
        self.long_streak = self.long_streak + 1 if clipped >= self.clipped_limit else 0
        if self.long_streak >= self.patience and not self.warned_length:
            self.warned_length = True
            warnings.warn(f"grpo: for {self.long_streak} steps at least {self.clipped_limit:.0%} of the responses hit "
                          "max_completion_length: lengths are running away. Add missing_eos_penalty, a length "
                          "penalty, or raise max_completion_length", stacklevel=2)


def sampling_settings(config: GRPOConfig) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=config.max_completion_length, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, batch_size=64)


@dataclass
class Scored:
    """A rollout with its rewards: the total per sample and each source's part."""

    rollout: Rollout
    scores: list[float]
    parts: dict[str, list[float]]
    stats: dict[str, float] = field(default_factory=dict)

    def groups(self, keep: list[int]) -> Scored:
        g = self.rollout.group_size
        index = [k * g + j for k in keep for j in range(g)]
        return Scored(self.rollout.groups(keep), [self.scores[i] for i in index],
                      {name: [v[i] for i in index] for name, v in self.parts.items()}, self.stats)

    @staticmethod
    def join(parts: list[Scored]) -> Scored:
        return Scored(Rollout.join([p.rollout for p in parts]), [s for p in parts for s in p.scores],
                      {name: [v for p in parts for v in p.parts[name]] for name in parts[0].parts}, parts[0].stats)


class GroupPolicyStep:
    """One training step: sample, score, advantages, clipped loss. Called by the engine per micro-batch."""

    def __init__(self, config: GRPOConfig, tokenizer, rewards, reference_model=None, sampler=None, pool=None,
                 async_rollouts=None):
        self.config, self.tokenizer, self.rewards = config, tokenizer, rewards
        self.reference_model = reference_model
        self.sampler = sampler  # None: the torch sampler on the policy itself
        self.async_rollouts = async_rollouts  # rollout.async_rollout.AsyncRollouts, or None
        self.pool = pool or []  # every prompt row: where dynamic sampling draws replacement prompts
        self.calls = 0
        self.strategy = config.reference()
        self.sampling = sampling_settings(config)
        self.watch = RunawayWatch()

    def reference_logps(self, model, rollout):
        import torch

        reference = self.reference_model
        with torch.no_grad():
            if self.strategy == "adapter":
                with model.disable_adapter():
                    return self.logps(model, rollout).token_logps
            return self.logps(reference, rollout).token_logps

    def logps(self, model, rollout, entropy: bool = False):
        """Per-token log-probs of the rollout's completions, each prompt computed once (`ops.prefix`)."""
        group = rollout.group_size
        return group_logps(model, rollout.prompt_ids[::group], rollout.completion_ids, self.tokenizer.pad_token_id,
                           temperature=self.config.temperature, entropy=entropy)

    def sample(self, policy, rows: list[dict], batch: dict | None = None) -> Scored:
        """G responses to each row's prompt, scored: from the asynchronous generator when there is one (the
        engine's micro-batch when `batch` is given, else fresh), else sampled here."""
        stats, config = {}, self.config
        if self.async_rollouts is None and config.env.environment:
            stop = stop_ids(policy, self.tokenizer)
            episodes = run_episodes(model_sampler(policy, self.sampling, stop, self.tokenizer.pad_token_id),
                                    self.tokenizer, rows, config.env.environment, config.num_generations,
                                    config.max_completion_length, config.env, stop)
            rollout = episodes_rollout(episodes, config.num_generations)
        elif self.async_rollouts is None:
            rollout = sample_rollout(policy, self.tokenizer, rows, self.sampling, config.num_generations,
                                     sampler=self.sampler)
        elif batch is not None:
            rollout, stats = self.async_rollouts.rollout(rows, batch["step"], batch["micro"], batch["upcoming"])
        else:
            rollout, stats = self.async_rollouts.fresh_rollout(rows)
        return Scored(rollout, *self.score(rollout), stats)

    def score(self, rollout: Rollout) -> tuple[list[float], dict[str, list[float]]]:
        """Each sample's total reward and each source's part. Episodes: the environment's turn rewards, with
        the reward sources' score (if any) added to the last turn (rollout.extra["turn_rewards"] updated)."""
        lengths = [len(c) for c in rollout.completion_ids]
        scores, parts = [0.0] * len(rollout), {}
        if self.rewards is not None:
            scores, parts = self.rewards(rollout.prompts, rollout.completions, rollout.finish_reasons, lengths,
                                         rollout.rows)
        turns = rollout.extra.get("turn_rewards")
        if turns is None:
            return scores, parts
        turns = [list(t) for t in turns]
        for t, extra in zip(turns, scores):
            t[-1] += extra
        rollout.extra["turn_rewards"] = turns
        parts["environment"] = [sum(t) - extra for t, extra in zip(turns, scores)]
        return [sum(t) for t in turns], parts

    def sample_with_spread(self, policy, rows: list[dict], batch: dict) -> tuple[Scored, dict, bool]:
        """DAPO's dynamic sampling: keep the groups whose rewards differ; draw replacement prompts from the pool
        (global random state, so resume is exact) until len(rows) groups are kept or max_sampling_rounds are
        used. Returns the kept groups, the sampling statistics, and whether any group was kept (if none: the
        last round's groups, to log)."""
        import torch

        group, wanted = self.config.num_generations, len(rows)
        kept: list[Scored] = []
        count, sampled, rounds, first = 0, 0, 0, None
        while count < wanted and rounds < self.config.max_sampling_rounds:
            if rounds == 0:
                scored = self.sample(policy, rows, batch)
            else:
                picks = torch.randint(len(self.pool), (wanted - count,)).tolist()
                scored = self.sample(policy, [self.pool[i] for i in picks])
            spread = rl.spread_groups(torch.tensor(scored.scores), group).tolist()
            first = scored.stats if first is None else first
            if rounds == 0:  # the engine's own prompts, before any filtering: what the policy scores now
                before = {"sampling/frac_reward_zero_std_before": 1.0 - sum(spread) / len(spread),
                          "sampling/reward_before": sum(scored.scores) / len(scored.scores)}
            keep = [k for k, ok in enumerate(spread) if ok][:wanted - count]
            if keep:
                kept.append(scored.groups(keep))
            count, sampled, rounds = count + len(keep), sampled + len(spread), rounds + 1
        stats = {"sampling/rounds": float(rounds), "sampling/groups_dropped": float(sampled - count),
                 "sampling/batch_filled": count / wanted, **before}
        if not kept:
            scored.stats = first
            return scored, stats, False
        joined = Scored.join(kept)
        joined.stats = first
        return joined, stats, True

    def __call__(self, model, batch: dict):
        import torch

        config = self.config
        policy = getattr(model, "module", model)
        rows = batch["rows"]
        new_update = self.calls % config.train.gradient_accumulation_steps == 0
        if self.async_rollouts is not None and batch.get("micro") == 0:
            self.async_rollouts.publish(policy, batch["step"])  # the weights after `step` updates
        elif self.sampler is not None and new_update:  # an external engine gets the weights of every update
            self.sampler.sync(policy)
        self.calls += 1
        nominal = len(rows) * config.num_generations  # what the engine's count_fn counts for this micro-batch
        if config.dynamic_sampling:
            scored, sampling_stats, spread = self.sample_with_spread(policy, rows, batch)
        else:
            scored, sampling_stats, spread = self.sample(policy, rows, batch if "step" in batch else None), {}, True
        if spread:
            loss, metrics = self.loss(model, policy, scored)
        else:  # no group with any reward spread: nothing to learn from. No gradient at all, so the optimizer
            # leaves every weight alone (AdamW skips parameters without a gradient); metrics as usual
            with torch.no_grad():
                _, metrics = self.loss(model, policy, scored)
            loss = torch.zeros((), device=next(policy.parameters()).device, requires_grad=True)
        batch["num_tokens"] = metrics.pop("num_tokens")
        metrics.update(sampling_stats)
        metrics.update(scored.stats)
        self.watch(metrics)
        return loss * nominal, metrics

    def loss(self, model, policy, scored: Scored):
        """The scored rollout's loss (mean over its samples, as `loss_type` aggregates) and its metrics."""
        import torch

        config, rollout = self.config, scored.rollout
        lengths = [len(c) for c in rollout.completion_ids]
        rewards = torch.tensor(scored.scores, dtype=torch.float32, device=next(policy.parameters()).device)
        logps = self.logps(model, rollout, entropy=True)
        mask = logps.mask
        old = logps.token_logps.detach()  # μ = 1: the behaviour policy is the current one
        kl = None
        if self.strategy != "none":
            kl = rl.kl_penalty(logps.token_logps, self.reference_logps(policy, rollout), config.kl_estimator)
        group = config.num_generations
        if "model_mask" in rollout.extra:  # episodes: the model's own tokens only, each turn its own credit
            mask = mask & pad(rollout.extra["model_mask"], 0, side="right").to(mask.device).bool()
            advantages = rl.turn_advantages(rollout.extra["turn_rewards"], pad(rollout.extra["token_turns"], 0,
                                            side="right").to(mask.device), group, config.advantage,
                                            config.scale_rewards)
        else:
            advantages = rl.ADVANTAGES[config.advantage](rewards, group, None if kl is None else kl.detach(), mask,
                                                         config.beta, config.scale_rewards)
        out = rl.clipped_policy_loss(logps.token_logps, old, advantages, mask, config.epsilon, config.epsilon_high,
                                     level=config.importance_sampling_level)
        if self.async_rollouts is not None:
            cap, prefix = config.asynchronous.async_importance_sampling_cap, "async"
        else:
            cap, prefix = config.vllm.vllm_importance_sampling_cap, "vllm"
        is_weights, is_stats = importance_weights(self.sampler, rollout, old, mask, cap, prefix)
        per_token = out.losses * is_weights
        if kl is not None and config.beta > 0 and config.advantage != "reinforce_pp":
            per_token = per_token + config.beta * kl * mask
        loss = rl.aggregate(per_token, mask, LOSS_TYPES[config.loss_type], config.max_completion_length)
        if config.entropy_coef:
            loss = loss + rl.entropy_bonus(logps.entropy, mask, config.entropy_coef)

        groups = rewards.view(-1, group)
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": groups.std(dim=1).mean().item(),
            "frac_reward_zero_std": 1.0 - rl.spread_groups(rewards, group).float().mean().item(),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(f == "length" for f in rollout.finish_reasons) / len(lengths),
            "clip_ratio": rl.masked_mean(out.clipped.float(), mask).item(),
            "entropy": rl.masked_mean(logps.entropy.detach(), mask).item(),
            "num_tokens": sum(map(len, rollout.prompt_ids)) + sum(lengths),
        }
        if kl is not None:
            metrics["kl"] = rl.masked_mean(kl.detach(), mask).item()
        if "finish" in rollout.extra:  # episodes: how many turns, how they ended
            finish = rollout.extra["finish"]
            metrics["episodes/turns"] = sum(map(len, rollout.extra["turn_rewards"])) / len(finish)
            metrics.update({f"episodes/{why}": finish.count(why) / len(finish) for why in sorted(set(finish))})
        for name, values in scored.parts.items():
            metrics[f"rewards/{name}/mean"] = sum(values) / len(values)
        metrics.update(is_stats)
        return loss, metrics


def train_grpo(config: GRPOConfig):
    """Train config.model_name_or_path on config.dataset_name's prompts with the configured rewards; writes
    the run directory and returns the engine's TrainResult."""
    with run_owner(config, kind="grpo", model=config.model_name_or_path) as run:
        return _train_grpo(config, run)


def _train_grpo(config: GRPOConfig, run):
    """train_grpo inside its run owner: read the prompts, start the run, load the models, train."""
    import torch

    rows = load_prompts(config)
    tokenizer = load_tokenizer(config.model_name_or_path, padding_side="left")
    rewards = None  # with an environment and no reward_funcs: the environment's rewards alone
    if config.reward_funcs is not None or not config.env.environment:
        rewards = reward_mix(config.reward_funcs or "rules", config.reward_weights, device=config.device,
                             missing_eos_penalty=config.missing_eos_penalty, max_new_tokens=config.max_completion_length)
    if config.max_prompt_length:
        rows = [cut_prompt(row, tokenizer, config.max_prompt_length) for row in rows]
    run.start()
    reference_model = None
    if config.reference() == "copy":
        reference_model = load_policy(config.ref_model_name_or_path or config.model_name_or_path,
                                      dtype=config.dtype, device=config.device).eval()
        reference_model.requires_grad_(False)
    torch.manual_seed(config.train.seed)
    model = load_policy(config.model_name_or_path, dtype=config.dtype, device=config.device,
                        lora=config.peft.lora(), gradient_checkpointing=config.gradient_checkpointing)
    sampler = config.vllm.sampler(config.model_name_or_path, config.dtype, config.train.seed)
    async_rollouts = None
    if config.asynchronous.async_generation:
        async_rollouts = start_async_rollouts(
            model, tokenizer, model_name_or_path=config.model_name_or_path, dtype=config.dtype,
            lora=config.peft.lora(), settings=sampling_settings(config), group=config.num_generations,
            seed=config.train.seed, asynchronous=config.asynchronous, env=config.env, stop=stop_ids(model, tokenizer))
    step = GroupPolicyStep(config, tokenizer, rewards, reference_model, sampler=sampler, pool=rows,
                           async_rollouts=async_rollouts)
    prompts_per_batch = config.train.per_device_train_batch_size // config.num_generations
    engine_config = replace(config, train=replace(config.train, per_device_train_batch_size=prompts_per_batch))

    def collate(items):
        return {"rows": items}

    def count(batch):
        return len(batch["rows"]) * config.num_generations

    lookahead = config.asynchronous.max_staleness if async_rollouts is not None else 0
    try:
        return run.train(model, tokenizer, rows, collate, step, count_fn=count, settings=engine_config.train,
                         lookahead=lookahead)
    finally:
        if async_rollouts is not None:
            async_rollouts.close()
